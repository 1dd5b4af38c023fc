//! Admission glue: a queue's parsed policy, billing codes, page counts of submitted
//! documents, and the [`Admission`] the store checks and records atomically.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use jiff::Timestamp;
use printfleet_crds::AccountingPolicySpec;
use printfleet_crds::policy::{BillingCodes, PrivacyMode};

use super::ledger::Admission;
use super::pages::{self, PageCountError};
use super::pricing::{PolicyError, PriceList};
use super::quota::QuotaRules;
use super::usage::{self, Usage};
use crate::config::Config;
use crate::job::JobTicket;

/// Pages assumed for a document whose pages cannot be counted (unknown format, malformed,
/// or held by a document store with no local file). The estimate is only for admission:
/// the printer's `job-impressions-completed` settles the job, and when the printer reports
/// nothing either, this estimate is what the job costs — never zero.
pub const UNCOUNTABLE_DOCUMENT_PAGES: u32 = 1;

/// An `AccountingPolicy`, parsed once when the configuration loads.
#[derive(Debug)]
pub struct Policy {
    pub spec: AccountingPolicySpec,
    pub prices: PriceList,
    pub quotas: QuotaRules,
}

impl Policy {
    pub fn parse(spec: AccountingPolicySpec) -> Result<Policy, PolicyError> {
        Ok(Policy {
            prices: PriceList::from_policy(&spec)?,
            quotas: QuotaRules::from_policy(&spec)?,
            spec,
        })
    }
}

/// Policies parsed from equal specs are equal: a reload that changes no spec changes nothing.
impl PartialEq for Policy {
    fn eq(&self, other: &Policy) -> bool {
        self.spec == other.spec
    }
}

/// The policy of `queue`; `None` when the queue has none (or does not exist).
pub fn policy_of_queue(config: &Config, queue: &str) -> Option<Arc<Policy>> {
    let name = config.queues.get(queue)?.accounting_policy.as_ref()?;
    config.policies.get(name).cloned()
}

/// The privacy mode of `queue`'s policy; a queue without one gets the CRD's default.
pub fn privacy_of_queue(config: &Config, queue: &str) -> PrivacyMode {
    policy_of_queue(config, queue).map_or_else(PrivacyMode::default, |policy| policy.spec.privacy)
}

/// Why the installation's salt is not at hand.
#[derive(Debug, thiserror::Error)]
pub enum SaltError {
    #[error("the old salt file in the state directory: {0}")]
    File(#[from] std::io::Error),
    #[error("the job store: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// The installation's salt for hashed user labels: kept in the job store, so every pod of
/// a cluster (and every restart) labels a user the same (see `privacy::proposed_salt`).
pub async fn installation_salt(
    store: &dyn crate::store::JobStore,
    state_dir: &Path,
) -> Result<Arc<Vec<u8>>, SaltError> {
    let proposed = super::privacy::proposed_salt(state_dir)?;
    Ok(Arc::new(store.installation_salt(&proposed).await?))
}

/// The installation's salt as a running spooler keeps it: read from the job store at first
/// use, then kept (once stored, it never changes).
#[derive(Debug, Default)]
pub struct InstallationSalt(tokio::sync::OnceCell<Arc<Vec<u8>>>);

impl InstallationSalt {
    pub async fn get(
        &self,
        store: &dyn crate::store::JobStore,
        state_dir: &Path,
    ) -> Result<Arc<Vec<u8>>, SaltError> {
        self.0
            .get_or_try_init(|| installation_salt(store, state_dir))
            .await
            .cloned()
    }
}

/// Why a job's billing code is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BillingCodeError {
    /// `client-error-account-info-needed`.
    #[error("this queue requires a billing code (job-account-id)")]
    Missing,
    /// `client-error-account-authorization-failed`.
    #[error("billing code {0:?} is not allowed on this queue")]
    NotAllowed(String),
}

/// Checks a job's `job-account-id` against the policy: required when `required`, and one of
/// `allowed` when that list is not empty.
pub fn check_billing_code(
    codes: &BillingCodes,
    account: Option<&str>,
) -> Result<(), BillingCodeError> {
    match account {
        None if codes.required => Err(BillingCodeError::Missing),
        Some(code) if !codes.allowed.is_empty() && !codes.allowed.iter().any(|a| a == code) => {
            Err(BillingCodeError::NotAllowed(code.to_owned()))
        }
        _ => Ok(()),
    }
}

/// Where a document's bytes can be read for counting.
pub enum DocumentBytes<'a> {
    Memory(&'a [u8]),
    File(PathBuf),
    /// Not reachable from here (e.g. in object storage).
    Unreachable,
}

/// The pages of one document, or [`UNCOUNTABLE_DOCUMENT_PAGES`] when they cannot be counted.
/// Reads files: call it off the async threads for stored documents.
pub fn document_pages(format: &str, bytes: DocumentBytes<'_>) -> u32 {
    let counted = match bytes {
        DocumentBytes::Memory(data) => pages::count_pages(format, data),
        DocumentBytes::File(path) => pages::count_pages_in_file(format, &path),
        DocumentBytes::Unreachable => Err(PageCountError::UnsupportedFormat {
            format: format.to_owned(),
        }),
    };
    match counted {
        Ok(pages) => pages,
        Err(error) => {
            tracing::info!(%error, format, "pages not counted; estimating {UNCOUNTABLE_DOCUMENT_PAGES} until the printer reports");
            UNCOUNTABLE_DOCUMENT_PAGES
        }
    }
}

/// The usage of a job of documents with `pages` pages each, printed with `ticket`.
pub fn job_usage(pages: &[u32], ticket: &JobTicket) -> Usage {
    let color = usage::is_color(ticket.print_color_mode.as_deref());
    pages.iter().fold(
        Usage {
            color,
            ..Usage::default()
        },
        |total, pages| total + usage::impressions(*pages, ticket),
    )
}

/// The admission of a job of `user` (in `groups`) with `usage` on a queue with `policy`
/// (`None`: counted at zero in `XXX`, without quotas), at `at`.
pub fn admission(
    policy: Option<&Policy>,
    user: &str,
    groups: &[String],
    ticket: &JobTicket,
    usage: Usage,
    at: Timestamp,
) -> Admission {
    let free = PriceList::free();
    let prices = policy.map_or(&free, |policy| &policy.prices);
    Admission {
        at_ms: at.as_millisecond(),
        user: user.to_owned(),
        groups: groups.to_vec(),
        account: ticket.job_account_id.clone(),
        price: prices.price(&usage, ticket.media.as_deref()),
        usage,
        quotas: policy.map_or_else(Vec::new, |policy| {
            policy.quotas.applicable(user, groups, at)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use printfleet_crds::PrintQueueSpec;
    use printfleet_crds::policy::{Prices, Quota, QuotaPeriod};

    fn policy_spec(mono: &str) -> AccountingPolicySpec {
        AccountingPolicySpec {
            currency: "EUR".into(),
            prices: Prices {
                mono_impression: Some(mono.into()),
                per_job: Some("0.10".into()),
                ..Default::default()
            },
            quotas: vec![Quota {
                all_users: true,
                period: QuotaPeriod::Day,
                max_amount: Some("1.00".into()),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn config(mono: &str) -> Config {
        let mut config = Config::default();
        let policy = Policy::parse(policy_spec(mono)).expect("valid");
        config.policies.insert("p".into(), Arc::new(policy));
        config.queues.insert(
            "office".into(),
            PrintQueueSpec {
                accounting_policy: Some("p".into()),
                ..Default::default()
            },
        );
        config
            .queues
            .insert("free".into(), PrintQueueSpec::default());
        config
    }

    #[test]
    fn billing_codes() {
        let required = BillingCodes {
            required: true,
            allowed: vec!["p-1".into()],
        };
        assert_eq!(
            check_billing_code(&required, None),
            Err(BillingCodeError::Missing)
        );
        assert_eq!(
            check_billing_code(&required, Some("p-2")),
            Err(BillingCodeError::NotAllowed("p-2".into()))
        );
        assert_eq!(check_billing_code(&required, Some("p-1")), Ok(()));
        let open = BillingCodes::default();
        assert_eq!(check_billing_code(&open, None), Ok(()));
        assert_eq!(check_billing_code(&open, Some("anything")), Ok(()));
    }

    #[test]
    fn each_configuration_prices_with_its_own_policy() {
        let cheap = policy_of_queue(&config("0.05"), "office").expect("policy");
        let dear = policy_of_queue(&config("0.50"), "office").expect("policy");
        let one_page = Usage {
            impressions: 1,
            sheets: 1,
            color: false,
            two_sided: false,
        };
        assert_eq!(cheap.prices.price(&one_page, None).minor, 15);
        assert_eq!(dear.prices.price(&one_page, None).minor, 60);
        assert!(policy_of_queue(&config("0.05"), "free").is_none());
    }

    #[test]
    fn uncountable_documents_are_never_free() {
        assert_eq!(
            document_pages("image/jpeg", DocumentBytes::Memory(b"\xff\xd8")),
            UNCOUNTABLE_DOCUMENT_PAGES
        );
        assert_eq!(
            document_pages("application/pdf", DocumentBytes::Unreachable),
            UNCOUNTABLE_DOCUMENT_PAGES
        );
        assert_eq!(
            document_pages(
                "application/pdf",
                DocumentBytes::File(PathBuf::from("/nonexistent/document"))
            ),
            UNCOUNTABLE_DOCUMENT_PAGES
        );
        assert_eq!(
            document_pages("text/plain", DocumentBytes::Memory(b"one\ntwo\n")),
            1
        );
    }

    #[test]
    fn admissions_price_and_find_quotas() {
        let ticket = JobTicket {
            copies: Some(2),
            print_color_mode: Some("monochrome".into()),
            job_account_id: Some("p-1".into()),
            ..Default::default()
        };
        let usage = job_usage(&[3, 2], &ticket);
        assert_eq!((usage.impressions, usage.sheets), (10, 10));
        let policy = Policy::parse(policy_spec("0.05")).expect("valid");
        let at: Timestamp = "2025-06-01T12:00:00Z".parse().expect("time");
        let admitted = admission(Some(&policy), "alice", &[], &ticket, usage, at);
        assert_eq!(admitted.price.minor, 60);
        assert_eq!(admitted.account.as_deref(), Some("p-1"));
        assert_eq!(admitted.quotas.len(), 1);
        assert_eq!(admitted.at_ms, at.as_millisecond());
        let free = admission(None, "alice", &[], &ticket, usage, at);
        assert_eq!((free.price.minor, free.price.currency.as_str()), (0, "XXX"));
        assert!(free.quotas.is_empty());
    }
}
