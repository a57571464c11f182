-- Columns that older Celery versions did not create; added when missing,
-- as Celery 5.7.0 does at set-up.

-- name: table_columns
-- The columns a table has now (none if it is missing), with what each holds (NULL: no limit).
-- why: SQLite stores a value of any length whatever the declared type says.
SELECT name, NULL AS max_chars, NULL AS max_bytes FROM pragma_table_info(:table);

-- name: max_statement
-- The largest statement SQLite takes, in bytes (NULL: no limit).
-- why: parameters are bound apart from the statement (SQLITE_MAX_LENGTH, 1 GB, each).
SELECT NULL AS max_bytes, NULL AS setting;

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
