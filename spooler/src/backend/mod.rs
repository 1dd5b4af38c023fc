//! Printer backends: how a job's documents get to a device, chosen by the Printer's URI
//! scheme (`ipp`, `ipps`, `socket`, `lpd`, `file`).

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;

use crate::job::{Job, JobTicket};

pub mod file;
pub mod ipp;
pub mod lpd;
pub mod socket;

/// What a printer said about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrinterHealth {
    /// `printer-state`: 3 idle, 4 processing, 5 stopped.
    pub state: i32,
    pub reasons: Vec<String>,
    /// Whether jobs may be sent now.
    pub accepting: bool,
}

/// One document on its way to a printer.
pub struct OutgoingDocument {
    pub format: String,
    pub name: Option<String>,
    pub size: u64,
    pub data: BoxStream<'static, std::io::Result<Bytes>>,
}

/// The job as the backend sees it.
pub struct OutgoingJob<'a> {
    pub job: &'a Job,
    pub ticket: &'a JobTicket,
}

/// What the printer reported at the end of a job.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delivery {
    pub impressions: Option<i64>,
    pub sheets: Option<i64>,
}

/// Why sending failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Cannot connect, connection dropped, printer stopped or busy: try again later, or
    /// on another pool member.
    #[error("printer unavailable: {0}")]
    Unavailable(String),
    /// The printer refused this job for good (unsupported format, bad attributes).
    #[error("printer refused the job: {0}")]
    Refused(String),
    /// Bad printer configuration (unknown scheme, unreadable credentials).
    #[error("printer misconfigured: {0}")]
    Config(String),
}

/// A printer the dispatcher can send jobs to.
#[async_trait]
pub trait Backend: Send + Sync {
    /// Ask the printer how it is (IPP: Get-Printer-Attributes; others: can we connect).
    async fn probe(&self) -> Result<PrinterHealth, BackendError>;
    /// Send the job's documents and wait until the printer has them (IPP: until the
    /// remote job is finished). Dropping the future abandons the transmission.
    async fn print(
        &self,
        job: OutgoingJob<'_>,
        documents: Vec<OutgoingDocument>,
    ) -> Result<Delivery, BackendError>;
}
