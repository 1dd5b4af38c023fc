//! The operator's own Prometheus metrics: reconciles, failures and durations by kind.

use std::time::Instant;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    reconciles: IntCounterVec,
    failures: IntCounterVec,
    duration: HistogramVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "printfleet_operator_reconciles_total",
                "Reconciles started, by kind",
            ),
            &["kind"],
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "printfleet_operator_reconcile_failures_total",
                "Reconciles that failed, by kind and error",
            ),
            &["kind", "error"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "printfleet_operator_reconcile_duration_seconds",
                "Time spent in one reconcile, by kind",
            )
            .buckets(vec![0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 15.0]),
            &["kind"],
        )?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(Self {
            registry,
            reconciles,
            failures,
            duration,
        })
    }

    /// Counts a reconcile of `kind`; its duration is observed when the guard drops.
    pub fn reconcile(&self, kind: &str) -> ReconcileTimer {
        self.reconciles.with_label_values(&[kind]).inc();
        ReconcileTimer {
            histogram: self.duration.with_label_values(&[kind]),
            start: Instant::now(),
        }
    }

    pub fn failure(&self, kind: &str, error: &str) {
        self.failures.with_label_values(&[kind, error]).inc();
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let encoder = prometheus::TextEncoder::new();
        encoder
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|error| format!("# encoding metrics failed: {error}\n"))
    }
}

pub struct ReconcileTimer {
    histogram: prometheus::Histogram,
    start: Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_times_reconciles_by_kind() {
        let metrics = Metrics::new().expect("metrics register");
        drop(metrics.reconcile("PrintQueue"));
        drop(metrics.reconcile("PrintQueue"));
        metrics.failure("Printer", "kube");
        let text = metrics.render();
        assert!(
            text.contains(r#"printfleet_operator_reconciles_total{kind="PrintQueue"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"printfleet_operator_reconcile_failures_total{error="kube",kind="Printer"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"printfleet_operator_reconcile_duration_seconds_count{kind="PrintQueue"} 2"#
            ),
            "{text}"
        );
    }
}
