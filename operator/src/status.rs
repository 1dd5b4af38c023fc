//! Status computation: what each object's `status` should say, as pure functions.

use printfleet_crds::policy::AccountingPolicyStatus;
use printfleet_crds::printer::SupplyLevel;
use printfleet_crds::validate::validate_policy;
use printfleet_crds::{
    AccountingPolicy, Condition, PrintQueue, PrintQueueStatus, Printer, PrinterStatus,
};

use crate::desired::{Unresolved, join_errors, queue_endpoint};
use crate::shard::shard_name;

pub const READY: &str = "Ready";
pub const REACHABLE: &str = "Reachable";

fn condition(
    type_: &str,
    ok: Option<bool>,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    let status = match ok {
        Some(true) => "True",
        Some(false) => "False",
        None => "Unknown",
    };
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        last_transition_time: None,
        observed_generation: generation,
    }
}

/// Stamps `next` with transition times: a condition whose status did not change keeps its
/// previous `lastTransitionTime`, others get `now`.
pub fn with_transition_times(
    previous: &[Condition],
    next: Vec<Condition>,
    now: &str,
) -> Vec<Condition> {
    next.into_iter()
        .map(|mut condition| {
            let unchanged = previous
                .iter()
                .find(|old| old.type_ == condition.type_ && old.status == condition.status);
            condition.last_transition_time = unchanged
                .and_then(|old| old.last_transition_time.clone())
                .or_else(|| Some(now.to_owned()));
            condition
        })
        .collect()
}

/// The queue's status: `Ready` says whether users can print to it, and why not.
///
/// `available_replicas` is what the shard's Deployment reports (`None` before it has a
/// status).
pub fn queue_status(
    queue: &PrintQueue,
    resolution: &Result<(), Unresolved>,
    namespace: &str,
    shard: u32,
    available_replicas: Option<i32>,
    now: &str,
) -> PrintQueueStatus {
    let generation = queue.metadata.generation;
    let name = queue.metadata.name.as_deref().unwrap_or_default();
    let shard_name = shard_name(shard);
    let ready = match resolution {
        Err(Unresolved::Invalid(errors)) => condition(
            READY,
            Some(false),
            "InvalidSpec",
            errors.clone(),
            generation,
        ),
        Err(Unresolved::PrinterNotFound(names)) => condition(
            READY,
            Some(false),
            "PrinterNotFound",
            format!(
                "Printer {} not found in namespace {namespace}",
                names.join(", ")
            ),
            generation,
        ),
        Err(Unresolved::PrinterInvalid(names)) => condition(
            READY,
            Some(false),
            "PrinterInvalid",
            format!("Printer {} has an invalid spec", names.join(", ")),
            generation,
        ),
        Err(Unresolved::PolicyNotFound(policy)) => condition(
            READY,
            Some(false),
            "AccountingPolicyNotFound",
            format!("AccountingPolicy {policy} not found in namespace {namespace}"),
            generation,
        ),
        Err(Unresolved::PolicyInvalid(policy)) => condition(
            READY,
            Some(false),
            "AccountingPolicyInvalid",
            format!("AccountingPolicy {policy} has an invalid spec"),
            generation,
        ),
        Ok(()) if available_replicas.unwrap_or(0) > 0 => condition(
            READY,
            Some(true),
            "ShardAvailable",
            format!("served by {shard_name}"),
            generation,
        ),
        Ok(()) => condition(
            READY,
            Some(false),
            "ShardUnavailable",
            format!("no spooler pod of {shard_name} is available yet"),
            generation,
        ),
    };
    let previous = queue.status.as_ref();
    PrintQueueStatus {
        conditions: with_transition_times(
            previous.map_or(&[][..], |s| &s.conditions),
            vec![ready],
            now,
        ),
        shard: Some(shard_name),
        endpoint: Some(queue_endpoint(namespace, name)),
        // Read from the spooler by the caller: what this function cannot know.
        depth: None,
        observed_generation: generation,
    }
}

/// What probing a printer found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The printer answered Get-Printer-Attributes.
    Ipp {
        state: String,
        reasons: Vec<String>,
        supplies: Vec<SupplyLevel>,
    },
    /// A non-IPP printer accepted a TCP connection.
    Connected,
    /// A `file://` printer: a directory inside the spooler pods, out of the operator's reach.
    LocalDirectory,
    /// No connection, or no answer in time.
    Unreachable(String),
    /// The printer refused the credentials.
    Unauthorized(String),
    /// The TLS handshake failed (certificate, protocol).
    TlsFailure(String),
    /// The printer answered something that is not IPP.
    ProtocolError(String),
    /// The spec is invalid: nothing was probed.
    InvalidSpec(String),
}

impl ProbeOutcome {
    /// The Warning Event a human should see, as (reason, note), if any.
    pub fn warning(&self) -> Option<(&'static str, String)> {
        match self {
            Self::Unreachable(why) => Some(("PrinterUnreachable", why.clone())),
            Self::Unauthorized(why) => Some(("BadCredentials", why.clone())),
            Self::TlsFailure(why) => Some(("TlsFailure", why.clone())),
            Self::ProtocolError(why) => Some(("ProtocolError", why.clone())),
            Self::InvalidSpec(why) => Some(("InvalidSpec", why.clone())),
            Self::Ipp { state, reasons, .. } if state == "stopped" => Some((
                "PrinterStopped",
                format!("printer-state-reasons: {}", reasons.join(", ")),
            )),
            _ => None,
        }
    }
}

/// The printer's status after a probe.
pub fn printer_status(printer: &Printer, outcome: &ProbeOutcome, now: &str) -> PrinterStatus {
    let generation = printer.metadata.generation;
    let previous = printer.status.clone().unwrap_or_default();
    let reachable =
        |ok, reason: &str, message: String| condition(REACHABLE, ok, reason, message, generation);
    let ready =
        |ok, reason: &str, message: String| condition(READY, ok, reason, message, generation);
    let (conditions, state, reasons, supplies) = match outcome {
        ProbeOutcome::Ipp {
            state,
            reasons,
            supplies,
        } => {
            let usable = state != "stopped";
            let ready_condition = if usable {
                ready(Some(true), "PrinterReady", format!("printer-state {state}"))
            } else {
                ready(
                    Some(false),
                    "PrinterStopped",
                    format!("printer-state-reasons: {}", reasons.join(", ")),
                )
            };
            (
                vec![
                    reachable(
                        Some(true),
                        "IppResponded",
                        "answered Get-Printer-Attributes".into(),
                    ),
                    ready_condition,
                ],
                Some(state.clone()),
                reasons.clone(),
                supplies.clone(),
            )
        }
        ProbeOutcome::Connected => (
            vec![
                reachable(Some(true), "Connected", "accepted a TCP connection".into()),
                ready(
                    Some(true),
                    "Connected",
                    "accepts connections; the protocol reports no state".into(),
                ),
            ],
            None,
            Vec::new(),
            Vec::new(),
        ),
        ProbeOutcome::LocalDirectory => (
            vec![
                reachable(
                    Some(true),
                    "LocalDirectory",
                    "a directory inside the spooler pods".into(),
                ),
                ready(
                    Some(true),
                    "LocalDirectory",
                    "a directory inside the spooler pods".into(),
                ),
            ],
            None,
            Vec::new(),
            Vec::new(),
        ),
        ProbeOutcome::InvalidSpec(why) => (
            vec![
                reachable(None, "InvalidSpec", why.clone()),
                ready(Some(false), "InvalidSpec", why.clone()),
            ],
            None,
            Vec::new(),
            Vec::new(),
        ),
        failure => {
            let (reason, why) = failure.warning().unwrap_or(("ProbeFailed", String::new()));
            (
                vec![
                    reachable(Some(false), reason, why.clone()),
                    ready(Some(false), reason, why),
                ],
                None,
                Vec::new(),
                Vec::new(),
            )
        }
    };
    PrinterStatus {
        conditions: with_transition_times(&previous.conditions, conditions, now),
        printer_state: state,
        printer_state_reasons: reasons,
        supplies,
        observed_generation: generation,
    }
}

/// The policy's status: whether it is valid and how many queues use it.
pub fn policy_status(
    policy: &AccountingPolicy,
    queues_using: usize,
    now: &str,
) -> AccountingPolicyStatus {
    let generation = policy.metadata.generation;
    let ready = match validate_policy(&policy.spec) {
        Ok(()) => condition(
            READY,
            Some(true),
            "Valid",
            format!("used by {queues_using} queue(s)"),
            generation,
        ),
        Err(errors) => condition(
            READY,
            Some(false),
            "InvalidSpec",
            join_errors(&errors),
            generation,
        ),
    };
    let previous = policy
        .status
        .as_ref()
        .map_or(&[][..], |s| &s.conditions[..]);
    AccountingPolicyStatus {
        conditions: with_transition_times(previous, vec![ready], now),
        queues: Some(i64::try_from(queues_using).unwrap_or(i64::MAX)),
        observed_generation: generation,
    }
}

#[cfg(test)]
mod tests;
