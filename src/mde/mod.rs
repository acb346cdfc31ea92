//! The alerts API: the [`AlertSource`] interface the sync algorithm pages through, the MDE
//! implementation of it ([`client::MdeClient`]), and the alert model ([`model`]).
//!
//! The interface is deliberately small — "the alerts whose last update lies in `[from, to)`,
//! `top` at a time, skipping `skip`" — so that Microsoft Graph `security/alerts_v2` can be added as
//! a second source without touching the sync algorithm.

pub mod client;
pub mod model;

use serde_json::value::RawValue;

use crate::{BoxFuture, tenant::TenantId, timestamp::Timestamp};

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

/// One page: each alert's exact JSON text, and a continuation link if the source sent one.
#[derive(Debug, Default)]
pub struct Page {
    pub alerts: Vec<Box<RawValue>>,
    pub next_link: Option<String>,
}

/// Where alerts come from.
pub trait AlertSource: Send + Sync {
    /// Alerts of `tenant` whose `lastUpdateTime` lies in `[q.from, q.to)`, in any order.
    fn fetch<'a>(
        &'a self,
        tenant: &'a TenantId,
        q: &'a WindowQuery,
    ) -> BoxFuture<'a, Result<Page, ApiError>>;

    /// Follows a continuation link from an earlier page of the same query.
    fn fetch_link<'a>(
        &'a self,
        tenant: &'a TenantId,
        link: &'a str,
    ) -> BoxFuture<'a, Result<Page, ApiError>>;
}
