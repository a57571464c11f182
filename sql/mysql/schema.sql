-- Tables as Celery 5.7.0's SQLAlchemy models create them on MySQL/MariaDB,
-- run in file order at set-up; every statement is safe to run again.

-- name: create_task_table
-- The task results table as Celery creates it, with room for larger results.
-- why: Celery's BLOB and TEXT stop at 64 KB; LONGBLOB/LONGTEXT hold what Celery's
-- why: backend writes and reads just the same. The index is inline because
-- why: MySQL 8 has no CREATE INDEX IF NOT EXISTS.
CREATE TABLE IF NOT EXISTS {task_table} (
    id INTEGER NOT NULL AUTO_INCREMENT,
    task_id VARCHAR(155),
    status VARCHAR(50),
    result LONGBLOB,
    date_done DATETIME,
    traceback LONGTEXT,
    children LONGBLOB,
    name VARCHAR(155),
    args LONGBLOB,
    kwargs LONGBLOB,
    worker VARCHAR(155),
    retries INTEGER,
    queue VARCHAR(155),
    stamps LONGBLOB,
    PRIMARY KEY (id),
    UNIQUE (task_id),
    INDEX {task_index_name} (date_done)
);

-- name: create_group_table
-- The group results table as Celery creates it, with room for larger groups.
CREATE TABLE IF NOT EXISTS {group_table} (
    id INTEGER NOT NULL AUTO_INCREMENT,
    taskset_id VARCHAR(155),
    result LONGBLOB,
    date_done DATETIME,
    PRIMARY KEY (id),
    UNIQUE (taskset_id),
    INDEX {group_index_name} (date_done)
);

-- name: create_chord_table
-- rawbackend's own: one row per finished part of a chord, and one ('') that claims its body.
-- why: the key makes a part reported twice one row; Celery's backend never reads the
-- why: table. No id column, so MariaDB needs no sequence and no variant of it.
CREATE TABLE IF NOT EXISTS {chord_table} (
    group_id VARCHAR(155) NOT NULL,
    task_id VARCHAR(155) NOT NULL,
    date_done DATETIME,
    fired_by VARCHAR(36),
    PRIMARY KEY (group_id, task_id),
    INDEX {chord_index_name} (date_done)
);

-- name: create_watermark_table
-- rawbackend's own: the task table's largest id at moments, to tell how old an unfinished row is.
-- why: unfinished rows have no date_done; a row whose id is at most max_id was
-- why: first written before recorded_at. Celery's backend never reads the table.
-- why: No id column, so MariaDB needs no sequence and no variant of it.
CREATE TABLE IF NOT EXISTS {watermark_table} (
    task_table VARCHAR(255) NOT NULL,
    recorded_at DATETIME NOT NULL,
    max_id BIGINT NOT NULL,
    PRIMARY KEY (task_table, recorded_at)
);
