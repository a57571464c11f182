-- Columns that older Celery versions did not create; added when missing,
-- as Celery 5.7.0 does at set-up.

-- name: table_columns
-- The names of the columns a table has now (none if it is missing).
-- why: pg_catalog, not information_schema: the latter's view costs ~7 ms on
-- why: a cold connection, paid by every worker at start.
SELECT attname AS name FROM pg_attribute
WHERE attrelid = to_regclass(
        quote_ident(COALESCE(%(schema)s, current_schema())) || '.' || quote_ident(%(table)s))
  AND attnum > 0 AND NOT attisdropped;

-- name: add_task_column_children
-- Add the children column.
ALTER TABLE {task_table} ADD COLUMN IF NOT EXISTS children BYTEA;

-- name: add_task_column_name
-- Add the extended name column.
ALTER TABLE {task_table} ADD COLUMN IF NOT EXISTS name VARCHAR(155);

-- name: add_task_column_args
-- Add the extended args column.
ALTER TABLE {task_table} ADD COLUMN IF NOT EXISTS args BYTEA;

-- name: add_task_column_kwargs
-- Add the extended kwargs column.
ALTER TABLE {task_table} ADD COLUMN IF NOT EXISTS kwargs BYTEA;

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
ALTER TABLE {task_table} ADD COLUMN IF NOT EXISTS stamps BYTEA;
