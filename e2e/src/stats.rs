//! Figures for the load generator's report.

use std::time::Duration;

/// The `p`-th percentile (0..=100) of `sorted` by nearest rank; `None` when empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// A memory figure in KiB of process `pid` from /proc/PID/status: `VmRSS` (resident now)
/// or `VmHWM` (peak resident).
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_field(&status, field)
}

fn parse_status_field(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&samples, 50.0), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&samples, 99.0), Some(Duration::from_millis(99)));
        assert_eq!(
            percentile(&samples, 100.0),
            Some(Duration::from_millis(100))
        );
        assert_eq!(
            percentile(&samples[..1], 99.0),
            Some(Duration::from_millis(1))
        );
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn vm_rss_from_proc_status() {
        let status = "Name:\tx\nVmHWM:\t   22222 kB\nVmRSS:\t   12345 kB\nThreads: 4\n";
        assert_eq!(parse_status_field(status, "VmRSS"), Some(12345));
        assert_eq!(parse_status_field(status, "VmHWM"), Some(22222));
        assert_eq!(parse_status_field("Name:\tx\n", "VmRSS"), None);
        assert!(proc_status_kib(std::process::id(), "VmRSS").is_some_and(|kib| kib > 0));
    }
}
