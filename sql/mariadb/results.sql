-- MariaDB 10.3+: the inserts of sql/mysql/results.sql with the row id drawn
-- from the sequence, as Celery's backend does there (its tables have no
-- AUTO_INCREMENT); everything else is sql/mysql/'s.
--
-- A drawn id may belong to another row already: a sequence behind its table
-- (restarted, restored from an older dump, made after the table), or on a
-- Galera cluster (duplicate ids from INCREMENT BY 0 sequences after a node
-- change are reported, e.g. privacyidea/privacyidea#3810; not seen here).
-- ON DUPLICATE KEY UPDATE would then update that other task's row (a no-op
-- on a SUCCESS) and report success: a result lost without an error.
-- So the update first checks that the row it found is this task's, and sets
-- id to 2^63 otherwise, out of range for INTEGER and BIGINT alike, which
-- strict mode refuses (1264): the statement writes nothing and is retried
-- (errcodes.py), drawing a new id. Strict mode is set for the statement
-- (MariaDB's default modes), whatever the session's.

-- name: store_result
-- Insert a task's state, or update it unless a SUCCESS is stored already.
-- why: as sql/mysql/'s store_result, plus the id; an update leaves a gap in
-- why: the sequence, as a PostgreSQL upsert does. The id check comes first.
SET STATEMENT sql_mode = 'STRICT_TRANS_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_AUTO_CREATE_USER,NO_ENGINE_SUBSTITUTION' FOR
INSERT INTO {task_table} (id, task_id, status, result, date_done, traceback, children)
VALUES (NEXTVAL({task_sequence_name}), %(task_id)s, %(status)s, %(result)s, %(date_done)s,
        %(traceback)s, %(children)s)
ON DUPLICATE KEY UPDATE
    id = IF(task_id = VALUES(task_id), id, 9223372036854775808),
    result = IF(status = 'SUCCESS', result, VALUES(result)),
    date_done = IF(status = 'SUCCESS', date_done, VALUES(date_done)),
    traceback = IF(status = 'SUCCESS', traceback, VALUES(traceback)),
    children = IF(status = 'SUCCESS', children, VALUES(children)),
    status = IF(status = 'SUCCESS', status, VALUES(status));

-- name: store_result_extended
-- The same with the extended columns; stamps already stored are kept when none come.
SET STATEMENT sql_mode = 'STRICT_TRANS_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_AUTO_CREATE_USER,NO_ENGINE_SUBSTITUTION' FOR
INSERT INTO {task_table} (id, task_id, status, result, date_done, traceback, children,
                          name, args, kwargs, worker, retries, queue, stamps)
VALUES (NEXTVAL({task_sequence_name}), %(task_id)s, %(status)s, %(result)s, %(date_done)s,
        %(traceback)s, %(children)s,
        %(name)s, %(args)s, %(kwargs)s, %(worker)s, %(retries)s, %(queue)s, %(stamps)s)
ON DUPLICATE KEY UPDATE
    id = IF(task_id = VALUES(task_id), id, 9223372036854775808),
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
-- why: an id that is another group's would replace that group's result: refused (1264).
SET STATEMENT sql_mode = 'STRICT_TRANS_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_AUTO_CREATE_USER,NO_ENGINE_SUBSTITUTION' FOR
INSERT INTO {group_table} (id, taskset_id, result, date_done)
VALUES (NEXTVAL({group_sequence_name}), %(taskset_id)s, %(result)s, %(date_done)s)
ON DUPLICATE KEY UPDATE
    id = IF(taskset_id = VALUES(taskset_id), id, 9223372036854775808),
    result = VALUES(result), date_done = VALUES(date_done);
