//! mde-sync: Microsoft Defender for Endpoint alerts from many customer tenants, synced without
//! loss into SQLite or Postgres.
//!
//! Layout: [`config`] builds typed settings; [`auth`] gets tokens; [`mde`] talks to the MDE alerts
//! API and [`graph`] to Microsoft Graph security `alerts_v2`, each tenant reading from the one its
//! [`source::SourceKind`] names (routed by [`sources`]); [`sync`] is the incremental algorithm
//! (start there), reading responses as they stream with [`odata`]; [`store`] is the only place SQL lives;
//! [`simulator`] is a hostile stand-in for Entra ID and the API; [`app`] wires them together for
//! the CLI; [`service`] and [`metrics`] are what `run` adds as a long-running service.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod auth;
pub mod budget;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod graph;
pub mod health;
pub mod mde;
pub mod metrics;
pub mod model;
pub mod odata;
pub mod report;
pub mod service;
pub mod simulator;
pub mod source;
pub mod sources;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod tenant;
pub mod timestamp;

use std::{future::Future, pin::Pin};

/// A boxed, sendable future: what the object-safe traits ([`store::Store`],
/// [`mde::AlertSource`]) return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
