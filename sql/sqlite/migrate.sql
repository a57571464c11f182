-- What the tables hold, read at set-up and by rawbackend check; columns that
-- older Celery versions did not create, added when missing,
-- as Celery 5.7.0 does at set-up.

-- name: table_columns
-- The columns a table has now (none if it is missing), with what each holds (NULL: no limit).
-- why: SQLite stores a value of any length whatever the declared type says.
-- why: kind follows SQLite's own affinity rules on the declared type, which
-- why: decide what a column holds; DATETIME (text, as SQLAlchemy writes it) apart.
SELECT name, NULL AS max_chars, NULL AS max_bytes, type,
       CASE WHEN upper(type) LIKE '%INT%' THEN 'integer'
            WHEN upper(type) LIKE '%CHAR%' OR upper(type) LIKE '%CLOB%'
                 OR upper(type) LIKE '%TEXT%' THEN 'string'
            WHEN upper(type) LIKE '%BLOB%' OR type = '' THEN 'bytes'
            WHEN upper(type) = 'DATETIME' THEN 'datetime'
       END AS kind
FROM pragma_table_info(:table);

-- name: date_done_indexes
-- The indexes of a table whose first column is date_done, and whether each can be used.
SELECT l.name AS name, 1 AS valid
FROM pragma_index_list(:table) AS l, pragma_index_info(l.name) AS i
WHERE i.seqno = 0 AND i.name = 'date_done';

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

-- name: add_task_index
-- Add the date_done index that cleanup() uses.
-- why: SQLite has one writer at a time: workers' stores wait for the build
-- why: (their busy timeout, database_lock_timeout) and go on after it.
CREATE INDEX IF NOT EXISTS {task_index} ON {task_table_name} (date_done);

-- name: add_group_index
-- Add the date_done index that cleanup() uses.
CREATE INDEX IF NOT EXISTS {group_index} ON {group_table_name} (date_done);

-- name: add_chord_index
-- Add the date_done index that cleanup() uses.
CREATE INDEX IF NOT EXISTS {chord_index} ON {chord_table_name} (date_done);
