//! `socket://host:port`: AppSocket / JetDirect, raw bytes to port 9100.

use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{
    Backend, BackendError, Delivery, OutgoingDocument, OutgoingJob, PrinterHealth, copy_document,
    host_and_port, unavailable,
};

const DEFAULT_PORT: u16 = 9100;

/// How long to wait for a connection, for a write to make progress, and for the device
/// to close its side once it has everything.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    pub write: Duration,
    pub drain: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            write: Duration::from_secs(60),
            drain: Duration::from_secs(30),
        }
    }
}

/// Streams each job's documents over one TCP connection.
pub struct SocketBackend {
    address: (String, u16),
    timeouts: Timeouts,
}

/// `host[:port]` of a `socket://` URI (the part after `socket://`).
pub fn address_of(rest: &str) -> Result<(String, u16), BackendError> {
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    host_and_port(authority, DEFAULT_PORT)
}

/// Opens a TCP connection to a device, bounded by `timeout`: the probe of every
/// stream-only backend, and the start of each job.
pub(super) async fn connect_tcp(
    address: &(String, u16),
    timeout: Duration,
) -> Result<TcpStream, BackendError> {
    let context = format!("connecting to {}:{}", address.0, address.1);
    tokio::time::timeout(timeout, TcpStream::connect((address.0.as_str(), address.1)))
        .await
        .map_err(|_| unavailable(&context, "timed out"))?
        .map_err(|error| unavailable(&context, error))
}

impl SocketBackend {
    pub fn new(address: (String, u16)) -> SocketBackend {
        SocketBackend::with_timeouts(address, Timeouts::default())
    }

    pub fn with_timeouts(address: (String, u16), timeouts: Timeouts) -> SocketBackend {
        SocketBackend { address, timeouts }
    }
}

#[async_trait]
impl Backend for SocketBackend {
    async fn probe(&self) -> Result<PrinterHealth, BackendError> {
        connect_tcp(&self.address, self.timeouts.connect).await?;
        Ok(PrinterHealth::reachable())
    }

    async fn print(
        &self,
        _job: OutgoingJob<'_>,
        documents: Vec<OutgoingDocument>,
    ) -> Result<Delivery, BackendError> {
        let mut stream = connect_tcp(&self.address, self.timeouts.connect).await?;
        for mut document in documents {
            copy_document(&mut document, &mut stream, self.timeouts.write).await?;
        }
        stream
            .shutdown()
            .await
            .map_err(|error| unavailable("finishing the job", error))?;
        // Bytes in our socket buffer are not yet the printer's: wait until it closes its
        // side, which it does once it has read everything. A reset here means it dropped
        // data we sent. Anything it says on the back channel is status chatter.
        let mut back_channel = [0u8; 1024];
        let drained = tokio::time::timeout(self.timeouts.drain, async {
            loop {
                match stream.read(&mut back_channel).await {
                    Ok(0) => return Ok(()),
                    Ok(_) => continue,
                    Err(error) => return Err(unavailable("waiting for the printer", error)),
                }
            }
        })
        .await;
        match drained {
            Ok(result) => result?,
            // Some devices keep the connection open after printing; every byte was
            // written and none refused, so the job counts as delivered.
            Err(_) => tracing::debug!(
                printer = %format!("{}:{}", self.address.0, self.address.1),
                "printer kept the connection open after the job"
            ),
        }
        Ok(Delivery::default())
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    use super::*;
    use crate::backend::file::tests::{document, sample_job};

    fn backend(address: SocketAddr) -> SocketBackend {
        SocketBackend::with_timeouts(
            ("127.0.0.1".into(), address.port()),
            Timeouts {
                connect: Duration::from_secs(2),
                write: Duration::from_secs(5),
                drain: Duration::from_secs(5),
            },
        )
    }

    /// A raw 9100 sink: records everything of one connection until the sender closes.
    async fn recording_sink() -> (SocketAddr, JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut connection, _) = listener.accept().await.unwrap();
            let mut received = Vec::new();
            connection.read_to_end(&mut received).await.unwrap();
            received
        });
        (address, task)
    }

    #[test]
    fn address_of_defaults_to_9100() {
        assert_eq!(address_of("printer").unwrap(), ("printer".into(), 9100));
        assert_eq!(
            address_of("10.1.2.3:9101/").unwrap(),
            ("10.1.2.3".into(), 9101)
        );
    }

    #[tokio::test]
    async fn socket_backend_streams_every_document_to_the_sink() {
        let (address, sink) = recording_sink().await;
        let job = sample_job(1);
        let first: Vec<u8> = (0..200_000u32).map(|n| (n % 251) as u8).collect();
        backend(address)
            .print(
                OutgoingJob {
                    job: &job,
                    ticket: &job.ticket,
                },
                vec![
                    document("application/postscript", &first),
                    document("application/postscript", b"%!PS second"),
                ],
            )
            .await
            .unwrap();
        let mut expected = first;
        expected.extend_from_slice(b"%!PS second");
        assert_eq!(sink.await.unwrap(), expected);
    }

    #[tokio::test]
    async fn socket_backend_reports_a_hang_up_mid_job_as_unavailable() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let sink = tokio::spawn(async move {
            let (mut connection, _) = listener.accept().await.unwrap();
            let mut some = vec![0u8; 64 * 1024];
            connection.read_exact(&mut some).await.unwrap();
            // Dropping with unread data makes the kernel reset the connection.
        });
        let job = sample_job(2);
        let large = vec![b'x'; 16 * 1024 * 1024];
        let result = backend(address)
            .print(
                OutgoingJob {
                    job: &job,
                    ticket: &job.ticket,
                },
                vec![document("application/pdf", &large)],
            )
            .await;
        sink.await.unwrap();
        assert!(
            matches!(result, Err(BackendError::Unavailable(_))),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn socket_probe_tells_a_listening_printer_from_an_absent_one() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        assert!(backend(address).probe().await.unwrap().accepting);
        drop(listener);
        assert!(matches!(
            backend(address).probe().await,
            Err(BackendError::Unavailable(_))
        ));
    }
}
