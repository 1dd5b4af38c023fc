//! Prometheus metrics on `/metrics`.
//!
//! Label values are bounded: queues and printers come from the config, operations and
//! outcomes are fixed keyword sets, currencies come from the policies. User labels (on the
//! accounting counters only) follow the queue's privacy mode — the name, its salted hash,
//! or the empty value (which Prometheus treats as no label) when omitted — and at most
//! [`MAX_USER_LABELS`] distinct users get their own label per process: later users are
//! counted under [`OTHER_USERS`], so totals stay right while the series count is capped.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric the spooler exports, registered in one registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// IPP requests by operation name and status keyword.
    pub ipp_requests: IntCounterVec,
    /// Jobs accepted by queue.
    pub jobs_accepted: IntCounterVec,
    /// Finished jobs by queue and outcome (`completed`, `aborted`, `canceled`).
    pub jobs_finished: IntCounterVec,
    /// Delivery attempts that failed and will be retried, by printer.
    pub dispatch_retries: IntCounterVec,
    /// Seconds from request start to the client's acknowledgement, by operation.
    pub submission_seconds: HistogramVec,
    /// Seconds from acceptance to completion, by queue.
    pub completion_seconds: HistogramVec,
    /// Unfinished jobs by queue.
    pub queue_depth: IntGaugeVec,
    /// 1 when the printer answered its last probe and accepts jobs.
    pub printer_up: IntGaugeVec,
    /// Impressions of completed jobs (the printer's count, else the estimate), by queue,
    /// printer, user and color (`color` / `mono`).
    pub impressions: IntCounterVec,
    /// Sheets of completed jobs, labelled as `impressions`.
    pub sheets: IntCounterVec,
    /// What completed jobs cost, in minor units of the currency (cents for EUR), by queue,
    /// user and currency.
    pub cost: IntCounterVec,
    users: Arc<UserLabels>,
}

/// Most distinct user label values per process.
pub const MAX_USER_LABELS: usize = 1000;
/// The user label of every user beyond [`MAX_USER_LABELS`].
pub const OTHER_USERS: &str = "other";

/// The user label values handed out so far.
#[derive(Default)]
struct UserLabels {
    seen: Mutex<HashSet<String>>,
}

impl UserLabels {
    fn bounded(&self, label: String) -> String {
        if label.is_empty() {
            return label;
        }
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.contains(&label) {
            return label;
        }
        if seen.len() < MAX_USER_LABELS {
            seen.insert(label.clone());
            return label;
        }
        OTHER_USERS.to_owned()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)
                .expect("static metric definition");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric name");
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g =
                IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric name");
            g
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
                .expect("static metric definition");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric name");
            h
        };
        let fast = vec![
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ];
        let slow = vec![0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0];
        Metrics {
            ipp_requests: counter(
                "printfleet_ipp_requests_total",
                "IPP requests by operation and status.",
                &["operation", "status"],
            ),
            jobs_accepted: counter(
                "printfleet_jobs_accepted_total",
                "Jobs accepted, by queue.",
                &["queue"],
            ),
            jobs_finished: counter(
                "printfleet_jobs_finished_total",
                "Jobs that reached a final state, by queue and outcome.",
                &["queue", "outcome"],
            ),
            dispatch_retries: counter(
                "printfleet_dispatch_retries_total",
                "Failed delivery attempts that will be retried, by printer.",
                &["printer"],
            ),
            submission_seconds: histogram(
                "printfleet_submission_duration_seconds",
                "Time from request start to acknowledgement, by IPP operation.",
                &["operation"],
                fast,
            ),
            completion_seconds: histogram(
                "printfleet_job_completion_duration_seconds",
                "Time from acceptance to completion, by queue.",
                &["queue"],
                slow,
            ),
            queue_depth: gauge(
                "printfleet_queue_depth",
                "Unfinished jobs, by queue.",
                &["queue"],
            ),
            printer_up: gauge(
                "printfleet_printer_up",
                "1 when the printer answered its last probe and accepts jobs.",
                &["printer"],
            ),
            impressions: counter(
                "printfleet_impressions_total",
                "Impressions of completed jobs, by queue, printer, user and color.",
                &["queue", "printer", "user", "color"],
            ),
            sheets: counter(
                "printfleet_sheets_total",
                "Sheets of completed jobs, by queue, printer, user and color.",
                &["queue", "printer", "user", "color"],
            ),
            cost: counter(
                "printfleet_cost_minor_units_total",
                "What completed jobs cost, in minor units of the currency, by queue, user and currency.",
                &["queue", "user", "currency"],
            ),
            users: Arc::default(),
            registry,
        }
    }

    /// The `user` label value for a user's privacy label (`None`: omitted, the empty value),
    /// within the cardinality bound.
    pub fn user_label(&self, label: Option<String>) -> String {
        self.users.bounded(label.unwrap_or_default())
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        // Encoding into a Vec cannot fail for text; an error would be a bug in a metric name.
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(%error, "encoding metrics");
        }
        String::from_utf8_lossy(&buffer).into_owned()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_labels_are_bounded() {
        let metrics = Metrics::new();
        for n in 0..MAX_USER_LABELS {
            assert_eq!(metrics.user_label(Some(format!("u{n}"))), format!("u{n}"));
        }
        assert_eq!(metrics.user_label(Some("late".into())), OTHER_USERS);
        assert_eq!(metrics.user_label(Some("u7".into())), "u7");
        assert_eq!(metrics.user_label(None), "");
    }

    #[test]
    fn accounting_counters_render() {
        let metrics = Metrics::new();
        let user = metrics.user_label(Some("alice".into()));
        metrics
            .cost
            .with_label_values(&["office", user.as_str(), "EUR"])
            .inc_by(135);
        let text = metrics.render();
        assert!(
            text.contains(
                r#"printfleet_cost_minor_units_total{currency="EUR",queue="office",user="alice"} 135"#
            ),
            "{text}"
        );
    }
}
