-- The outbox of changes analysts ask mde-sync to write back to Defender: one row per request,
-- inserted by `mde-sync act` or by any tool that can INSERT, applied by the daemon (or `sync`) in
-- `id` order per target, and kept with its outcome as the audit trail (`actions.retention`
-- deletes finished rows only; a pending row is never deleted).
--
-- A request sets any of `status`, `classification`, `determination`, `assigned_to` (in the
-- vocabulary of the `alerts` columns: Resolved, TruePositive, Malware, ...) and may add a
-- `comment`. `expected_last_update` is the `alerts.last_update_time` the analyst looked at: when
-- Defender's version is newer, the request ends `conflict` unless `force` is 1.
--
-- `state`: pending (waiting), applying (a write may have reached Defender: after a restart the
-- comment is looked for before it is sent again), applied, conflict, refused (Defender said no:
-- `outcome` says why and how to fix it), failed (gave up after retries, or the tenant does not
-- allow writes). Times are TEXT in the fixed seven-digit form.
CREATE TABLE actions (
    id                    INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id             TEXT    NOT NULL,
    target_kind           TEXT    NOT NULL DEFAULT 'alert' CHECK (target_kind IN ('alert', 'incident')),
    target_id             TEXT    NOT NULL,
    status                TEXT,
    classification        TEXT,
    determination         TEXT,
    assigned_to           TEXT,
    comment               TEXT,
    -- incidents only: a JSON array of strings, replacing the incident's tags
    custom_tags           TEXT,
    requested_by          TEXT    NOT NULL,
    requested_at          TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f', 'now') || '0000Z'),
    expected_last_update  TEXT,
    force                 INTEGER NOT NULL DEFAULT 0,
    state                 TEXT    NOT NULL DEFAULT 'pending'
                          CHECK (state IN ('pending', 'applying', 'applied', 'conflict', 'refused', 'failed')),
    outcome               TEXT,
    attempts              INTEGER NOT NULL DEFAULT 0,
    -- when the comment was first sent (set before it is sent): the comment is looked for among the
    -- alert's comments from then on, so it is never added twice
    comment_sent_at       TEXT,
    applied_at            TEXT,
    -- Defender's lastUpdateTime after the change, when the API said it
    result_last_update    TEXT
);
CREATE INDEX actions_open ON actions (tenant_id, state, id);
CREATE INDEX actions_by_time ON actions (requested_at);
