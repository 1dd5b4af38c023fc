//! Identity and access: HTTP Basic against a queue's credentials file, and the queue's
//! access rules (who may print, who is an operator).

use printfleet_crds::queue::AccessRules;
use std::path::PathBuf;

/// Who is making a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
    /// True when the name was proven by a password, not merely claimed.
    pub authenticated: bool,
}

/// Why a request could not be authenticated.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No or wrong credentials: answer HTTP 401 with a Basic challenge.
    #[error("authentication required")]
    Unauthorized,
    /// The credentials file is missing or unreadable: a server-side problem.
    #[error("credentials unavailable: {0}")]
    Unavailable(String),
}

/// Verifies Basic credentials against credentials files resolved in the secrets directory.
pub struct Authenticator {
    #[allow(dead_code)]
    secrets_dir: PathBuf,
}

impl Authenticator {
    pub fn new(secrets_dir: PathBuf) -> Authenticator {
        Authenticator { secrets_dir }
    }

    /// The identity an `Authorization` header proves for a queue with these rules:
    /// `Ok(None)` when the header is absent and the queue does not require authentication.
    pub fn authenticate(
        &self,
        _access: &AccessRules,
        _authorization: Option<&str>,
    ) -> Result<Option<Identity>, AuthError> {
        Ok(None)
    }
}

/// Whether `identity` may submit jobs to a queue with these rules.
pub fn may_print(access: &AccessRules, identity: &Identity) -> bool {
    let open = access.allowed_users.is_empty() && access.allowed_groups.is_empty();
    open || access.allowed_users.iter().any(|u| u == &identity.user)
        || identity
            .groups
            .iter()
            .any(|g| access.allowed_groups.contains(g))
        || is_operator(access, identity)
}

/// Whether `identity` may manage every job on the queue and pause it.
pub fn is_operator(access: &AccessRules, identity: &Identity) -> bool {
    access.operators.iter().any(|u| u == &identity.user)
}
