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
-- A table's size in bytes: its rows (with TOAST), its indexes, and both.
-- why: %(qualified)s is the table's quoted, schema-qualified name, as in the statements.
SELECT pg_table_size(to_regclass(%(qualified)s)) AS table_bytes,
       pg_indexes_size(to_regclass(%(qualified)s)) AS index_bytes,
       pg_total_relation_size(to_regclass(%(qualified)s)) AS total_bytes,
       'pg_total_relation_size' AS measured_by;

-- name: database_size
-- The whole database's size in bytes.
SELECT NULL::bigint AS table_bytes, NULL::bigint AS index_bytes,
       pg_database_size(current_database()) AS total_bytes,
       'pg_database_size' AS measured_by;
