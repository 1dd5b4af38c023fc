//! Whole-system test harness for printfleet: the spooler binary and the real peers it is
//! tested against (ippeveprinter, a raw 9100 sink, CUPS's cupsd and command-line clients),
//! each a child process or task stopped when its guard drops.

pub mod apiserver;
pub mod cluster;
pub mod conformance;
pub mod cups_cli;
pub mod cupsd;
pub mod documents;
pub mod error;
pub mod ipp_client;
pub mod ippeve;
pub mod process;
pub mod prometheus;
pub mod sink;
pub mod spooler;
pub mod stats;

pub use cupsd::Cupsd;
pub use error::{HarnessError, Result};
pub use ipp_client::{IppConnection, IppResponse};
pub use ippeve::{DnsSd, IppEvePrinter};
pub use process::{ChildGuard, free_port};
pub use sink::RawSink;
pub use spooler::Spooler;
