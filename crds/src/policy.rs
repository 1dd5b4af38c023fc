//! `AccountingPolicy`: prices and limits.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::Condition;

/// How jobs on the queues that use this policy are priced and limited.
///
/// Money is written as decimal strings (`"0.05"`) and kept in integer minor units.
// clippy takes the repeated `type_ = ...` of the printcolumns for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "printfleet.io",
    version = "v1alpha1",
    kind = "AccountingPolicy",
    namespaced,
    status = "AccountingPolicyStatus",
    shortname = "ap",
    printcolumn(name = "Currency", type_ = "string", json_path = ".spec.currency"),
    printcolumn(name = "Queues", type_ = "integer", json_path = ".status.queues"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::schema::policy_spec_rules)]
pub struct AccountingPolicySpec {
    /// ISO 4217 currency code, e.g. `EUR`.
    #[schemars(regex(pattern = crate::validate::CURRENCY_PATTERN))]
    pub currency: String,
    /// IANA time zone in which quota periods start, e.g. `Europe/Berlin` (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::validate::TIME_ZONE_PATTERN))]
    pub time_zone: Option<String>,
    /// Prices per impression and per job.
    #[serde(default)]
    pub prices: Prices,
    /// Limits per user and per group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub quotas: Vec<Quota>,
    /// Billing codes (`job-account-id`) jobs must or may carry.
    #[serde(default)]
    pub billing_codes: BillingCodes,
    /// How user names appear in metrics and reports.
    #[serde(default)]
    pub privacy: PrivacyMode,
}

/// Prices as decimal strings in the policy's currency.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Prices {
    /// Price of one monochrome impression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::validate::DECIMAL_PATTERN))]
    pub mono_impression: Option<String>,
    /// Price of one color impression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::validate::DECIMAL_PATTERN))]
    pub color_impression: Option<String>,
    /// Fee per job, whatever its size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::validate::DECIMAL_PATTERN))]
    pub per_job: Option<String>,
    /// Multiplier for two-sided impressions, as a decimal (`"0.8"` makes duplex 20% cheaper).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::validate::DECIMAL_PATTERN))]
    pub duplex_factor: Option<String>,
    /// Overrides by media size.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["media"]))]
    pub media: Vec<MediaPrice>,
}

/// Prices for one media size, overriding the defaults.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MediaPrice {
    /// PWG media name, e.g. `iso_a3_297x420mm`.
    #[schemars(regex(pattern = crate::validate::MEDIA_PATTERN))]
    pub media: String,
    /// Price of one monochrome impression on this media.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::validate::DECIMAL_PATTERN))]
    pub mono_impression: Option<String>,
    /// Price of one color impression on this media.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::validate::DECIMAL_PATTERN))]
    pub color_impression: Option<String>,
}

/// A spending limit for a user or a group per period.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::schema::quota_rules)]
pub struct Quota {
    /// Exactly one of `user`, `group` or `allUsers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub user: Option<String>,
    /// A group from the credentials file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub group: Option<String>,
    /// Applies to each user separately.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all_users: bool,
    /// `day`, `week` or `month`.
    pub period: QuotaPeriod,
    /// Most money spent in one period, as a decimal string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::validate::DECIMAL_PATTERN))]
    pub max_amount: Option<String>,
    /// Most impressions in one period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_impressions: Option<u64>,
    /// What happens to a job that would exceed the quota.
    #[serde(default)]
    pub action: QuotaAction,
}

/// A quota period, starting at midnight in the policy's time zone (weeks on Monday).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum QuotaPeriod {
    /// Calendar day.
    Day,
    /// ISO week.
    Week,
    /// Calendar month.
    #[default]
    Month,
}

/// What happens to a job that would exceed a quota.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum QuotaAction {
    /// Refuse it with `client-error-account-limit-reached`.
    #[default]
    Reject,
    /// Accept it held (`account-limit-reached`) until an operator releases it.
    Hold,
    /// Accept and print it, flagged in the ledger.
    AllowAndFlag,
}

/// Billing codes (PWG `job-account-id`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BillingCodes {
    /// Every job must carry a `job-account-id`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,
    /// The codes accepted; empty accepts any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub allowed: Vec<String>,
}

/// How user identities appear in metrics and reports.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PrivacyMode {
    /// User names as they are.
    Plain,
    /// A salted hash of the user name.
    #[default]
    Hashed,
    /// No user label at all.
    Omitted,
}

/// What the operator last saw of the policy.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AccountingPolicyStatus {
    /// `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// How many queues use the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queues: Option<i64>,
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
