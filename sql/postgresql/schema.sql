-- Tables as Celery 5.7.0's SQLAlchemy models create them on PostgreSQL, run
-- in file order at set-up; every statement is safe to run again.

-- name: create_task_sequence
-- The sequence Celery's models draw task row ids from.
-- why: Celery's id column has no server default; the INSERT calls nextval itself.
CREATE SEQUENCE IF NOT EXISTS {task_sequence_name};

-- name: create_task_table
-- The task results table, column for column as Celery creates it.
CREATE TABLE IF NOT EXISTS {task_table} (
    id INTEGER NOT NULL,
    task_id VARCHAR(155),
    status VARCHAR(50),
    result BYTEA,
    date_done TIMESTAMP WITHOUT TIME ZONE,
    traceback TEXT,
    children BYTEA,
    name VARCHAR(155),
    args BYTEA,
    kwargs BYTEA,
    worker VARCHAR(155),
    retries INTEGER,
    queue VARCHAR(155),
    stamps BYTEA,
    PRIMARY KEY (id),
    UNIQUE (task_id)
);

-- name: create_task_index
-- The date_done index that cleanup() uses.
-- why: PostgreSQL puts an index in its table's schema; its name is never qualified.
CREATE INDEX IF NOT EXISTS {task_index_name} ON {task_table} (date_done);

-- name: create_group_sequence
-- The sequence Celery's models draw group row ids from.
CREATE SEQUENCE IF NOT EXISTS {group_sequence_name};

-- name: create_group_table
-- The group results table, as Celery creates it.
CREATE TABLE IF NOT EXISTS {group_table} (
    id INTEGER NOT NULL,
    taskset_id VARCHAR(155),
    result BYTEA,
    date_done TIMESTAMP WITHOUT TIME ZONE,
    PRIMARY KEY (id),
    UNIQUE (taskset_id)
);

-- name: create_group_index
-- The date_done index that cleanup() uses.
CREATE INDEX IF NOT EXISTS {group_index_name} ON {group_table} (date_done);

-- name: create_chord_table
-- rawbackend's own: one row per finished part of a chord, and one ('') that claims its body.
-- why: the key makes a part reported twice one row; Celery's backend never reads the table.
CREATE TABLE IF NOT EXISTS {chord_table} (
    group_id VARCHAR(155) NOT NULL,
    task_id VARCHAR(155) NOT NULL,
    date_done TIMESTAMP WITHOUT TIME ZONE,
    fired_by VARCHAR(36),
    PRIMARY KEY (group_id, task_id)
);

-- name: create_chord_index
-- The date_done index that cleanup() uses.
CREATE INDEX IF NOT EXISTS {chord_index_name} ON {chord_table} (date_done);

-- name: create_watermark_table
-- rawbackend's own: the task table's largest id at moments, to tell how old an unfinished row is.
-- why: unfinished rows have no date_done; a row whose id is at most max_id was
-- why: first written before recorded_at. Celery's backend never reads the table.
CREATE TABLE IF NOT EXISTS {watermark_table} (
    task_table VARCHAR(255) NOT NULL,
    recorded_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
    max_id BIGINT NOT NULL,
    PRIMARY KEY (task_table, recorded_at)
);
