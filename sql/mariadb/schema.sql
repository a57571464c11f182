-- MariaDB 10.3+ (behind a mysql:// or mariadb:// URL): these statements replace
-- those of the same names in sql/mysql/. SQLAlchemy's MariaDB dialect, unlike
-- its MySQL one, gives Celery's id columns no AUTO_INCREMENT and draws them from
-- the models' sequences, as on PostgreSQL; tables made here are the same.

-- name: create_task_sequence
-- The sequence Celery's models draw task row ids from.
CREATE SEQUENCE IF NOT EXISTS {task_sequence_name};

-- name: create_task_table
-- The task results table as Celery creates it on MariaDB, with room for larger results.
-- why: Celery's BLOB and TEXT stop at 64 KB; LONGBLOB/LONGTEXT hold what Celery's
-- why: backend writes and reads just the same. No AUTO_INCREMENT: ids come from
-- why: the sequence, in Celery's INSERTs and in ours.
CREATE TABLE IF NOT EXISTS {task_table} (
    id INTEGER NOT NULL,
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

-- name: create_group_sequence
-- The sequence Celery's models draw group row ids from.
CREATE SEQUENCE IF NOT EXISTS {group_sequence_name};

-- name: create_group_table
-- The group results table as Celery creates it on MariaDB, with room for larger groups.
CREATE TABLE IF NOT EXISTS {group_table} (
    id INTEGER NOT NULL,
    taskset_id VARCHAR(155),
    result LONGBLOB,
    date_done DATETIME,
    PRIMARY KEY (id),
    UNIQUE (taskset_id),
    INDEX {group_index_name} (date_done)
);
