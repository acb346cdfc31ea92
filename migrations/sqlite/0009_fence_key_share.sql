-- The lease fence is Postgres-only (SQLite stays single-replica); this migration keeps the
-- version numbers of both backends in step.
SELECT 1;
