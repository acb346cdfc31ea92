-- The outbox of changes analysts ask mde-sync to write back to Defender: one row per request,
-- inserted by `mde-sync act` or by any tool that can INSERT, applied by the daemon (or `sync`) in
-- `id` order per target, and kept with its outcome as the audit trail (`actions.retention`
-- deletes finished rows only; a pending row is never deleted).
--
-- A request sets any of `status`, `classification`, `determination`, `assigned_to` (in the
-- vocabulary of the `alerts` columns: Resolved, TruePositive, Malware, ...) and may add a
-- `comment`. `expected_last_update` is the `alerts.last_update_time` the analyst looked at: when
-- Defender's version is newer, the request ends `conflict` unless `force` is true.
-- `requested_by` defaults to the database role that inserted the row.
--
-- `state`: pending (waiting), applying (a write may have reached Defender: after a restart the
-- comment is looked for before it is sent again), applied, conflict, refused (Defender said no:
-- `outcome` says why and how to fix it), failed (gave up after retries, or the tenant does not
-- allow writes).
CREATE TABLE actions (
    id                    bigserial   PRIMARY KEY,
    tenant_id             text        NOT NULL,
    target_kind           text        NOT NULL DEFAULT 'alert' CHECK (target_kind IN ('alert', 'incident')),
    target_id             text        NOT NULL,
    status                text,
    classification        text,
    determination         text,
    assigned_to           text,
    comment               text,
    -- incidents only: the incident's tags after the change
    custom_tags           text[],
    requested_by          text        NOT NULL DEFAULT current_user,
    requested_at          timestamptz NOT NULL DEFAULT now(),
    expected_last_update  timestamptz,
    force                 boolean     NOT NULL DEFAULT false,
    state                 text        NOT NULL DEFAULT 'pending'
                          CHECK (state IN ('pending', 'applying', 'applied', 'conflict', 'refused', 'failed')),
    outcome               text,
    attempts              integer     NOT NULL DEFAULT 0,
    -- when the comment was first sent (set before it is sent): the comment is looked for among the
    -- alert's comments from then on, so it is never added twice
    comment_sent_at       timestamptz,
    applied_at            timestamptz,
    -- Defender's lastUpdateTime after the change, when the API said it
    result_last_update    timestamptz
);
CREATE INDEX actions_open ON actions (tenant_id, state, id);
CREATE INDEX actions_by_time ON actions (requested_at);
