//! Prometheus metrics on `/metrics`.
//!
//! Label values are bounded: queues and printers come from the config, operations and
//! outcomes are fixed keyword sets.

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
            registry,
        }
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
