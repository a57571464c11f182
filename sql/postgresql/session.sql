-- Run once on each new connection, never per statement.

-- name: set_lock_timeout
-- Make a lock wait end in lock_not_available (55P03) once the budget (in milliseconds) is spent.
-- why: SET takes no parameters under psycopg's server-side binding; set_config does.
-- why: session-level, so behind PgBouncer in transaction mode it lands on one server connection, not on ours.
SELECT set_config('lock_timeout', %(ms)s, false);
