-- What the tables hold, read at set-up; columns that older Celery versions
-- did not create, added when missing, as Celery 5.7.0 does at set-up; and the
-- statements that widen columns too small for large values (quoted in the
-- warnings and errors about values that do not fit).

-- name: table_columns
-- The columns a table has now (none if it is missing), with what each holds (NULL: no limit).
-- why: VARCHAR counts characters, BLOB and TEXT bytes. LONGBLOB/LONGTEXT (4 GB)
-- why: hold more than any statement can carry (max_allowed_packet is 1 GB at
-- why: most): max_statement is their limit, so they report none.
SELECT column_name AS name,
       CASE WHEN data_type IN ('char', 'varchar') THEN character_maximum_length END AS max_chars,
       CASE WHEN data_type IN ('binary', 'varbinary', 'tinyblob', 'blob', 'mediumblob',
                               'tinytext', 'text', 'mediumtext')
            THEN character_octet_length END AS max_bytes
FROM information_schema.columns
WHERE table_schema = COALESCE(%(schema)s, DATABASE()) AND table_name = %(table)s;

-- name: max_statement
-- The largest statement the server takes, in bytes, and the setting that says so.
-- why: a larger one makes the server drop the connection, which looks like a
-- why: disconnect and would be retried; the backend refuses it before sending.
SELECT @@max_allowed_packet AS max_bytes, 'max_allowed_packet' AS setting;

-- name: add_task_column_children
-- Add the children column.
ALTER TABLE {task_table} ADD COLUMN children LONGBLOB;

-- name: add_task_column_name
-- Add the extended name column.
ALTER TABLE {task_table} ADD COLUMN name VARCHAR(155);

-- name: add_task_column_args
-- Add the extended args column.
ALTER TABLE {task_table} ADD COLUMN args LONGBLOB;

-- name: add_task_column_kwargs
-- Add the extended kwargs column.
ALTER TABLE {task_table} ADD COLUMN kwargs LONGBLOB;

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
ALTER TABLE {task_table} ADD COLUMN stamps LONGBLOB;

-- name: widen_task_column_result
-- Widen task column result (Celery makes it BLOB).
ALTER TABLE {task_table} MODIFY result LONGBLOB;

-- name: widen_task_column_traceback
-- Widen task column traceback (Celery makes it TEXT).
ALTER TABLE {task_table} MODIFY traceback LONGTEXT;

-- name: widen_task_column_children
-- Widen task column children (Celery makes it BLOB).
ALTER TABLE {task_table} MODIFY children LONGBLOB;

-- name: widen_task_column_name
-- Widen task column name (Celery makes it VARCHAR(155)).
ALTER TABLE {task_table} MODIFY name VARCHAR(1024);

-- name: widen_task_column_args
-- Widen task column args (Celery makes it BLOB).
ALTER TABLE {task_table} MODIFY args LONGBLOB;

-- name: widen_task_column_kwargs
-- Widen task column kwargs (Celery makes it BLOB).
ALTER TABLE {task_table} MODIFY kwargs LONGBLOB;

-- name: widen_task_column_worker
-- Widen task column worker (Celery makes it VARCHAR(155)).
ALTER TABLE {task_table} MODIFY worker VARCHAR(1024);

-- name: widen_task_column_queue
-- Widen task column queue (Celery makes it VARCHAR(155)).
ALTER TABLE {task_table} MODIFY queue VARCHAR(1024);

-- name: widen_task_column_stamps
-- Widen task column stamps (Celery makes it BLOB).
ALTER TABLE {task_table} MODIFY stamps LONGBLOB;

-- name: widen_group_column_result
-- Widen group column result (Celery makes it BLOB).
ALTER TABLE {group_table} MODIFY result LONGBLOB;
