-- SQLite stays single-replica: `mde-sync run` holds an exclusive lock on the database file for
-- as long as it runs, and a second `run` on the same file refuses to start (see README,
-- "Running several replicas"). The schema needs nothing for that; this migration keeps the
-- version numbers of both backends in step.
SELECT 1;
