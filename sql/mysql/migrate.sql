-- Columns that older Celery versions did not create; added when missing,
-- as Celery 5.7.0 does at set-up.

-- name: table_columns
-- The names of the columns a table has now (none if it is missing).
SELECT column_name AS name FROM information_schema.columns
WHERE table_schema = COALESCE(%(schema)s, DATABASE()) AND table_name = %(table)s;

-- name: add_task_column_children
-- Add the children column.
ALTER TABLE {task_table} ADD COLUMN children BLOB;

-- name: add_task_column_name
-- Add the extended name column.
ALTER TABLE {task_table} ADD COLUMN name VARCHAR(155);

-- name: add_task_column_args
-- Add the extended args column.
ALTER TABLE {task_table} ADD COLUMN args BLOB;

-- name: add_task_column_kwargs
-- Add the extended kwargs column.
ALTER TABLE {task_table} ADD COLUMN kwargs BLOB;

-- name: add_task_column_worker
-- Add the extended worker column.
ALTER TABLE {task_table} ADD COLUMN worker VARCHAR(155);

-- name: add_task_column_retries
-- Add the extended retries column.
ALTER TABLE {task_table} ADD COLUMN retries INTEGER;

-- name: add_task_column_queue
-- Add the extended queue column.
ALTER TABLE {task_table} ADD COLUMN queue VARCHAR(155);

-- name: add_task_column_stamps
-- Add the extended stamps column.
ALTER TABLE {task_table} ADD COLUMN stamps BLOB;
