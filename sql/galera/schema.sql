-- MariaDB Galera cluster nodes (wsrep_on, asked of the server): these replace
-- sql/mariadb/'s statements of the same names, which replace sql/mysql/'s.

-- name: create_task_sequence
-- The sequence Celery's models draw task row ids from, as Galera takes one.
-- why: Galera refuses a cached sequence (1235, "CACHE without INCREMENT BY 0");
-- why: INCREMENT BY 0 steps by auto_increment_increment from each node's
-- why: auto_increment_offset (set by Galera per node), so every node draws ids
-- why: of its own from its cache; NOCACHE would replicate one write per id.
CREATE SEQUENCE IF NOT EXISTS {task_sequence_name} INCREMENT BY 0;

-- name: create_group_sequence
-- The sequence Celery's models draw group row ids from, as Galera takes one.
CREATE SEQUENCE IF NOT EXISTS {group_sequence_name} INCREMENT BY 0;
