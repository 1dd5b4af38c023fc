//! How user names appear in metrics and reports: as they are, hashed, or not at all.

use std::fs;
use std::io;
use std::path::Path;

use printfleet_crds::policy::PrivacyMode;
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};

/// The salt file of a standalone spooler from before the salt was kept in the job store.
pub const SALT_FILE: &str = "accounting-salt";
/// Bytes of salt.
pub const SALT_LEN: usize = 32;
/// Hex characters of a hashed label (64 bits: collisions are negligible for any user count
/// a site has, and the label stays short in Prometheus).
const HASH_HEX_LEN: usize = 16;

/// The label a user gets under `mode`: the name itself, the first 16 hex characters of
/// SHA-256(salt ‖ name), or none (the user is left out of the label set).
pub fn user_label(mode: PrivacyMode, salt: &[u8], user: &str) -> Option<String> {
    match mode {
        PrivacyMode::Plain => Some(user.to_owned()),
        PrivacyMode::Omitted => None,
        PrivacyMode::Hashed => {
            let mut context = digest::Context::new(&digest::SHA256);
            context.update(salt);
            context.update(user.as_bytes());
            let hash = context.finish();
            let hex: String = hash
                .as_ref()
                .iter()
                .take(HASH_HEX_LEN / 2)
                .map(|byte| format!("{byte:02x}"))
                .collect();
            Some(hex)
        }
    }
}

/// The salt this process proposes for the installation (`JobStore::installation_salt`
/// keeps the first one proposed): an older standalone spooler's `<state_dir>/accounting-salt`
/// when there is one, so its hashed labels stay the same, else 32 fresh bytes from the
/// kernel's CSPRNG.
///
/// A salt file of the wrong size is an error rather than replaced, since a new salt would
/// change every hashed label in past reports.
pub fn proposed_salt(state_dir: &Path) -> io::Result<Vec<u8>> {
    if let Some(salt) = read_salt(&state_dir.join(SALT_FILE))? {
        return Ok(salt);
    }
    let mut salt = vec![0; SALT_LEN];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| io::Error::other("the system random number generator failed"))?;
    Ok(salt)
}

fn read_salt(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(salt) if salt.len() == SALT_LEN => Ok(Some(salt)),
        Ok(salt) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} holds {} bytes instead of {SALT_LEN}: restore it from a backup (a new salt would change every hashed user label)",
                path.display(),
                salt.len()
            ),
        )),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn salt() -> Vec<u8> {
        (0..32).collect()
    }

    #[test]
    fn plain_and_omitted() {
        assert_eq!(
            user_label(PrivacyMode::Plain, &salt(), "alice").as_deref(),
            Some("alice")
        );
        assert_eq!(user_label(PrivacyMode::Omitted, &salt(), "alice"), None);
    }

    #[test]
    fn hashed_is_salted_sha256_truncated() {
        // sha256(bytes 0..32 ‖ "alice"), first 16 hex characters (checked with Python's hashlib).
        let label = user_label(PrivacyMode::Hashed, &salt(), "alice").unwrap();
        assert_eq!(label, "3dd374340e1f0a5c");
        assert_ne!(
            user_label(PrivacyMode::Hashed, &salt(), "bob").unwrap(),
            label
        );
        assert_ne!(
            user_label(PrivacyMode::Hashed, &[7; 32], "alice").unwrap(),
            label
        );
    }

    #[test]
    fn an_older_salt_file_is_proposed_else_a_fresh_salt() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = proposed_salt(dir.path()).unwrap();
        assert_eq!(fresh.len(), SALT_LEN);
        assert_ne!(proposed_salt(dir.path()).unwrap(), fresh, "fresh each time");
        fs::write(dir.path().join(SALT_FILE), salt()).unwrap();
        assert_eq!(proposed_salt(dir.path()).unwrap(), salt());
    }

    #[test]
    fn a_damaged_salt_file_is_an_error_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(SALT_FILE), b"short").unwrap();
        let error = proposed_salt(dir.path()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(error.to_string().contains("backup"), "{error}");
    }
}
