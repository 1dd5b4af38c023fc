//! Shard planning: which spooler shard serves each queue of a namespace.
//!
//! Queues are placed by rendezvous (highest-random-weight) hashing: every queue scores
//! every shard with a hash of (queue, shard) and goes to the highest score. Adding a shard
//! only takes the queues for which the new shard scores highest (about 1/(N+1) of them),
//! and a queue never moves between two shards that exist before and after.

use std::collections::BTreeMap;

use ring::digest::{SHA256, digest};

/// The operator's settings that size shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardSettings {
    /// How many queues one shard should serve before another shard is added.
    pub queues_per_shard: u32,
    /// Fewest shards per namespace that has queues.
    pub min_shards: u32,
    /// Most shards per namespace, whatever the number of queues.
    pub max_shards: u32,
    /// Spooler pods per shard (one dispatches, the others stand by and accept submissions).
    pub replicas_per_shard: u32,
}

impl Default for ShardSettings {
    fn default() -> Self {
        Self {
            queues_per_shard: 50,
            min_shards: 1,
            max_shards: 16,
            replicas_per_shard: 2,
        }
    }
}

/// How many shards a namespace with `queues` queues gets: enough for `queues_per_shard`
/// each, within the bounds; none when it has no queue.
pub fn shard_count(queues: usize, settings: &ShardSettings) -> u32 {
    if queues == 0 {
        return 0;
    }
    let per_shard = u64::from(settings.queues_per_shard.max(1));
    let wanted = u32::try_from((queues as u64).div_ceil(per_shard)).unwrap_or(u32::MAX);
    let max = settings.max_shards.max(1);
    wanted.clamp(settings.min_shards.clamp(1, max), max)
}

/// The shard (0-based index below `shards`) that serves `queue`; 0 when `shards` is 0.
pub fn shard_of(queue: &str, shards: u32) -> u32 {
    (0..shards)
        .max_by_key(|shard| (score(queue, *shard), std::cmp::Reverse(*shard)))
        .unwrap_or(0)
}

/// A stable pseudo-random weight of (queue, shard): the first 8 bytes of SHA-256, so the
/// placement never changes across operator versions or architectures.
fn score(queue: &str, shard: u32) -> u64 {
    let mut input = Vec::with_capacity(queue.len() + 5);
    input.extend_from_slice(queue.as_bytes());
    input.push(0);
    input.extend_from_slice(&shard.to_be_bytes());
    let hash = digest(&SHA256, &input);
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_ref()[..8]);
    u64::from_be_bytes(first)
}

/// Every shard of a namespace with the queues it serves (sorted), shards 0..count.
pub fn plan<'a>(
    queues: impl IntoIterator<Item = &'a str>,
    settings: &ShardSettings,
) -> BTreeMap<u32, Vec<String>> {
    let mut queues: Vec<&str> = queues.into_iter().collect();
    queues.sort_unstable();
    queues.dedup();
    let shards = shard_count(queues.len(), settings);
    let mut plan: BTreeMap<u32, Vec<String>> = (0..shards).map(|s| (s, Vec::new())).collect();
    for queue in queues {
        plan.entry(shard_of(queue, shards))
            .or_default()
            .push(queue.to_owned());
    }
    plan
}

/// The name of a shard's objects (Deployment, ConfigMap, ...): `printfleet-shard-<n>`.
pub fn shard_name(shard: u32) -> String {
    format!("printfleet-shard-{shard}")
}

/// The shard index in a name made by [`shard_name`].
pub fn parse_shard_name(name: &str) -> Option<u32> {
    name.strip_prefix("printfleet-shard-")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(per_shard: u32, min: u32, max: u32) -> ShardSettings {
        ShardSettings {
            queues_per_shard: per_shard,
            min_shards: min,
            max_shards: max,
            replicas_per_shard: 2,
        }
    }

    #[test]
    fn shard_count_follows_queues_within_bounds() {
        let s = settings(10, 2, 5);
        assert_eq!(shard_count(0, &s), 0);
        assert_eq!(shard_count(1, &s), 2, "min applies");
        assert_eq!(shard_count(25, &s), 3);
        assert_eq!(shard_count(30, &s), 3);
        assert_eq!(shard_count(31, &s), 4);
        assert_eq!(shard_count(10_000, &s), 5, "max applies");
        // Nonsense settings still give a usable count.
        assert_eq!(shard_count(7, &settings(0, 0, 0)), 1);
        assert_eq!(shard_count(7, &settings(1, 9, 3)), 3);
    }

    #[test]
    fn placement_is_stable_and_in_range() {
        for shards in 1..20 {
            for i in 0..200 {
                let queue = format!("queue-{i}");
                let shard = shard_of(&queue, shards);
                assert!(shard < shards);
                assert_eq!(shard, shard_of(&queue, shards));
            }
        }
        assert_eq!(shard_of("anything", 0), 0);
    }

    #[test]
    fn plan_lists_every_shard_and_every_queue_once() {
        let names: Vec<String> = (0..95).map(|i| format!("q{i}")).collect();
        let plan = plan(names.iter().map(String::as_str), &settings(10, 1, 8));
        assert_eq!(
            plan.keys().copied().collect::<Vec<_>>(),
            (0..8).collect::<Vec<_>>()
        );
        let mut placed: Vec<&String> = plan.values().flatten().collect();
        placed.sort();
        let mut expected: Vec<&String> = names.iter().collect();
        expected.sort();
        assert_eq!(placed, expected);
        for shard_queues in plan.values() {
            assert!(
                !shard_queues.is_empty(),
                "95 queues over 8 shards leave none empty"
            );
        }
    }

    /// Property: growing from N to N+1 shards moves only queues onto the new shard, and
    /// about 1/(N+1) of them.
    #[test]
    fn adding_a_shard_moves_about_one_in_n_plus_one_queues_to_the_new_shard_only() {
        let queues: Vec<String> = (0..4000)
            .map(|i| format!("ns-{}/queue-{i}", i % 7))
            .collect();
        for old in 1..12u32 {
            let new = old + 1;
            let mut moved = 0usize;
            for queue in &queues {
                let before = shard_of(queue, old);
                let after = shard_of(queue, new);
                if before != after {
                    assert_eq!(
                        after, old,
                        "{queue} moved between old shards {before} -> {after}"
                    );
                    moved += 1;
                }
            }
            let expected = queues.len() as f64 / f64::from(new);
            let deviation = (moved as f64 - expected).abs() / expected;
            assert!(
                deviation < 0.15,
                "{old}->{new} shards moved {moved} queues, expected about {expected:.0}"
            );
        }
    }

    #[test]
    fn shard_names_round_trip() {
        assert_eq!(shard_name(3), "printfleet-shard-3");
        assert_eq!(parse_shard_name(&shard_name(12)), Some(12));
        assert_eq!(parse_shard_name("printfleet-shard-x"), None);
        assert_eq!(parse_shard_name("other-1"), None);
    }
}
