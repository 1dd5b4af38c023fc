//! printfleet-spooler: the print server.
//!
//! One direction of flow: `http` receives a request, `ipp` parses, validates and
//! authorizes it (with `auth`), `store` makes the job durable, `dispatch` hands it to a
//! printer `backend`, and `metrics` counts what happened. `config` holds the user's
//! Printer / PrintQueue / AccountingPolicy documents; `app` ties the parts together.

pub mod accounting;
pub mod app;
pub mod auth;
pub mod backend;
pub mod cluster;
pub mod config;
pub mod dispatch;
pub mod document;
pub mod http;
pub mod ipp;
pub mod job;
pub mod metrics;
pub mod store;
