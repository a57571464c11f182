-- MariaDB 10.3+: the inserts of sql/mysql/results.sql with the row id drawn
-- from the sequence, as Celery's backend does there (its tables have no
-- AUTO_INCREMENT); everything else is sql/mysql/'s.

-- name: store_result
-- Insert a task's state, or update it unless a SUCCESS is stored already.
-- why: as sql/mysql/'s store_result, plus the id; an update leaves a gap in
-- why: the sequence, as a PostgreSQL upsert does.
INSERT INTO {task_table} (id, task_id, status, result, date_done, traceback, children)
VALUES (NEXTVAL({task_sequence_name}), %(task_id)s, %(status)s, %(result)s, %(date_done)s,
        %(traceback)s, %(children)s)
ON DUPLICATE KEY UPDATE
    result = IF(status = 'SUCCESS', result, VALUES(result)),
    date_done = IF(status = 'SUCCESS', date_done, VALUES(date_done)),
    traceback = IF(status = 'SUCCESS', traceback, VALUES(traceback)),
    children = IF(status = 'SUCCESS', children, VALUES(children)),
    status = IF(status = 'SUCCESS', status, VALUES(status));

-- name: store_result_extended
-- The same with the extended columns; stamps already stored are kept when none come.
INSERT INTO {task_table} (id, task_id, status, result, date_done, traceback, children,
                          name, args, kwargs, worker, retries, queue, stamps)
VALUES (NEXTVAL({task_sequence_name}), %(task_id)s, %(status)s, %(result)s, %(date_done)s,
        %(traceback)s, %(children)s,
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

-- name: save_group
-- Insert or replace a group's result.
INSERT INTO {group_table} (id, taskset_id, result, date_done)
VALUES (NEXTVAL({group_sequence_name}), %(taskset_id)s, %(result)s, %(date_done)s)
ON DUPLICATE KEY UPDATE result = VALUES(result), date_done = VALUES(date_done);
