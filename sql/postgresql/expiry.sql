-- Expiry beyond result_expires: rows left unfinished (STARTED, RETRY, RECEIVED,
-- PENDING; date_done NULL, as Celery writes them) are aged by watermarks, the
-- task table's largest id recorded with the time at each cleanup; and the
-- counts of what a cleanup would delete.

-- name: task_max_id
-- The task table's largest row id now (NULL: no rows).
SELECT MAX(id) AS max_id FROM {task_table};

-- name: record_watermark
-- Record that every task row with an id up to %(max_id)s was written by %(recorded_at)s.
INSERT INTO {watermark_table} (task_table, recorded_at, max_id)
VALUES (%(task_table)s, %(recorded_at)s, %(max_id)s)
ON CONFLICT (task_table, recorded_at) DO NOTHING;

-- name: watermark_before
-- The newest watermark recorded at or before %(cutoff)s.
SELECT recorded_at, max_id FROM {watermark_table}
WHERE task_table = %(task_table)s AND recorded_at <= %(cutoff)s
ORDER BY recorded_at DESC LIMIT 1;

-- name: watermarks
-- Every watermark of the task table, oldest first.
SELECT recorded_at, max_id FROM {watermark_table}
WHERE task_table = %(task_table)s ORDER BY recorded_at;

-- name: prune_watermarks
-- Delete watermarks no longer needed (before %(before)s), and those above the largest id (ids went back).
-- why: a table emptied and made again restarts its ids: such a watermark would
-- why: make fresh rows look old; without it they only expire later.
DELETE FROM {watermark_table}
WHERE task_table = %(task_table)s AND (recorded_at < %(before)s OR max_id > %(max_id)s);

-- name: delete_unfinished_tasks
-- Delete up to %(batch)s unfinished task rows with ids up to %(max_id)s (first written before its watermark).
-- why: date_done IS NULL is a range of the date_done index: only the
-- why: unfinished rows are read, however many finished ones the table holds.
DELETE FROM {task_table} WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM {task_table}
    WHERE date_done IS NULL AND id <= %(max_id)s
      AND status NOT IN ('SUCCESS', 'FAILURE', 'REVOKED')
    LIMIT %(batch)s
));

-- name: count_expired_tasks
-- How many task rows were done before %(cutoff)s.
SELECT COUNT(*) AS n FROM {task_table} WHERE date_done < %(cutoff)s;

-- name: count_expired_groups
-- How many group rows were done before %(cutoff)s.
SELECT COUNT(*) AS n FROM {group_table} WHERE date_done < %(cutoff)s;

-- name: count_expired_chords
-- How many chord rows were written before %(cutoff)s.
SELECT COUNT(*) AS n FROM {chord_table} WHERE date_done < %(cutoff)s;

-- name: count_unfinished_tasks
-- How many unfinished task rows have ids up to %(max_id)s.
SELECT COUNT(*) AS n FROM {task_table}
WHERE date_done IS NULL AND id <= %(max_id)s AND status NOT IN ('SUCCESS', 'FAILURE', 'REVOKED');
