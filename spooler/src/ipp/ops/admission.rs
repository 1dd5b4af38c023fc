//! Accounting admission of submitted jobs: billing codes, page counts, price and quotas,
//! handed to the store, which checks the quotas and records the estimate in the
//! transaction that stores the job.
//!
//! Print-Job is priced with its document. Create-Job is priced when its last document
//! arrives (Send-Document with `last-document` or Close-Job), all documents together, so
//! the quota check sees the whole job; billing codes are checked at Create-Job already.

use std::path::PathBuf;

use jiff::Timestamp;

use super::super::{AccountStatus, Failure, RequestContext};
use crate::accounting::admission::{
    self as accounting, BillingCodeError, DocumentBytes, Policy, document_pages, job_usage,
};
use crate::accounting::ledger::Admission;
use crate::accounting::quota::{Limit, Scope, Tripped};
use crate::auth::Identity;
use crate::job::{DocumentBody, Job, JobTicket, NewDocument};

/// Refuses a job whose billing code the policy requires or does not allow.
pub(super) fn check_billing_code(
    policy: Option<&Policy>,
    ticket: &JobTicket,
) -> Result<(), Failure> {
    let Some(policy) = policy else {
        return Ok(());
    };
    accounting::check_billing_code(&policy.spec.billing_codes, ticket.job_account_id.as_deref())
        .map_err(|error| {
            let status = match error {
                BillingCodeError::Missing => AccountStatus::InfoNeeded,
                BillingCodeError::NotAllowed(_) => AccountStatus::AuthorizationFailed,
            };
            Failure::account(status, error.to_string())
        })
}

/// `client-error-account-limit-reached` for a job a quota rejected.
pub(super) fn quota_refusal(tripped: &Tripped) -> Failure {
    let whose = match &tripped.scope {
        Scope::User(user) => format!("user {user}"),
        Scope::Group(group) => format!("group {group}"),
    };
    let limit = match &tripped.limit {
        Limit::Amount { max, would_be } => {
            format!("{would_be} minor units would exceed the limit of {max}")
        }
        Limit::Impressions { max, would_be } => {
            format!("{would_be} impressions would exceed the limit of {max}")
        }
    };
    Failure::account(
        AccountStatus::LimitReached,
        format!(
            "quota of {whose} for the period from {}: {limit}",
            tripped.period.start
        ),
    )
}

/// The pages of a document being submitted.
pub(super) async fn pages_of_new(ctx: &RequestContext, document: &NewDocument) -> u32 {
    match &document.body {
        DocumentBody::Inline(bytes) => {
            document_pages(&document.format, DocumentBytes::Memory(bytes))
        }
        DocumentBody::Stored { key } => pages_of_stored(ctx, &document.format, key).await,
    }
}

/// The pages of the documents a job already holds.
pub(super) async fn pages_of_job(ctx: &RequestContext, job: &Job) -> Vec<u32> {
    let mut pages = Vec::with_capacity(job.documents.len() + 1);
    for info in &job.documents {
        let counted = match &info.key {
            Some(key) => pages_of_stored(ctx, &info.format, key).await,
            None => match ctx.app.store.inline_document(job.id, info.number).await {
                Ok(Some(bytes)) => document_pages(&info.format, DocumentBytes::Memory(&bytes)),
                _ => document_pages(&info.format, DocumentBytes::Unreachable),
            },
        };
        pages.push(counted);
    }
    pages
}

/// A stored document is counted from its file when the document store is the local
/// directory (`<state_dir>/documents/<key>`); otherwise the fallback estimate applies.
async fn pages_of_stored(ctx: &RequestContext, format: &str, key: &str) -> u32 {
    let path: PathBuf = ctx.app.settings.state_dir.join("documents").join(key);
    let format = format.to_owned();
    tokio::task::spawn_blocking(move || {
        let bytes = if path.is_file() {
            DocumentBytes::File(path)
        } else {
            DocumentBytes::Unreachable
        };
        document_pages(&format, bytes)
    })
    .await
    .unwrap_or(accounting::UNCOUNTABLE_DOCUMENT_PAGES)
}

/// The admission of a job of `identity` with documents of `pages` pages.
pub(super) fn admission(
    policy: Option<&Policy>,
    identity: &Identity,
    ticket: &JobTicket,
    pages: &[u32],
) -> Admission {
    accounting::admission(
        policy,
        &identity.user,
        &identity.groups,
        ticket,
        job_usage(pages, ticket),
        Timestamp::now(),
    )
}
