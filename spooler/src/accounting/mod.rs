//! Accounting: page counts, prices, quota periods and how users appear in reports.
//!
//! Pure logic only (plus fetching the salt): the store, IPP admission and metrics call in
//! here.
//!
//! # Entry points
//!
//! At configuration load, once per `AccountingPolicy` (each refuses an invalid policy with a
//! [`pricing::PolicyError`] naming the fields):
//! - [`pricing::PriceList::from_policy`] — prices; a queue without a policy uses
//!   [`pricing::PriceList::free`] (zero, currency `XXX`), so its jobs are still counted.
//! - [`quota::QuotaRules::from_policy`] — quotas and the policy's time zone.
//! - [`admission::installation_salt`] once per spooler (`App::installation_salt`; the job
//!   store keeps it), then
//!   [`privacy::user_label`] with the policy's `privacy` mode for every metric or report
//!   label.
//!
//! At admission, per document then per job:
//! 1. [`pages::count_pages`] (document in memory) or [`pages::count_pages_in_file`]
//!    (document in the `DocumentStore` directory). On `Err` the pages are unknown: charge
//!    the printer's `job-impressions-completed` when the job completes, and admit against a
//!    configured minimum meanwhile — never zero.
//! 2. [`usage::impressions`] with the job's ticket (queue defaults applied) gives the
//!    document's [`usage::Usage`]; add the documents of a job with `+`.
//! 3. [`pricing::PriceList::price`] with the ticket's `media` gives the [`pricing::Money`].
//! 4. [`quota::QuotaRules::applicable`] for the user, their groups and the submission time;
//!    for each [`quota::ApplicableQuota`], sum the ledger for its `scope` over
//!    `[period.start, period.end)` into a [`quota::Spent`]; then [`quota::decide`] with the
//!    job's [`quota::Charge`]. Do the read and the insert of the estimate in one store
//!    transaction, so concurrent submissions cannot overspend.
//!
//! At completion, the printer's own counts replace the estimate: price them with the same
//! `PriceList::price` (a `Usage` built from `job-impressions-completed` and
//! `job-media-sheets-completed`).

pub mod admission;
pub mod ledger;
pub mod pages;
pub mod pricing;
pub mod privacy;
pub mod quota;
pub mod report;
pub mod settle;
pub mod usage;
