-- What the tables hold, read at set-up; columns that older Celery versions
-- did not create, added when missing, as Celery 5.7.0 does at set-up; and the
-- statements that widen columns too small for large values (quoted in the
-- warnings and errors about values that do not fit).

-- name: table_columns
-- The columns a table has now (none if it is missing), with what each holds (NULL: no limit).
-- why: VARCHAR counts characters, BLOB and TEXT bytes. LONGBLOB/LONGTEXT (4 GB)
-- why: hold more than any statement can carry (max_allowed_packet is 1 GB at
-- why: most): max_statement is their limit, so they report none. kind is what
-- why: rawbackend's models hold (rawbackend check compares it).
SELECT column_name AS name,
       CASE WHEN data_type IN ('char', 'varchar') THEN character_maximum_length END AS max_chars,
       CASE WHEN data_type IN ('binary', 'varbinary', 'tinyblob', 'blob', 'mediumblob',
                               'tinytext', 'text', 'mediumtext')
            THEN character_octet_length END AS max_bytes,
       column_type AS type,
       CASE WHEN data_type IN ('char', 'varchar', 'tinytext', 'text', 'mediumtext', 'longtext')
            THEN 'string'
            WHEN data_type IN ('binary', 'varbinary', 'tinyblob', 'blob', 'mediumblob', 'longblob')
            THEN 'bytes'
            WHEN data_type IN ('tinyint', 'smallint', 'mediumint', 'int', 'bigint') THEN 'integer'
            WHEN data_type = 'datetime' THEN 'datetime'
       END AS kind
FROM information_schema.columns
WHERE table_schema = COALESCE(%(schema)s, DATABASE()) AND table_name = %(table)s;

-- name: date_done_indexes
-- The indexes of a table whose first column is date_done, and whether each can be used.
SELECT index_name AS name, 1 AS valid
FROM information_schema.statistics
WHERE table_schema = COALESCE(%(schema)s, DATABASE()) AND table_name = %(table)s
  AND seq_in_index = 1 AND column_name = 'date_done';

-- name: widen_estimate
-- About how many rows and bytes a table holds (InnoDB's estimate), for a plan to say what a rewrite costs.
SELECT table_rows AS row_estimate, data_length + index_length AS bytes
FROM information_schema.tables
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

-- name: add_task_index
-- Add the date_done index that cleanup() uses, while workers keep writing.
-- why: INPLACE, LOCK=NONE: InnoDB builds it online, writes go on; the server
-- why: refuses the statement rather than lock the table if it cannot.
CREATE INDEX {task_index_name} ON {task_table} (date_done) ALGORITHM=INPLACE LOCK=NONE;

-- name: add_group_index
-- Add the date_done index that cleanup() uses, while workers keep writing.
CREATE INDEX {group_index_name} ON {group_table} (date_done) ALGORITHM=INPLACE LOCK=NONE;

-- name: add_chord_index
-- Add the date_done index that cleanup() uses, while workers keep writing.
CREATE INDEX {chord_index_name} ON {chord_table} (date_done) ALGORITHM=INPLACE LOCK=NONE;

-- name: widen_task_table
-- Widen every BLOB and TEXT column of the task table to LONGBLOB/LONGTEXT, in one rewrite.
-- why: a type change is ALGORITHM=COPY (MariaDB 10.11 refuses INPLACE and
-- why: INSTANT for it): the table is copied once for all its columns, reads go
-- why: on and writes wait (LOCK=SHARED) until the copy ends.
ALTER TABLE {task_table}
    MODIFY result LONGBLOB, MODIFY traceback LONGTEXT, MODIFY children LONGBLOB,
    MODIFY args LONGBLOB, MODIFY kwargs LONGBLOB, MODIFY stamps LONGBLOB,
    ALGORITHM=COPY, LOCK=SHARED;

-- name: widen_group_table
-- Widen the group table's result to LONGBLOB (a rewrite of the table).
ALTER TABLE {group_table} MODIFY result LONGBLOB, ALGORITHM=COPY, LOCK=SHARED;
