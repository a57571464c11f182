-- What `rawbackend stats` reports: rows by state, the dates they span, rows
-- that never finished, and what the tables take on disk.

-- name: stats_task_states
-- Task rows by state.
SELECT status, COUNT(*) AS n FROM {task_table} GROUP BY status ORDER BY status;

-- name: stats_task_dates
-- The oldest and newest date_done of the task rows.
SELECT MIN(date_done) AS oldest, MAX(date_done) AS newest FROM {task_table};

-- name: stats_unfinished_tasks
-- How many task rows never finished (no date_done, a state not ready), and the smallest id among them.
SELECT COUNT(*) AS n, MIN(id) AS oldest_id FROM {task_table}
WHERE date_done IS NULL AND status NOT IN ('SUCCESS', 'FAILURE', 'REVOKED');

-- name: stats_groups
-- Group rows, and the oldest and newest date_done among them.
SELECT COUNT(*) AS n, MIN(date_done) AS oldest, MAX(date_done) AS newest FROM {group_table};

-- name: stats_chords
-- Chord rows: finished parts, and claim rows (one per chord settled or firing).
SELECT COUNT(CASE WHEN task_id <> '' THEN 1 END) AS parts,
       COUNT(CASE WHEN task_id = '' THEN 1 END) AS claims
FROM {chord_table};

-- name: stats_table_size
-- A table's size in bytes: its rows, its indexes, and both, as InnoDB estimates them.
-- why: information_schema's figures come from the table's statistics, refreshed
-- why: by ANALYZE TABLE and now and then by InnoDB itself: close, not exact.
SELECT data_length AS table_bytes, index_length AS index_bytes,
       data_length + index_length AS total_bytes,
       'information_schema.TABLES' AS measured_by
FROM information_schema.TABLES
WHERE table_schema = COALESCE(%(schema)s, DATABASE()) AND table_name = %(table)s;

-- name: database_size
-- The whole database's size in bytes (every table of the schema), as InnoDB estimates it.
SELECT NULL AS table_bytes, NULL AS index_bytes,
       SUM(data_length + index_length) AS total_bytes,
       'information_schema.TABLES, every table of the database' AS measured_by
FROM information_schema.TABLES WHERE table_schema = COALESCE(%(schema)s, DATABASE());
