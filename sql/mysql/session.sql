-- Run once on each new connection, never per statement.

-- name: set_lock_timeout
-- Make an InnoDB row lock wait end in ER_LOCK_WAIT_TIMEOUT (1205) once the budget (in seconds) is spent.
-- why: whole seconds only (MySQL and MariaDB alike), so a budget under one second is one second.
SET SESSION innodb_lock_wait_timeout = %(seconds)s;
