//! mde-sync: Microsoft Defender for Endpoint alerts from many customer tenants, synced without
//! loss into SQLite or Postgres.
//!
//! Layout (ARCHITECTURE.md has the map and the rules): [`sync`] is the incremental algorithm
//! (start with its proof); it reads through the [`api::AlertSource`] contract, implemented by
//! [`mde`] and [`graph`] on the shared [`api::call`] and routed per tenant by [`sources`], with
//! responses streamed by [`odata`] into [`model`] rows (read once through [`fields`]);
//! [`store`] is the only place SQL lives;
//! [`actions`] writes analysts' requested changes back to Defender; [`config`] is validated data, [`auth`] all credentials and crypto; [`app`] wires them;
//! [`service`] is what `run` adds as a long-running service; [`cli`], [`report`] and [`demo`]
//! are the commands; [`simulator`] is a hostile stand-in for Entra ID and both APIs.
#![forbid(unsafe_code)]

pub mod actions;
pub mod api;
pub mod app;
pub mod auth;
pub mod budget;
pub mod cli;
pub mod clock;
pub mod collection;
pub mod config;
pub mod demo;
pub mod fields;
pub mod graph;
pub mod health;
pub mod mde;
pub mod metrics;
pub mod model;
pub mod odata;
pub mod report;
pub mod service;
pub mod simulator;
pub mod slot;
pub mod source;
pub mod sources;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod tenant;
pub mod timestamp;

use std::{future::Future, pin::Pin};

/// A boxed, sendable future: what the object-safe traits ([`store::Store`],
/// [`api::AlertSource`]) return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
