//! Dispatch: one worker per printer takes jobs from the store and sends them on.

use std::sync::Arc;

use tokio::sync::{Notify, broadcast};

use crate::job::JobId;

/// What the rest of the spooler uses to poke the dispatcher.
#[derive(Clone)]
pub struct DispatchHandle {
    wake: Arc<Notify>,
    cancels: broadcast::Sender<JobId>,
}

impl DispatchHandle {
    pub fn new() -> DispatchHandle {
        let (cancels, _) = broadcast::channel(256);
        DispatchHandle {
            wake: Arc::new(Notify::new()),
            cancels,
        }
    }

    /// A job became ready (accepted, released, queue resumed): workers look again.
    pub fn wake(&self) {
        self.wake.notify_waiters();
    }

    /// A job was canceled: a worker sending it stops.
    pub fn cancel(&self, id: JobId) {
        // No receiver means no worker is running: nothing to stop.
        let _ = self.cancels.send(id);
    }

    /// Wait for `wake`.
    pub fn woken(&self) -> impl std::future::Future<Output = ()> + '_ {
        self.wake.notified()
    }

    /// A stream of canceled job ids.
    pub fn subscribe_cancels(&self) -> broadcast::Receiver<JobId> {
        self.cancels.subscribe()
    }
}

impl Default for DispatchHandle {
    fn default() -> Self {
        DispatchHandle::new()
    }
}
