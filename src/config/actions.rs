//! `[actions]`: writing analysts' changes back to Defender (the `actions` outbox): whether
//! tenants may receive writes unless their entry says, how long finished requests are kept, and
//! how often a request is tried before it is given up.

use super::{
    Problems,
    raw::RawActions,
    values::{count, duration_within},
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionSettings {
    /// The default of each tenant entry's `write` (off: writing is opt in).
    pub write: bool,
    /// Finished requests older than this are deleted; open ones never are.
    pub retention: time::Duration,
    /// Attempts per request (over restarts too) before it ends `failed`.
    pub max_attempts: usize,
}

impl Default for ActionSettings {
    fn default() -> Self {
        Self {
            write: false,
            retention: time::Duration::days(365),
            max_attempts: 5,
        }
    }
}

pub(super) fn validate_actions(raw: RawActions, problems: &mut Problems) -> ActionSettings {
    let d = ActionSettings::default();
    ActionSettings {
        write: raw.write.unwrap_or(d.write),
        retention: duration_within(
            problems,
            "actions.retention",
            raw.retention,
            d.retention,
            time::Duration::days(1)..=time::Duration::days(36_500),
            "the audit trail must be kept at least a day: use a duration from \"1d\" to \"100y\"",
        ),
        max_attempts: count(
            problems,
            "actions.max_attempts",
            raw.max_attempts,
            d.max_attempts,
            100,
            "use 1 to 100",
        ),
    }
}
