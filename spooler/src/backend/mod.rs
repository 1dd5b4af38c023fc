//! Printer backends: how a job's documents get to a device, chosen by the Printer's URI
//! scheme (`ipp`, `ipps`, `socket`, `lpd`, `file`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use printfleet_crds::PrinterSpec;
use printfleet_crds::common::SecretKeyRef;
use tokio::io::{AsyncWrite, AsyncWriteExt};

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

impl PrinterHealth {
    /// What a device that only speaks a byte stream (socket, LPD, file) reports when it
    /// can be reached: nothing more is known about it.
    pub fn reachable() -> PrinterHealth {
        PrinterHealth {
            state: 3,
            reasons: Vec::new(),
            accepting: true,
        }
    }
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

/// The backend for printer `name`, chosen by the scheme of its URI. Secret references
/// resolve to `<secrets_dir>/<secret name>/<key>` and are read now, so a missing secret is
/// reported when the printer is configured rather than at its first job.
pub fn connect(
    name: &str,
    spec: &PrinterSpec,
    secrets_dir: &Path,
) -> Result<Arc<dyn Backend>, BackendError> {
    let uri = spec.uri.trim();
    let (scheme, rest) = uri
        .split_once("://")
        .ok_or_else(|| BackendError::Config(format!("printer {name}: {uri:?} is not a URI")))?;
    let backend: Arc<dyn Backend> = match scheme.to_ascii_lowercase().as_str() {
        "file" => Arc::new(file::FileBackend::new(file::directory_of(rest)?)),
        "socket" => Arc::new(socket::SocketBackend::new(socket::address_of(rest)?)),
        "lpd" => {
            let (address, queue) = lpd::target_of(rest)?;
            Arc::new(lpd::LpdBackend::new(address, queue))
        }
        "ipp" | "ipps" => {
            let credentials = spec
                .credentials
                .as_ref()
                .map(|secret| read_secret(secrets_dir, secret))
                .transpose()?;
            let ca_bundle = spec
                .ca_bundle
                .as_ref()
                .map(|secret| read_secret(secrets_dir, secret))
                .transpose()?;
            Arc::new(ipp::IppBackend::new(
                uri,
                ipp::IppOptions {
                    credentials: credentials.map(|c| c.trim_end().to_owned()),
                    ca_bundle,
                    insecure_skip_tls_verify: spec.insecure_skip_tls_verify,
                },
            )?)
        }
        other => {
            return Err(BackendError::Config(format!(
                "printer {name}: unsupported URI scheme {other:?}"
            )));
        }
    };
    Ok(backend)
}

/// The contents of a Secret key as the standalone spooler sees it.
fn read_secret(secrets_dir: &Path, secret: &SecretKeyRef) -> Result<String, BackendError> {
    let path = secrets_dir.join(&secret.name).join(&secret.key);
    std::fs::read_to_string(&path).map_err(|error| {
        BackendError::Config(format!("reading secret {}: {error}", path.display()))
    })
}

/// `host[:port]` from a URI authority, with the scheme's default port.
fn host_and_port(authority: &str, default_port: u16) -> Result<(String, u16), BackendError> {
    let bad = || BackendError::Config(format!("bad printer address {authority:?}"));
    // A bracketed IPv6 literal keeps its colons inside the brackets.
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad());
    }
    let port = match port {
        Some(port) => port.parse().map_err(|_| bad())?,
        None => default_port,
    };
    Ok((host.to_owned(), port))
}

/// Maps an I/O failure while talking to a device to a retryable error.
fn unavailable(context: &str, error: impl std::fmt::Display) -> BackendError {
    BackendError::Unavailable(format!("{context}: {error}"))
}

/// Copies a document's bytes to `out`, each write bounded by `write_timeout` (a device
/// that stops reading is as unavailable as one that hangs up). Returns the bytes written.
async fn copy_document<W>(
    document: &mut OutgoingDocument,
    out: &mut W,
    write_timeout: Duration,
) -> Result<u64, BackendError>
where
    W: AsyncWrite + Unpin,
{
    let mut written = 0u64;
    while let Some(chunk) = document.data.next().await {
        let chunk = chunk.map_err(|error| unavailable("reading the spooled document", error))?;
        tokio::time::timeout(write_timeout, out.write_all(&chunk))
            .await
            .map_err(|_| unavailable("sending the document", "printer stopped reading"))?
            .map_err(|error| unavailable("sending the document", error))?;
        written += chunk.len() as u64;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(uri: &str) -> PrinterSpec {
        PrinterSpec {
            uri: uri.to_owned(),
            ..PrinterSpec::default()
        }
    }

    #[test]
    fn host_and_port_applies_default_and_parses_ipv6() {
        assert_eq!(
            host_and_port("printer.local", 9100).unwrap(),
            ("printer.local".to_owned(), 9100)
        );
        assert_eq!(
            host_and_port("10.0.0.7:9101", 9100).unwrap(),
            ("10.0.0.7".to_owned(), 9101)
        );
        assert_eq!(
            host_and_port("[::1]:631", 80).unwrap(),
            ("::1".to_owned(), 631)
        );
        assert!(host_and_port(":9100", 9100).is_err());
        assert!(host_and_port("host:notaport", 9100).is_err());
    }

    #[test]
    fn connect_chooses_by_scheme_and_rejects_unknown_ones() {
        let secrets = tempfile::tempdir().unwrap();
        for uri in [
            "file:///tmp/printfleet-out",
            "socket://127.0.0.1:9100",
            "lpd://127.0.0.1/raw",
            "ipp://127.0.0.1:631/ipp/print",
            "IPPS://127.0.0.1/ipp/print",
        ] {
            assert!(connect("p", &spec(uri), secrets.path()).is_ok(), "{uri}");
        }
        for uri in ["smb://host/share", "no-scheme", "lpd://host"] {
            assert!(
                matches!(
                    connect("p", &spec(uri), secrets.path()),
                    Err(BackendError::Config(_))
                ),
                "{uri}"
            );
        }
    }

    #[test]
    fn connect_reports_a_missing_secret_as_config() {
        let secrets = tempfile::tempdir().unwrap();
        let mut printer = spec("ipp://127.0.0.1:631/ipp/print");
        printer.credentials = Some(SecretKeyRef {
            name: "printer-login".into(),
            key: "basic".into(),
        });
        assert!(matches!(
            connect("p", &printer, secrets.path()),
            Err(BackendError::Config(_))
        ));
        std::fs::create_dir(secrets.path().join("printer-login")).unwrap();
        std::fs::write(secrets.path().join("printer-login/basic"), "alice:secret\n").unwrap();
        assert!(connect("p", &printer, secrets.path()).is_ok());
    }
}
