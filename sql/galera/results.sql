-- Galera: reads see every write committed on any node before them. With the
-- default wsrep_sync_wait=0 a node may answer before it has applied what
-- another node committed: a result stored through node 1 read PENDING through
-- node 2 right after. Each read asks for the causality check itself (SET
-- STATEMENT): no session state, so it holds on any connection to any node.
-- Stores are left alone (wsrep_sync_wait 1 covers reads only).

-- name: get_task_meta
-- One task's row, once this node has applied every write committed before.
SET STATEMENT wsrep_sync_wait = 1 FOR
SELECT id, task_id, status, result, date_done, traceback, children
FROM {task_table} WHERE task_id = %(task_id)s;

-- name: get_task_meta_extended
-- One task's row with the extended columns, after the causality check.
SET STATEMENT wsrep_sync_wait = 1 FOR
SELECT id, task_id, status, result, date_done, traceback, children,
       name, args, kwargs, worker, retries, queue, stamps
FROM {task_table} WHERE task_id = %(task_id)s;

-- name: get_many
-- The rows of those of %(task_ids)s that exist, after the causality check.
SET STATEMENT wsrep_sync_wait = 1 FOR
SELECT id, task_id, status, result, date_done, traceback, children
FROM {task_table} WHERE task_id IN %(task_ids)s;

-- name: get_many_extended
-- The same with the extended columns.
SET STATEMENT wsrep_sync_wait = 1 FOR
SELECT id, task_id, status, result, date_done, traceback, children,
       name, args, kwargs, worker, retries, queue, stamps
FROM {task_table} WHERE task_id IN %(task_ids)s;

-- name: task_result_exists
-- Whether a row exists for a task, after the causality check.
SET STATEMENT wsrep_sync_wait = 1 FOR
SELECT 1 FROM {task_table} WHERE task_id = %(task_id)s LIMIT 1;

-- name: restore_group
-- One group's row, after the causality check.
SET STATEMENT wsrep_sync_wait = 1 FOR
SELECT id, taskset_id, result, date_done FROM {group_table} WHERE taskset_id = %(taskset_id)s;
