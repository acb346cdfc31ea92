-- How current each tenant's alerts are (src/sync/mod.rs, "Freshness"), for `status`: changes the
-- API showed before fresh_as_of are stored, unless their visibility delay exceeded the cursor's
-- overlap, which is cursor_overlap_seconds. Written after each run of a process that has a
-- cursor for the tenant; NULL before.
ALTER TABLE sync_state ADD COLUMN fresh_as_of TEXT;
ALTER TABLE sync_state ADD COLUMN cursor_overlap_seconds REAL;
