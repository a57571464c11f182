-- Stores that wake waiters (LISTEN/NOTIFY): PostgreSQL only. The backend uses
-- these when they exist and database_notify is on (rawbackend/listen.py).

-- name: notify_store_result
-- store_result, and a notification on the task table's channel when the state is ready.
-- why: one statement, so a store stays one round trip; a stored SUCCESS is kept
-- why: (DO UPDATE ... WHERE), RETURNING has no row and nothing is notified:
-- why: the waiter can read that SUCCESS already. Only ready states wake waiters.
WITH stored AS (
    INSERT INTO {task_table} AS t (id, task_id, status, result, date_done, traceback, children)
    VALUES (nextval({task_sequence}), %(task_id)s, %(status)s, %(result)s, %(date_done)s,
            %(traceback)s, %(children)s)
    ON CONFLICT (task_id) DO UPDATE SET
        status = excluded.status,
        result = excluded.result,
        date_done = excluded.date_done,
        traceback = excluded.traceback,
        children = excluded.children
    WHERE t.status <> 'SUCCESS'
    RETURNING t.task_id, t.status
)
SELECT pg_notify({task_channel_name}, task_id) FROM stored
WHERE status IN ('SUCCESS', 'FAILURE', 'REVOKED');

-- name: notify_store_result_extended
-- store_result_extended, and a notification when the state is ready.
WITH stored AS (
    INSERT INTO {task_table} AS t (id, task_id, status, result, date_done, traceback, children,
                                   name, args, kwargs, worker, retries, queue, stamps)
    VALUES (nextval({task_sequence}), %(task_id)s, %(status)s, %(result)s, %(date_done)s,
            %(traceback)s, %(children)s, %(name)s, %(args)s, %(kwargs)s, %(worker)s,
            %(retries)s, %(queue)s, %(stamps)s)
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
        stamps = COALESCE(excluded.stamps, t.stamps)
    WHERE t.status <> 'SUCCESS'
    RETURNING t.task_id, t.status
)
SELECT pg_notify({task_channel_name}, task_id) FROM stored
WHERE status IN ('SUCCESS', 'FAILURE', 'REVOKED');

-- name: notify_listen_probe
-- Listen on the channel of probes, first: the listener checks that its notifications arrive.
-- why: behind PgBouncer in transaction mode this LISTEN stays on a server connection
-- why: that PgBouncer lends to others; there it hears only the odd probe, never a store.
LISTEN "rawbackend:probe";

-- name: notify_probe
-- Send %(payload)s on the channel of probes (from a connection other than the listener's).
SELECT pg_notify('rawbackend:probe', %(payload)s);

-- name: notify_listen
-- Listen on the task table's channel (the listener's own connection, once a probe arrived).
-- why: LISTEN takes an identifier, quoted; pg_notify above takes the same name as text.
LISTEN {task_channel};

-- name: notify_unlisten_probe
-- Stop listening on the channel of probes (listening on the table's channel now).
UNLISTEN "rawbackend:probe";

-- name: notify_ready_ids
-- Those of %(task_ids)s that are ready: the listener's safety check for lost notifications.
SELECT task_id FROM {task_table}
WHERE task_id = ANY(%(task_ids)s) AND status IN ('SUCCESS', 'FAILURE', 'REVOKED');
