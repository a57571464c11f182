-- Galera: the chord's counts after the causality check, as the reads of
-- results.sql: two parts finishing at once on two nodes must not each miss the
-- other's row, or the body would never fire.

-- name: chord_progress
-- The chord's saved header (NULL: gone), its distinct finished parts, and whether it is settled.
-- why: the last of two parts committed on two nodes waits until its node has
-- why: applied the other's row, so it counts both.
SET STATEMENT wsrep_sync_wait = 1 FOR
SELECT (SELECT result FROM {group_table} WHERE taskset_id = %(group_id)s) AS result,
       COUNT(CASE WHEN task_id <> '' THEN 1 END) AS parts,
       COUNT(CASE WHEN task_id = '' THEN 1 END) AS settled
FROM {chord_table} WHERE group_id = %(group_id)s;

-- name: chord_claimant
-- Who claimed the chord's body, after the causality check.
SET STATEMENT wsrep_sync_wait = 1 FOR
SELECT fired_by FROM {chord_table} WHERE group_id = %(group_id)s AND task_id = '';
