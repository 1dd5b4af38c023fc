//! `PrintQueue`: what users print to.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, SecretKeyRef};

/// A print queue: a name users print to, backed by one printer or a pool.
// clippy takes the repeated `type_ = ...` of the printcolumns for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "printfleet.io",
    version = "v1alpha1",
    kind = "PrintQueue",
    namespaced,
    status = "PrintQueueStatus",
    shortname = "pq",
    printcolumn(name = "Printers", type_ = "string", json_path = ".spec.printers"),
    printcolumn(name = "Shard", type_ = "string", json_path = ".status.shard"),
    printcolumn(name = "Depth", type_ = "integer", json_path = ".status.depth"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PrintQueueSpec {
    /// Printer names; more than one makes a pool whose jobs fail over to a healthy member.
    #[schemars(length(min = 1), inner(regex(pattern = crate::validate::NAME_PATTERN)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub printers: Vec<String>,
    /// Name of the AccountingPolicy that prices and limits this queue's jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::validate::NAME_PATTERN))]
    pub accounting_policy: Option<String>,
    /// Human description, shown as `printer-info`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Shown as `printer-location`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Who may print and who may manage others' jobs.
    #[serde(default)]
    pub access: AccessRules,
    /// Secure print: every job is held until its owner (or an operator) releases it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hold_until_release: bool,
    /// Job template defaults for jobs that do not say.
    #[serde(default)]
    pub defaults: JobDefaults,
    /// How long finished jobs stay in the history.
    #[serde(default)]
    pub retention: Retention,
    /// Largest document accepted, in bytes (the spooler's `--max-document-size` otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_document_bytes: Option<u64>,
}

/// How users are identified and what they may do.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::schema::access_rules_rules)]
pub struct AccessRules {
    /// `none` trusts `requesting-user-name`; `basic` requires HTTP Basic authentication.
    #[serde(default)]
    pub authentication: AuthenticationMode,
    /// Secret key with the credentials file (`user:bcrypt-hash[:group,group]` lines),
    /// required when `authentication` is `basic`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<SecretKeyRef>,
    /// Users allowed to print; empty with no groups means everyone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_users: Vec<String>,
    /// Groups allowed to print (from the credentials file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_groups: Vec<String>,
    /// Users who may see, cancel, hold and release every job and pause the queue.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operators: Vec<String>,
}

/// How a queue authenticates its users.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthenticationMode {
    /// Trust `requesting-user-name` (as CUPS does for local queues).
    #[default]
    None,
    /// HTTP Basic against the credentials file.
    Basic,
}

/// Defaults applied to jobs that do not carry the attribute.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct JobDefaults {
    /// `one-sided`, `two-sided-long-edge` or `two-sided-short-edge`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = crate::validate::SIDES_VALUES))]
    pub sides: Option<String>,
    /// `print-color-mode`: `monochrome`, `color` or `auto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = crate::validate::COLOR_MODE_VALUES))]
    pub color_mode: Option<String>,
    /// PWG media name, e.g. `iso_a4_210x297mm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::validate::MEDIA_PATTERN))]
    pub media: Option<String>,
}

/// Job history retention.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    /// Finished jobs kept in the history at most this many seconds (default 7 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_seconds: Option<u64>,
    /// At most this many finished jobs per queue (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_jobs: Option<u32>,
}

/// What the operator last saw of the queue.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PrintQueueStatus {
    /// `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Shard serving the queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    /// IPP URI users print to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Jobs not yet finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<i64>,
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
