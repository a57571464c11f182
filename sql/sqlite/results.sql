-- name: store_result
-- Insert a task's state, or update it unless a SUCCESS is stored already.
INSERT INTO {task_table} (task_id, status, result, date_done, traceback, children)
VALUES (:task_id, :status, :result, :date_done, :traceback, :children)
ON CONFLICT (task_id) DO UPDATE SET
    status = excluded.status,
    result = excluded.result,
    date_done = excluded.date_done,
    traceback = excluded.traceback,
    children = excluded.children
WHERE status <> 'SUCCESS';

-- name: store_result_extended
-- The same with the extended columns; stamps already stored are kept when none come.
INSERT INTO {task_table} (task_id, status, result, date_done, traceback, children,
                          name, args, kwargs, worker, retries, queue, stamps)
VALUES (:task_id, :status, :result, :date_done, :traceback, :children,
        :name, :args, :kwargs, :worker, :retries, :queue, :stamps)
ON CONFLICT (task_id) DO UPDATE SET
    status = excluded.status,
    result = excluded.result,
    date_done = excluded.date_done,
    traceback = excluded.traceback,
    children = excluded.children,
    name = excluded.name,
    args = excluded.args,
    kwargs = excluded.kwargs,
    worker = excluded.worker,
    retries = excluded.retries,
    queue = excluded.queue,
    stamps = COALESCE(excluded.stamps, stamps)
WHERE status <> 'SUCCESS';

-- name: get_task_meta
-- One task's row.
SELECT id, task_id, status, result, date_done, traceback, children
FROM {task_table} WHERE task_id = :task_id;

-- name: get_task_meta_extended
-- One task's row with the extended columns.
SELECT id, task_id, status, result, date_done, traceback, children,
       name, args, kwargs, worker, retries, queue, stamps
FROM {task_table} WHERE task_id = :task_id;

-- name: get_many
-- The rows of those of :task_ids that exist (a native join's poll).
-- why: sqlite3 binds no lists: the ids go as one JSON array, unpacked by
-- why: json_each (built in since SQLite 3.38, and in Python's builds long
-- why: before): one parameter whatever their number, far from
-- why: SQLITE_MAX_VARIABLE_NUMBER (999 on old builds), one cached statement.
SELECT id, task_id, status, result, date_done, traceback, children
FROM {task_table} WHERE task_id IN (SELECT value FROM json_each(:task_ids));

-- name: get_many_extended
-- The same with the extended columns.
SELECT id, task_id, status, result, date_done, traceback, children,
       name, args, kwargs, worker, retries, queue, stamps
FROM {task_table} WHERE task_id IN (SELECT value FROM json_each(:task_ids));

-- name: task_result_exists
-- Whether a row exists for a task.
SELECT 1 FROM {task_table} WHERE task_id = :task_id LIMIT 1;

-- name: forget
-- Delete one task's row.
DELETE FROM {task_table} WHERE task_id = :task_id;

-- name: delete_expired_tasks
-- Delete up to :batch task rows done before :cutoff (cleanup runs it until none are left).
DELETE FROM {task_table} WHERE id IN (
    SELECT id FROM {task_table} WHERE date_done < :cutoff LIMIT :batch
);

-- name: save_group
-- Insert or replace a group's result.
INSERT INTO {group_table} (taskset_id, result, date_done)
VALUES (:taskset_id, :result, :date_done)
ON CONFLICT (taskset_id) DO UPDATE SET
    result = excluded.result,
    date_done = excluded.date_done;

-- name: restore_group
-- One group's row.
SELECT id, taskset_id, result, date_done FROM {group_table} WHERE taskset_id = :taskset_id;

-- name: delete_group
-- Delete one group's row.
DELETE FROM {group_table} WHERE taskset_id = :taskset_id;

-- name: delete_expired_groups
-- Delete up to :batch group rows done before :cutoff.
DELETE FROM {group_table} WHERE id IN (
    SELECT id FROM {group_table} WHERE date_done < :cutoff LIMIT :batch
);
