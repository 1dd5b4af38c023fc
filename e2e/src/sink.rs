//! A raw AppSocket (port 9100) printer: accepts connections, reads each to its end and
//! records it as one delivered job.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::error::{HarnessError, Result};

/// One connection's worth of data: one job as the printer saw it.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The first bytes received (up to the sink's `keep_head`).
    pub head: Vec<u8>,
    pub bytes: u64,
    pub started: Instant,
    /// When the sender closed the connection; `None` while it is still open.
    pub finished: Option<Instant>,
}

/// A 9100 sink on 127.0.0.1; the listener stops when this is dropped.
pub struct RawSink {
    port: u16,
    deliveries: Arc<Mutex<Vec<Delivery>>>,
    task: JoinHandle<()>,
}

impl RawSink {
    /// Starts listening on a free port (needs a tokio runtime). Each delivery keeps its
    /// first `keep_head` bytes, enough to find a job marker without holding whole documents.
    pub async fn start(keep_head: usize) -> Result<RawSink> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(HarnessError::io("binding the 9100 sink"))?;
        let port = listener
            .local_addr()
            .map_err(HarnessError::io("reading the sink's port"))?
            .port();
        let deliveries = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(accept_loop(listener, deliveries.clone(), keep_head));
        Ok(RawSink {
            port,
            deliveries,
            task,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `socket://127.0.0.1:PORT`.
    pub fn uri(&self) -> String {
        format!("socket://127.0.0.1:{}", self.port)
    }

    /// Every connection so far, in accept order.
    pub fn deliveries(&self) -> Vec<Delivery> {
        lock(&self.deliveries).clone()
    }

    /// Connections the sender has finished after sending something (a health probe that
    /// connects and closes is not a job).
    pub fn completed_jobs(&self) -> usize {
        lock(&self.deliveries)
            .iter()
            .filter(|delivery| delivery.finished.is_some() && delivery.bytes > 0)
            .count()
    }

    pub fn total_bytes(&self) -> u64 {
        lock(&self.deliveries)
            .iter()
            .map(|delivery| delivery.bytes)
            .sum()
    }
}

impl Drop for RawSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(deliveries: &Mutex<Vec<Delivery>>) -> std::sync::MutexGuard<'_, Vec<Delivery>> {
    // Only this module writes, without panicking in between; a poisoned lock still holds
    // consistent data.
    deliveries
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn accept_loop(
    listener: TcpListener,
    deliveries: Arc<Mutex<Vec<Delivery>>>,
    keep_head: usize,
) {
    let mut readers = tokio::task::JoinSet::new();
    while let Ok((mut stream, _)) = listener.accept().await {
        let index = {
            let mut all = lock(&deliveries);
            all.push(Delivery {
                head: Vec::new(),
                bytes: 0,
                started: Instant::now(),
                finished: None,
            });
            all.len() - 1
        };
        let deliveries = deliveries.clone();
        readers.spawn(async move {
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                match stream.read(&mut buffer).await {
                    Ok(0) => break,
                    Ok(n) => {
                        let mut all = lock(&deliveries);
                        let delivery = &mut all[index];
                        let room = keep_head.saturating_sub(delivery.head.len()).min(n);
                        delivery.head.extend_from_slice(&buffer[..room]);
                        delivery.bytes += n as u64;
                    }
                    // A reset mid-job leaves the delivery unfinished, as a printer would.
                    Err(_) => return,
                }
            }
            lock(&deliveries)[index].finished = Some(Instant::now());
        });
        // Reap finished readers so the set does not grow without bound.
        while readers.try_join_next().is_some() {}
    }
}
