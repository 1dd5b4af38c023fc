//! A raw AppSocket (port 9100) printer: accepts connections, reads each to its end and
//! records it as one delivered job.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

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
///
/// Like a real printer it runs apart from whoever loads the spooler: on a thread and
/// runtime of its own, so its connections never queue behind a load generator's clients.
pub struct RawSink {
    port: u16,
    deliveries: Arc<Mutex<Vec<Delivery>>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl RawSink {
    /// Starts listening on a free port. Each delivery keeps its first `keep_head` bytes,
    /// enough to find a job marker without holding whole documents.
    pub fn start(keep_head: usize) -> Result<RawSink> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(HarnessError::io("binding the 9100 sink"))?;
        let port = listener
            .local_addr()
            .map_err(HarnessError::io("reading the sink's port"))?
            .port();
        listener
            .set_nonblocking(true)
            .map_err(HarnessError::io("making the sink's listener non-blocking"))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(HarnessError::io("starting the sink's runtime"))?;
        let listener = {
            let _registered_with = runtime.enter();
            TcpListener::from_std(listener)
                .map_err(HarnessError::io("registering the sink's listener"))?
        };
        let deliveries = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = oneshot::channel();
        let recorded = deliveries.clone();
        let thread = std::thread::Builder::new()
            .name("9100-sink".into())
            .spawn(move || {
                runtime.block_on(async move {
                    tokio::select! {
                        _ = accept_loop(listener, recorded, keep_head) => {}
                        _ = stopped => {}
                    }
                });
            })
            .map_err(HarnessError::io("starting the sink's thread"))?;
        Ok(RawSink {
            port,
            deliveries,
            stop: Some(stop),
            thread: Some(thread),
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
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
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
