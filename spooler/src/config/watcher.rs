//! Reloading the configuration when its file changes.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::Config;

/// How often the file is read.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Watches `path` every [`POLL_INTERVAL`]; see [`watch_every`].
pub fn watch(
    path: PathBuf,
    initial: Arc<Config>,
) -> (watch::Receiver<Arc<Config>>, JoinHandle<()>) {
    watch_every(path, initial, POLL_INTERVAL)
}

/// Publishes a new [`Config`] whenever the file at `path` changes and still parses and
/// validates; an invalid file is logged and the config in force stays. The file is compared
/// by content hash, not modification time, so the symlink swap with which Kubernetes updates
/// a mounted ConfigMap is seen. The task ends when every receiver is gone.
pub fn watch_every(
    path: PathBuf,
    initial: Arc<Config>,
    interval: Duration,
) -> (watch::Receiver<Arc<Config>>, JoinHandle<()>) {
    let (sender, receiver) = watch::channel(initial);
    let task = tokio::spawn(async move {
        let origin = path.display().to_string();
        let mut last_seen: Option<u64> = None;
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if sender.is_closed() {
                return;
            }
            let bytes = match tokio::fs::read(&path).await {
                Ok(bytes) => bytes,
                Err(error) => {
                    tracing::warn!(path = %origin, %error, "cannot read the configuration; keeping the one in force");
                    continue;
                }
            };
            let hash = content_hash(&bytes);
            if last_seen == Some(hash) {
                continue;
            }
            last_seen = Some(hash);
            let parsed = match String::from_utf8(bytes) {
                Ok(text) => Config::parse(&text, &origin),
                Err(_) => {
                    tracing::error!(path = %origin, "the configuration is not UTF-8; keeping the one in force");
                    continue;
                }
            };
            match parsed {
                Ok(config) if config == **sender.borrow() => {}
                Ok(config) => {
                    tracing::info!(
                        path = %origin,
                        printers = config.printers.len(),
                        queues = config.queues.len(),
                        policies = config.policies.len(),
                        "configuration reloaded"
                    );
                    sender.send_replace(Arc::new(config));
                }
                Err(errors) => {
                    tracing::error!(path = %origin, %errors, "the new configuration is invalid; keeping the one in force");
                }
            }
        }
    });
    (receiver, task)
}

fn content_hash(bytes: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}
