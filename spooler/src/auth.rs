//! Identity and access: HTTP Basic against a queue's credentials file, and the queue's
//! access rules (who may print, who is an operator).
//!
//! A credentials file has one user per line, `user:bcrypt-hash[:group,group...]`, the
//! format `htpasswd -B` writes plus an optional list of groups; `#` starts a comment.
//! It is a Secret key: `<secrets-dir>/<name>/<key>`, re-read when it changes.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use base64::Engine as _;
use printfleet_crds::SecretKeyRef;
use printfleet_crds::queue::{AccessRules, AuthenticationMode};

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

/// One user of a credentials file.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Account {
    hash: String,
    groups: Vec<String>,
}

/// A parsed credentials file and the modification time it was read at.
struct CredentialsFile {
    modified: Option<SystemTime>,
    accounts: HashMap<String, Account>,
}

/// Verifies Basic credentials against credentials files resolved in the secrets directory.
///
/// bcrypt is slow on purpose (tens of milliseconds), so a successful check is remembered
/// by a keyed hash of the password, never the password itself.
pub struct Authenticator {
    secrets_dir: PathBuf,
    files: Mutex<HashMap<PathBuf, CredentialsFile>>,
    verified: Mutex<HashMap<(String, String), u64>>,
    password_hasher: RandomState,
}

impl Authenticator {
    pub fn new(secrets_dir: PathBuf) -> Authenticator {
        Authenticator {
            secrets_dir,
            files: Mutex::new(HashMap::new()),
            verified: Mutex::new(HashMap::new()),
            password_hasher: RandomState::new(),
        }
    }

    /// Where a Secret key lives on disk.
    pub fn secret_path(&self, secret: &SecretKeyRef) -> PathBuf {
        secret_path(&self.secrets_dir, secret)
    }

    /// The identity an `Authorization` header proves for a queue with these rules.
    ///
    /// `Ok(None)`: no header and the queue does not require authentication. A header is
    /// checked whenever the queue has a credentials file, so an operator can prove who
    /// they are on an open queue too.
    pub fn authenticate(
        &self,
        access: &AccessRules,
        authorization: Option<&str>,
    ) -> Result<Option<Identity>, AuthError> {
        let required = access.authentication == AuthenticationMode::Basic;
        let Some(secret) = &access.credentials else {
            return if required {
                Err(AuthError::Unavailable(
                    "the queue requires authentication but names no credentials".into(),
                ))
            } else {
                Ok(None)
            };
        };
        let Some(header) = authorization else {
            return if required {
                Err(AuthError::Unauthorized)
            } else {
                Ok(None)
            };
        };
        let (user, password) = parse_basic(header).ok_or(AuthError::Unauthorized)?;
        let account = self
            .account(&self.secret_path(secret), &user)?
            .ok_or(AuthError::Unauthorized)?;
        if !self.password_matches(&user, &password, &account.hash) {
            return Err(AuthError::Unauthorized);
        }
        Ok(Some(Identity {
            user,
            groups: account.groups,
            authenticated: true,
        }))
    }

    fn account(&self, path: &Path, user: &str) -> Result<Option<Account>, AuthError> {
        let modified = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .map_err(|e| AuthError::Unavailable(format!("{}: {e}", path.display())))?;
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = files
            .get(path)
            .is_some_and(|f| f.modified == Some(modified));
        if !fresh {
            let text = std::fs::read_to_string(path)
                .map_err(|e| AuthError::Unavailable(format!("{}: {e}", path.display())))?;
            files.insert(
                path.to_path_buf(),
                CredentialsFile {
                    modified: Some(modified),
                    accounts: parse_credentials(&text),
                },
            );
        }
        Ok(files.get(path).and_then(|f| f.accounts.get(user).cloned()))
    }

    fn password_matches(&self, user: &str, password: &str, hash: &str) -> bool {
        let key = (user.to_string(), hash.to_string());
        let fingerprint = self.password_hasher.hash_one(password);
        let cache = || self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if cache().get(&key) == Some(&fingerprint) {
            return true;
        }
        let ok = bcrypt::verify(password, hash).unwrap_or(false);
        if ok {
            cache().insert(key, fingerprint);
        }
        ok
    }
}

/// `<secrets_dir>/<name>/<key>`, the layout of a Secret mounted as a volume.
pub fn secret_path(secrets_dir: &Path, secret: &SecretKeyRef) -> PathBuf {
    secrets_dir.join(&secret.name).join(&secret.key)
}

/// Decode `Basic base64(user:password)`.
fn parse_basic(header: &str) -> Option<(String, String)> {
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    (!user.is_empty()).then(|| (user.to_string(), password.to_string()))
}

/// Parse a credentials file; malformed lines are skipped with a warning naming the line.
fn parse_credentials(text: &str) -> HashMap<String, Account> {
    let mut accounts = HashMap::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.splitn(3, ':');
        match (fields.next(), fields.next()) {
            (Some(user), Some(hash)) if !user.is_empty() && hash.starts_with("$2") => {
                let groups = fields
                    .next()
                    .map(|g| {
                        g.split(',')
                            .map(str::trim)
                            .filter(|g| !g.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default();
                accounts.insert(
                    user.to_string(),
                    Account {
                        hash: hash.to_string(),
                        groups,
                    },
                );
            }
            _ => tracing::warn!(
                line = index + 1,
                "credentials file: ignoring a line that is not user:bcrypt-hash[:groups]"
            ),
        }
    }
    accounts
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

/// Whether `identity` may manage every job on the queue and pause it. Only an
/// authenticated identity can be an operator when the queue has credentials, so that
/// claiming an operator's name in `requesting-user-name` is not enough.
pub fn is_operator(access: &AccessRules, identity: &Identity) -> bool {
    let proven = identity.authenticated || access.credentials.is_none();
    proven && access.operators.iter().any(|u| u == &identity.user)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user: &str, password: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
    }

    fn setup(required: bool) -> (tempfile::TempDir, Authenticator, AccessRules) {
        let dir = tempfile::tempdir().expect("temp dir");
        let secret = dir.path().join("users");
        std::fs::create_dir_all(&secret).expect("secret dir");
        let alice = bcrypt::hash("wonderland", 4).expect("hash");
        std::fs::write(
            secret.join("htpasswd"),
            format!("# users\nalice:{alice}:staff,lab\nbroken line\n"),
        )
        .expect("write");
        let access = AccessRules {
            authentication: if required {
                AuthenticationMode::Basic
            } else {
                AuthenticationMode::None
            },
            credentials: Some(SecretKeyRef {
                name: "users".into(),
                key: "htpasswd".into(),
            }),
            operators: vec!["alice".into()],
            ..AccessRules::default()
        };
        (
            dir,
            Authenticator::new(secret.parent().expect("parent").to_path_buf()),
            access,
        )
    }

    #[test]
    fn right_password_proves_user_and_groups() {
        let (_dir, auth, access) = setup(true);
        let identity = auth
            .authenticate(&access, Some(&header("alice", "wonderland")))
            .expect("ok");
        let identity = identity.expect("identity");
        assert_eq!(identity.user, "alice");
        assert_eq!(identity.groups, vec!["staff", "lab"]);
        assert!(identity.authenticated);
        // Second time from the cache.
        assert!(
            auth.authenticate(&access, Some(&header("alice", "wonderland")))
                .is_ok()
        );
    }

    #[test]
    fn wrong_or_missing_credentials_are_unauthorized() {
        let (_dir, auth, access) = setup(true);
        for attempt in [
            Some(header("alice", "wrong")),
            Some(header("mallory", "wonderland")),
            Some("Bearer abc".to_string()),
            Some("Basic !!!".to_string()),
            None,
        ] {
            assert!(
                matches!(
                    auth.authenticate(&access, attempt.as_deref()),
                    Err(AuthError::Unauthorized)
                ),
                "{attempt:?}"
            );
        }
    }

    #[test]
    fn open_queue_without_header_needs_nothing() {
        let (_dir, auth, access) = setup(false);
        assert!(auth.authenticate(&access, None).expect("ok").is_none());
    }

    #[test]
    fn missing_credentials_file_is_a_server_problem() {
        let (dir, auth, access) = setup(true);
        std::fs::remove_file(dir.path().join("users/htpasswd")).expect("remove");
        assert!(matches!(
            auth.authenticate(&access, Some(&header("alice", "wonderland"))),
            Err(AuthError::Unavailable(_))
        ));
    }

    #[test]
    fn access_rules() {
        let access = AccessRules {
            allowed_users: vec!["bob".into()],
            allowed_groups: vec!["lab".into()],
            operators: vec!["root".into()],
            ..AccessRules::default()
        };
        let who = |user: &str, groups: &[&str]| Identity {
            user: user.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            authenticated: false,
        };
        assert!(may_print(&access, &who("bob", &[])));
        assert!(may_print(&access, &who("carol", &["lab"])));
        assert!(may_print(&access, &who("root", &[])));
        assert!(!may_print(&access, &who("carol", &["staff"])));
        assert!(may_print(&AccessRules::default(), &who("anyone", &[])));
        assert!(is_operator(&access, &who("root", &[])));
        assert!(!is_operator(&access, &who("bob", &[])));
        // With a credentials file, a claimed operator name is not enough.
        let guarded = AccessRules {
            credentials: Some(SecretKeyRef {
                name: "u".into(),
                key: "k".into(),
            }),
            ..access
        };
        assert!(!is_operator(&guarded, &who("root", &[])));
        assert!(is_operator(
            &guarded,
            &Identity {
                authenticated: true,
                ..who("root", &[])
            }
        ));
    }
}
