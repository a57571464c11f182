-- name: store_result
-- Insert a task's state, or update it unless a SUCCESS is stored already.
-- why: ON DUPLICATE KEY UPDATE has no WHERE, and its assignments run left to
-- why: right, each seeing the ones before: every column keeps its value while
-- why: the stored status is SUCCESS, and status itself is assigned last.
INSERT INTO {task_table} (task_id, status, result, date_done, traceback, children)
VALUES (%(task_id)s, %(status)s, %(result)s, %(date_done)s, %(traceback)s, %(children)s)
ON DUPLICATE KEY UPDATE
    result = IF(status = 'SUCCESS', result, VALUES(result)),
    date_done = IF(status = 'SUCCESS', date_done, VALUES(date_done)),
    traceback = IF(status = 'SUCCESS', traceback, VALUES(traceback)),
    children = IF(status = 'SUCCESS', children, VALUES(children)),
    status = IF(status = 'SUCCESS', status, VALUES(status));

-- name: store_result_extended
-- The same with the extended columns; stamps already stored are kept when none come.
INSERT INTO {task_table} (task_id, status, result, date_done, traceback, children,
                          name, args, kwargs, worker, retries, queue, stamps)
VALUES (%(task_id)s, %(status)s, %(result)s, %(date_done)s, %(traceback)s, %(children)s,
        %(name)s, %(args)s, %(kwargs)s, %(worker)s, %(retries)s, %(queue)s, %(stamps)s)
ON DUPLICATE KEY UPDATE
    result = IF(status = 'SUCCESS', result, VALUES(result)),
    date_done = IF(status = 'SUCCESS', date_done, VALUES(date_done)),
    traceback = IF(status = 'SUCCESS', traceback, VALUES(traceback)),
    children = IF(status = 'SUCCESS', children, VALUES(children)),
    name = IF(status = 'SUCCESS', name, VALUES(name)),
    args = IF(status = 'SUCCESS', args, VALUES(args)),
    kwargs = IF(status = 'SUCCESS', kwargs, VALUES(kwargs)),
    worker = IF(status = 'SUCCESS', worker, VALUES(worker)),
    retries = IF(status = 'SUCCESS', retries, VALUES(retries)),
    queue = IF(status = 'SUCCESS', queue, VALUES(queue)),
    stamps = IF(status = 'SUCCESS', stamps, COALESCE(VALUES(stamps), stamps)),
    status = IF(status = 'SUCCESS', status, VALUES(status));

-- name: get_task_meta
-- One task's row.
SELECT id, task_id, status, result, date_done, traceback, children
FROM {task_table} WHERE task_id = %(task_id)s;

-- name: get_task_meta_extended
-- One task's row with the extended columns.
SELECT id, task_id, status, result, date_done, traceback, children,
       name, args, kwargs, worker, retries, queue, stamps
FROM {task_table} WHERE task_id = %(task_id)s;

-- name: get_many
-- The rows of those of %(task_ids)s that exist (a native join's poll).
-- why: PyMySQL writes a list parameter out as a parenthesized list of quoted values.
SELECT id, task_id, status, result, date_done, traceback, children
FROM {task_table} WHERE task_id IN %(task_ids)s;

-- name: get_many_extended
-- The same with the extended columns.
SELECT id, task_id, status, result, date_done, traceback, children,
       name, args, kwargs, worker, retries, queue, stamps
FROM {task_table} WHERE task_id IN %(task_ids)s;

-- name: task_result_exists
-- Whether a row exists for a task.
SELECT 1 FROM {task_table} WHERE task_id = %(task_id)s LIMIT 1;

-- name: forget
-- Delete one task's row.
DELETE FROM {task_table} WHERE task_id = %(task_id)s;

-- name: delete_expired_tasks
-- Delete up to %(batch)s task rows done before %(cutoff)s (cleanup runs it until none are left).
DELETE FROM {task_table} WHERE date_done < %(cutoff)s LIMIT %(batch)s;

-- name: save_group
-- Insert or replace a group's result.
INSERT INTO {group_table} (taskset_id, result, date_done)
VALUES (%(taskset_id)s, %(result)s, %(date_done)s)
ON DUPLICATE KEY UPDATE result = VALUES(result), date_done = VALUES(date_done);

-- name: restore_group
-- One group's row.
SELECT id, taskset_id, result, date_done FROM {group_table} WHERE taskset_id = %(taskset_id)s;

-- name: delete_group
-- Delete one group's row.
DELETE FROM {group_table} WHERE taskset_id = %(taskset_id)s;

-- name: delete_expired_groups
-- Delete up to %(batch)s group rows done before %(cutoff)s.
DELETE FROM {group_table} WHERE date_done < %(cutoff)s LIMIT %(batch)s;
