-- What the tables hold, read at set-up; columns that older Celery versions
-- did not create, added when missing, as Celery 5.7.0 does at set-up; and the
-- statements that widen columns too small for large values.

-- name: table_columns
-- The columns a table has now (none if it is missing), with what each holds (NULL: no limit).
-- why: pg_catalog, not information_schema: the latter's view costs ~7 ms on
-- why: a cold connection, paid by every worker at start. VARCHAR(n) counts
-- why: characters (atttypmod is n + 4); BYTEA and TEXT hold 1 GB: no limit.
-- why: kind is what rawbackend's models hold (rawbackend check compares it);
-- why: a timestamp with time zone is not the naive UTC datetime Celery writes.
SELECT attname AS name,
       CASE WHEN atttypid IN ('varchar'::regtype, 'bpchar'::regtype) AND atttypmod > 4
            THEN atttypmod - 4 END AS max_chars,
       NULL::integer AS max_bytes,
       format_type(atttypid, atttypmod) AS type,
       CASE WHEN atttypid IN ('varchar'::regtype, 'bpchar'::regtype, 'text'::regtype) THEN 'string'
            WHEN atttypid = 'bytea'::regtype THEN 'bytes'
            WHEN atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype) THEN 'integer'
            WHEN atttypid = 'timestamp'::regtype THEN 'datetime'
       END AS kind
FROM pg_attribute
WHERE attrelid = to_regclass(
        quote_ident(COALESCE(%(schema)s, current_schema())) || '.' || quote_ident(%(table)s))
  AND attnum > 0 AND NOT attisdropped;

-- name: date_done_indexes
-- The indexes of a table whose first column is date_done, and whether each can be used.
-- why: a CREATE INDEX CONCURRENTLY that failed leaves an index marked invalid:
-- why: it is kept up to date on every write and never used by a query.
SELECT i.relname AS name, x.indisvalid AS valid
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = x.indkey[0]
WHERE x.indrelid = to_regclass(
        quote_ident(COALESCE(%(schema)s, current_schema())) || '.' || quote_ident(%(table)s))
  AND a.attname = 'date_done';

-- name: sequence_exists
-- One row if the sequence exists, none if it does not.
SELECT 1 AS present FROM pg_class
WHERE oid = to_regclass(
        quote_ident(COALESCE(%(schema)s, current_schema())) || '.' || quote_ident(%(sequence)s))
  AND relkind = 'S';

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

-- name: add_task_index
-- Add the date_done index that cleanup() uses, while workers keep writing.
-- why: CONCURRENTLY takes no lock that blocks writes (it cannot run inside a
-- why: transaction: the connection is in autocommit); a plain CREATE INDEX would.
CREATE INDEX CONCURRENTLY IF NOT EXISTS {task_index_name} ON {task_table} (date_done);

-- name: add_group_index
-- Add the date_done index that cleanup() uses, while workers keep writing.
CREATE INDEX CONCURRENTLY IF NOT EXISTS {group_index_name} ON {group_table} (date_done);

-- name: add_chord_index
-- Add the date_done index that cleanup() uses, while workers keep writing.
CREATE INDEX CONCURRENTLY IF NOT EXISTS {chord_index_name} ON {chord_table} (date_done);

-- name: drop_task_index
-- Drop the date_done index left invalid by a failed concurrent build, before building it again.
DROP INDEX CONCURRENTLY IF EXISTS {task_index};

-- name: drop_group_index
-- Drop the date_done index left invalid by a failed concurrent build, before building it again.
DROP INDEX CONCURRENTLY IF EXISTS {group_index};

-- name: drop_chord_index
-- Drop the date_done index left invalid by a failed concurrent build, before building it again.
DROP INDEX CONCURRENTLY IF EXISTS {chord_index};

-- name: restart_task_sequence_at
-- Where the task table's sequence must restart: after its largest row id.
SELECT COALESCE(MAX(id), 0) + 1 AS start FROM {task_table};

-- name: restart_group_sequence_at
-- Where the group table's sequence must restart: after its largest row id.
SELECT COALESCE(MAX(id), 0) + 1 AS start FROM {group_table};

-- name: restart_task_sequence
-- Make a sequence created next to a table with rows start after its largest id.
-- why: a new sequence starts at 1: the ids it gives would collide with the rows'.
SELECT setval({task_sequence}, %(start)s, false);

-- name: restart_group_sequence
-- Make a sequence created next to a table with rows start after its largest id.
SELECT setval({group_sequence}, %(start)s, false);
