-- Tables as Celery 5.7.0's SQLAlchemy models create them on SQLite, run in
-- file order at set-up; every statement is safe to run again.

-- name: create_task_table
-- The task results table, column for column as Celery creates it.
CREATE TABLE IF NOT EXISTS {task_table} (
    id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    task_id VARCHAR(155),
    status VARCHAR(50),
    result BLOB,
    date_done DATETIME,
    traceback TEXT,
    children BLOB,
    name VARCHAR(155),
    args BLOB,
    kwargs BLOB,
    worker VARCHAR(155),
    retries INTEGER,
    queue VARCHAR(155),
    stamps BLOB,
    UNIQUE (task_id)
);

-- name: create_task_index
-- The date_done index that cleanup() uses.
-- why: SQLite names the index, not the table, with its schema.
CREATE INDEX IF NOT EXISTS {task_index} ON {task_table_name} (date_done);

-- name: create_group_table
-- The group results table, as Celery creates it.
CREATE TABLE IF NOT EXISTS {group_table} (
    id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    taskset_id VARCHAR(155),
    result BLOB,
    date_done DATETIME,
    UNIQUE (taskset_id)
);

-- name: create_group_index
-- The date_done index that cleanup() uses.
-- why: SQLite names the index, not the table, with its schema.
CREATE INDEX IF NOT EXISTS {group_index} ON {group_table_name} (date_done);

-- name: create_chord_table
-- rawbackend's own: one row per finished part of a chord, and one ('') that claims its body.
-- why: the key makes a part reported twice one row; Celery's backend never reads the table.
CREATE TABLE IF NOT EXISTS {chord_table} (
    group_id VARCHAR(155) NOT NULL,
    task_id VARCHAR(155) NOT NULL,
    date_done DATETIME,
    fired_by VARCHAR(36),
    PRIMARY KEY (group_id, task_id)
);

-- name: create_chord_index
-- The date_done index that cleanup() uses.
-- why: SQLite names the index, not the table, with its schema.
CREATE INDEX IF NOT EXISTS {chord_index} ON {chord_table_name} (date_done);

-- name: create_watermark_table
-- rawbackend's own: the task table's largest id at moments, to tell how old an unfinished row is.
-- why: unfinished rows have no date_done; a row whose id is at most max_id was
-- why: first written before recorded_at. Celery's backend never reads the table.
CREATE TABLE IF NOT EXISTS {watermark_table} (
    task_table VARCHAR(255) NOT NULL,
    recorded_at DATETIME NOT NULL,
    max_id BIGINT NOT NULL,
    PRIMARY KEY (task_table, recorded_at)
);
