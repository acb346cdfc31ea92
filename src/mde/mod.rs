//! The Defender for Endpoint alerts API: its HTTP client ([`client::MdeClient`], an
//! [`crate::api::AlertSource`]) and the parser of its alert JSON ([`model`]).

pub mod client;
pub mod model;

pub use client::MdeClient;
