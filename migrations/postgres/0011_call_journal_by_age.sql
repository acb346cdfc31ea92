-- The call journal is written in batches, and the calls that have left the longest window are
-- deleted for every tenant at once (`DELETE ... WHERE api = ? AND sent_at < ?`): this index
-- makes that a range scan instead of a scan of every tenant's calls.
CREATE INDEX api_calls_by_age ON api_calls (api, sent_at);
