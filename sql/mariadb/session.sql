-- Asked of a MariaDB server once, on the first connection.

-- name: wsrep_on
-- Whether the server is a Galera cluster node (wsrep_on ON): sql/galera/'s statements are used then.
-- why: SHOW, not @@wsrep_on, which is an error on a server built without wsrep.
SHOW VARIABLES LIKE 'wsrep_on';
