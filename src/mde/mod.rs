//! The alerts API: the [`AlertSource`] interface the sync algorithm pages through, the MDE
//! implementation of it ([`client::MdeClient`]), and the alert model ([`model`]).
//!
//! The interface is deliberately small — "the alerts whose last update lies in `[from, to)`,
//! `top` at a time, skipping `skip`" — so that Microsoft Graph `security/alerts_v2` can be added as
//! a second source without touching the sync algorithm.

pub mod client;
pub mod model;

use crate::{BoxFuture, odata::Summary, tenant::TenantId, timestamp::Timestamp};

pub use crate::odata::{Abort, Collect, ItemSink as AlertSink};

pub use client::{ApiError, MdeClient};

/// One request for alerts by last update time, as a half-open window `[from, to)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowQuery {
    pub from: Timestamp,
    pub to: Timestamp,
    pub top: usize,
    pub skip: usize,
    pub expand_evidence: bool,
}

/// What a response said besides its alerts, which went to the [`AlertSink`] as they arrived.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageSummary {
    /// How many alerts the response held.
    pub count: usize,
    /// A continuation link, if the source sent one.
    pub next_link: Option<String>,
}

impl From<Summary> for PageSummary {
    fn from(s: Summary) -> Self {
        Self {
            count: s.items,
            next_link: s.next_link,
        }
    }
}

/// Where alerts come from.
///
/// A source streams: each alert of a response is pushed into the sink as soon as it has arrived
/// (its exact JSON text), and only a [`PageSummary`] is returned at the end. So a caller holds
/// what its sink keeps — a batch — never a whole page. If an attempt's body breaks off and the
/// source retries, it calls [`AlertSink::begin`] again before the next attempt; alerts pushed by
/// the broken attempt are real alerts, and writing them is harmless (newer wins).
pub trait AlertSource: Send + Sync {
    /// Alerts of `tenant` whose `lastUpdateTime` lies in `[q.from, q.to)`, in any order.
    fn fetch<'a>(
        &'a self,
        tenant: &'a TenantId,
        q: &'a WindowQuery,
        sink: &'a mut dyn AlertSink,
    ) -> BoxFuture<'a, Result<PageSummary, ApiError>>;

    /// Follows a continuation link from an earlier page of the same query.
    fn fetch_link<'a>(
        &'a self,
        tenant: &'a TenantId,
        link: &'a str,
        sink: &'a mut dyn AlertSink,
    ) -> BoxFuture<'a, Result<PageSummary, ApiError>>;
}
