-- On SQLite a trigger deletes the evidence of a replaced alert. Postgres deletes it in the same
-- transaction as the upsert (src/store/postgres.rs), where it costs no round trip of its own;
-- this migration keeps the version numbers of both backends in step.
SELECT 1;
