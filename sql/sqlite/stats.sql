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
-- A table's size in bytes: its rows, its indexes, and both, from the dbstat table.
-- why: dbstat is compiled into most SQLite builds, not all: without it the
-- why: backend reads database_size instead. :table is the bare name.
SELECT SUM(CASE WHEN name = :table THEN pgsize ELSE 0 END) AS table_bytes,
       SUM(CASE WHEN name <> :table THEN pgsize ELSE 0 END) AS index_bytes,
       SUM(pgsize) AS total_bytes,
       'dbstat' AS measured_by
FROM dbstat(COALESCE(:schema, 'main'))
WHERE name = :table
   OR name IN (SELECT name FROM pragma_index_list(:table, COALESCE(:schema, 'main')));

-- name: database_size
-- The whole database file's size in bytes (also where dbstat is missing).
SELECT NULL AS table_bytes, NULL AS index_bytes, page_count * page_size AS total_bytes,
       'page_count * page_size' AS measured_by
FROM pragma_page_count(), pragma_page_size();
