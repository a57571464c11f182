-- What the tables hold, read at set-up; columns that older Celery versions
-- did not create, added when missing, as Celery 5.7.0 does at set-up; and the
-- statements that widen columns too small for large values.

-- name: table_columns
-- The columns a table has now (none if it is missing), with what each holds (NULL: no limit).
-- why: pg_catalog, not information_schema: the latter's view costs ~7 ms on
-- why: a cold connection, paid by every worker at start. VARCHAR(n) counts
-- why: characters (atttypmod is n + 4); BYTEA and TEXT hold 1 GB: no limit.
SELECT attname AS name,
       CASE WHEN atttypid IN ('varchar'::regtype, 'bpchar'::regtype) AND atttypmod > 4
            THEN atttypmod - 4 END AS max_chars,
       NULL::integer AS max_bytes
FROM pg_attribute
WHERE attrelid = to_regclass(
        quote_ident(COALESCE(%(schema)s, current_schema())) || '.' || quote_ident(%(table)s))
  AND attnum > 0 AND NOT attisdropped;

-- name: max_statement
-- The largest statement the server takes, in bytes (NULL: no limit).
-- why: parameters travel apart from the statement; none of them can be over 1 GB.
SELECT NULL::integer AS max_bytes, NULL::text AS setting;

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

-- name: widen_task_column_name
-- Widen task column name (Celery makes it VARCHAR(155)).
ALTER TABLE {task_table} ALTER COLUMN name TYPE VARCHAR(1024);

-- name: widen_task_column_worker
-- Widen task column worker (Celery makes it VARCHAR(155)).
ALTER TABLE {task_table} ALTER COLUMN worker TYPE VARCHAR(1024);

-- name: widen_task_column_queue
-- Widen task column queue (Celery makes it VARCHAR(155)).
ALTER TABLE {task_table} ALTER COLUMN queue TYPE VARCHAR(1024);
