-- MariaDB 10.3+: these replace sql/mysql/migrate.sql's statements of the same
-- names. MariaDB has IF NOT EXISTS where MySQL 8 has none: a column or index
-- that another process (a worker at set-up, Celery's backend, a second
-- migrate) adds meanwhile is no error.

-- name: add_task_column_children
-- Add the children column.
ALTER TABLE {task_table} ADD COLUMN IF NOT EXISTS children LONGBLOB;

-- name: add_task_column_name
-- Add the extended name column.
ALTER TABLE {task_table} ADD COLUMN IF NOT EXISTS name VARCHAR(155);

-- name: add_task_column_args
-- Add the extended args column.
ALTER TABLE {task_table} ADD COLUMN IF NOT EXISTS args LONGBLOB;

-- name: add_task_column_kwargs
-- Add the extended kwargs column.
ALTER TABLE {task_table} ADD COLUMN IF NOT EXISTS kwargs LONGBLOB;

-- name: add_task_column_worker
-- Add the extended worker column.
ALTER TABLE {task_table} ADD COLUMN IF NOT EXISTS worker VARCHAR(155);

-- name: add_task_column_retries
-- Add the extended retries column.
ALTER TABLE {task_table} ADD COLUMN IF NOT EXISTS retries INTEGER;

-- name: add_task_column_queue
-- Add the extended queue column.
ALTER TABLE {task_table} ADD COLUMN IF NOT EXISTS queue VARCHAR(155);

-- name: add_task_column_stamps
-- Add the extended stamps column.
ALTER TABLE {task_table} ADD COLUMN IF NOT EXISTS stamps LONGBLOB;

-- name: add_task_index
-- Add the date_done index that cleanup() uses, while workers keep writing.
-- why: INPLACE, LOCK=NONE: InnoDB builds it online, writes go on.
CREATE INDEX IF NOT EXISTS {task_index_name} ON {task_table} (date_done)
    ALGORITHM=INPLACE LOCK=NONE;

-- name: add_group_index
-- Add the date_done index that cleanup() uses, while workers keep writing.
CREATE INDEX IF NOT EXISTS {group_index_name} ON {group_table} (date_done)
    ALGORITHM=INPLACE LOCK=NONE;

-- name: add_chord_index
-- Add the date_done index that cleanup() uses, while workers keep writing.
CREATE INDEX IF NOT EXISTS {chord_index_name} ON {chord_table} (date_done)
    ALGORITHM=INPLACE LOCK=NONE;

-- name: sequence_exists
-- One row if the sequence exists, none if it does not.
SELECT 1 AS present FROM information_schema.tables
WHERE table_schema = COALESCE(%(schema)s, DATABASE()) AND table_name = %(sequence)s
  AND table_type = 'SEQUENCE';

-- name: restart_task_sequence_at
-- Where the task table's sequence must restart: after its largest row id.
SELECT COALESCE(MAX(id), 0) + 1 AS start FROM {task_table};

-- name: restart_group_sequence_at
-- Where the group table's sequence must restart: after its largest row id.
SELECT COALESCE(MAX(id), 0) + 1 AS start FROM {group_table};

-- name: restart_task_sequence
-- Make a sequence created next to a table with rows start after its largest id.
-- why: a new sequence starts at 1: the ids it gives would collide with the rows'.
-- why: SETVAL, not ALTER SEQUENCE ... RESTART: on Galera (INCREMENT BY 0, ids
-- why: from auto_increment_offset) RESTART gave 2 after ids up to 13. It takes
-- why: constants only; PyMySQL writes the parameter in. 0: the next id is start.
SELECT SETVAL({task_sequence_name}, %(start)s, 0);

-- name: restart_group_sequence
-- Make a sequence created next to a table with rows start after its largest id.
SELECT SETVAL({group_sequence_name}, %(start)s, 0);
