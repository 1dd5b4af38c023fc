use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use printfleet_crds::{AccountingPolicySpec, PrintQueueSpec, PrinterSpec};

use super::*;

fn meta(name: &str, generation: i64) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        generation: Some(generation),
        ..ObjectMeta::default()
    }
}

fn queue(generation: i64) -> PrintQueue {
    PrintQueue {
        metadata: meta("lab", generation),
        spec: PrintQueueSpec {
            printers: vec!["p1".into()],
            ..PrintQueueSpec::default()
        },
        status: None,
    }
}

fn ready(conditions: &[Condition]) -> &Condition {
    conditions
        .iter()
        .find(|c| c.type_ == READY)
        .expect("a Ready condition")
}

#[test]
fn queue_naming_a_missing_printer_is_not_ready_and_says_which() {
    let status = queue_status(
        &queue(4),
        &Err(Unresolved::PrinterNotFound(vec!["p1".into()])),
        "office",
        3,
        Some(2),
        "2026-01-01T00:00:00Z",
    );
    let condition = ready(&status.conditions);
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_str()),
        ("False", "PrinterNotFound")
    );
    assert!(condition.message.contains("p1"), "{}", condition.message);
    assert_eq!(condition.observed_generation, Some(4));
    assert_eq!(status.observed_generation, Some(4));
    assert_eq!(status.shard.as_deref(), Some("printfleet-shard-3"));
    assert_eq!(
        status.endpoint.as_deref(),
        Some("ipp://printfleet.office.svc:631/ipp/print/lab")
    );
}

#[test]
fn queue_with_missing_policy_names_it() {
    let status = queue_status(
        &queue(1),
        &Err(Unresolved::PolicyNotFound("eur".into())),
        "o",
        0,
        None,
        "t",
    );
    let condition = ready(&status.conditions);
    assert_eq!(condition.reason, "AccountingPolicyNotFound");
    assert!(condition.message.contains("eur"));
}

#[test]
fn queue_is_ready_only_when_its_shard_has_an_available_pod() {
    let starting = queue_status(&queue(1), &Ok(()), "o", 0, Some(0), "t");
    assert_eq!(ready(&starting.conditions).reason, "ShardUnavailable");
    assert_eq!(ready(&starting.conditions).status, "False");
    let no_status_yet = queue_status(&queue(1), &Ok(()), "o", 0, None, "t");
    assert_eq!(ready(&no_status_yet.conditions).status, "False");
    let available = queue_status(&queue(1), &Ok(()), "o", 0, Some(1), "t");
    assert_eq!(ready(&available.conditions).status, "True");
}

#[test]
fn transition_time_moves_only_when_status_changes() {
    let mut q = queue(1);
    q.status = Some(queue_status(&q, &Ok(()), "o", 0, Some(1), "first"));
    let same = queue_status(&q, &Ok(()), "o", 0, Some(2), "second");
    assert_eq!(
        ready(&same.conditions).last_transition_time.as_deref(),
        Some("first")
    );
    let flipped = queue_status(&q, &Ok(()), "o", 0, Some(0), "third");
    assert_eq!(
        ready(&flipped.conditions).last_transition_time.as_deref(),
        Some("third")
    );
}

fn printer(uri: &str) -> Printer {
    Printer {
        metadata: meta("p1", 7),
        spec: PrinterSpec {
            uri: uri.into(),
            ..PrinterSpec::default()
        },
        status: None,
    }
}

fn condition_of<'a>(status: &'a PrinterStatus, type_: &str) -> (&'a str, &'a str) {
    let c = status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .expect("condition present");
    (c.status.as_str(), c.reason.as_str())
}

#[test]
fn printer_status_reflects_the_probe() {
    let p = printer("ipp://x/ipp/print");
    let idle = printer_status(
        &p,
        &ProbeOutcome::Ipp {
            state: "idle".into(),
            reasons: vec!["none".into()],
            supplies: vec![SupplyLevel {
                name: "black".into(),
                level: 40,
            }],
        },
        "t",
    );
    assert_eq!(condition_of(&idle, REACHABLE), ("True", "IppResponded"));
    assert_eq!(condition_of(&idle, READY), ("True", "PrinterReady"));
    assert_eq!(idle.printer_state.as_deref(), Some("idle"));
    assert_eq!(idle.supplies[0].level, 40);
    assert_eq!(idle.observed_generation, Some(7));

    let stopped = ProbeOutcome::Ipp {
        state: "stopped".into(),
        reasons: vec!["media-empty-error".into()],
        supplies: vec![],
    };
    let status = printer_status(&p, &stopped, "t");
    assert_eq!(condition_of(&status, READY), ("False", "PrinterStopped"));
    assert_eq!(stopped.warning().map(|w| w.0), Some("PrinterStopped"));

    let down = ProbeOutcome::Unreachable("connection refused".into());
    let status = printer_status(&p, &down, "t");
    assert_eq!(
        condition_of(&status, REACHABLE),
        ("False", "PrinterUnreachable")
    );
    assert_eq!(
        condition_of(&status, READY),
        ("False", "PrinterUnreachable")
    );
    assert_eq!(down.warning().map(|w| w.0), Some("PrinterUnreachable"));

    let unauthorized = ProbeOutcome::Unauthorized("HTTP 401".into());
    assert_eq!(
        condition_of(&printer_status(&p, &unauthorized, "t"), READY).1,
        "BadCredentials"
    );
    assert_eq!(ProbeOutcome::Connected.warning(), None);
    assert_eq!(
        condition_of(
            &printer_status(&p, &ProbeOutcome::Connected, "t"),
            REACHABLE
        ),
        ("True", "Connected")
    );
}

#[test]
fn policy_status_counts_queues_and_flags_invalid_specs() {
    let mut policy = AccountingPolicy {
        metadata: meta("eur", 2),
        spec: AccountingPolicySpec {
            currency: "EUR".into(),
            ..AccountingPolicySpec::default()
        },
        status: None,
    };
    let status = policy_status(&policy, 3, "t");
    assert_eq!(status.queues, Some(3));
    assert_eq!(ready(&status.conditions).status, "True");
    assert_eq!(status.observed_generation, Some(2));
    policy.spec.currency = "euro".into();
    let status = policy_status(&policy, 0, "t");
    assert_eq!(ready(&status.conditions).reason, "InvalidSpec");
    assert!(ready(&status.conditions).message.contains("spec.currency"));
}
