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

/// A figure over several rounds of a bench: its median and its range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// The median (the mean of the middle two for an even count), least and greatest of
/// `values`; `None` when there are none.
pub fn spread(values: &[f64]) -> Option<Spread> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let (&min, &max) = (sorted.first()?, sorted.last()?);
    let middle = sorted.len() / 2;
    let median = if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    };
    Some(Spread { median, min, max })
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

/// CPU time (user + system) process `pid` has used so far, from /proc/PID/stat.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, ticks) = parse_stat(&stat)?;
    // /proc reports in USER_HZ, 100 per second on Linux whatever the kernel's HZ.
    Some(ticks as f64 / 100.0)
}

/// CPU time of process `root` and every live process below it (PostgreSQL's backends).
pub fn tree_cpu_seconds(root: u32) -> f64 {
    let mut parents = std::collections::HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some((parent, _)) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .as_deref()
                .and_then(parse_stat)
            {
                parents.insert(pid, parent);
            }
        }
    }
    let descends = |mut pid: u32| loop {
        if pid == root {
            return true;
        }
        match parents.get(&pid) {
            Some(&parent) if parent != 0 && parent != pid => pid = parent,
            _ => return false,
        }
    };
    parents
        .keys()
        .filter(|pid| descends(**pid))
        .filter_map(|pid| cpu_seconds(*pid))
        .sum()
}

/// (parent pid, utime + stime ticks) from a /proc/PID/stat line. The command name (field
/// 2) may hold spaces and parentheses: fields are counted from its closing parenthesis.
fn parse_stat(stat: &str) -> Option<(u32, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state (3), ppid (4), ... utime (14), stime (15).
    let parent = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((parent, utime + stime))
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
    fn median_and_range_of_rounds() {
        assert_eq!(
            spread(&[3.0, 1.0, 2.0]),
            Some(Spread {
                median: 2.0,
                min: 1.0,
                max: 3.0
            })
        );
        assert_eq!(
            spread(&[4.0, 1.0, 2.0, 10.0]),
            Some(Spread {
                median: 3.0,
                min: 1.0,
                max: 10.0
            })
        );
        assert_eq!(
            spread(&[5.0]),
            Some(Spread {
                median: 5.0,
                min: 5.0,
                max: 5.0
            })
        );
        assert_eq!(spread(&[]), None);
    }

    #[test]
    fn cpu_ticks_and_parent_from_proc_stat() {
        let stat = "4242 (post gres: (x)) S 4200 4242 4242 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 1 0 1 0 0";
        assert_eq!(parse_stat(stat), Some((4200, 300)));
        assert_eq!(parse_stat("garbage"), None);
        let own = cpu_seconds(std::process::id()).expect("this process's CPU time");
        assert!(tree_cpu_seconds(std::process::id()) >= own);
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
