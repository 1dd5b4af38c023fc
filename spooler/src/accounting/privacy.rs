//! How user names appear in metrics and reports: as they are, hashed, or not at all.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use printfleet_crds::policy::PrivacyMode;
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};

/// The salt's file name in the spooler's state directory.
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

/// The installation's salt: read from `<state_dir>/accounting-salt`, or made on first use
/// (32 bytes from the kernel's CSPRNG, written mode 0600 and fsynced with its directory).
///
/// Concurrent first starts agree on one salt: the new file is linked into place only if
/// none exists, and the loser reads the winner's. A salt file of the wrong size is an error
/// rather than replaced, since a new salt would change every hashed label in past reports.
pub fn load_or_create_salt(state_dir: &Path) -> io::Result<Vec<u8>> {
    let path = state_dir.join(SALT_FILE);
    if let Some(salt) = read_salt(&path)? {
        return Ok(salt);
    }
    let random = SystemRandom::new();
    let fill = |bytes: &mut [u8]| {
        random
            .fill(bytes)
            .map_err(|_| io::Error::other("the system random number generator failed"))
    };
    let mut salt = vec![0; SALT_LEN];
    fill(&mut salt)?;
    // A name of its own for each attempt, so racing threads never share a temporary file.
    let mut nonce = [0; 8];
    fill(&mut nonce)?;
    let nonce = u64::from_be_bytes(nonce);
    let temporary = state_dir.join(format!(".{SALT_FILE}.{nonce:016x}.tmp"));
    let written = write_private(&temporary, &salt).and_then(|()| fs::hard_link(&temporary, &path));
    let _ = fs::remove_file(&temporary);
    match written {
        Ok(()) => {
            File::open(state_dir)?.sync_all()?;
            Ok(salt)
        }
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => read_salt(&path)?
            .ok_or_else(|| io::Error::other(format!("{} vanished", path.display()))),
        Err(error) => Err(error),
    }
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

fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

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
    fn the_salt_is_created_once_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let salt = load_or_create_salt(dir.path()).unwrap();
        assert_eq!(salt.len(), SALT_LEN);
        assert_ne!(salt, vec![0; SALT_LEN]);
        let path = dir.path().join(SALT_FILE);
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create_salt(dir.path()).unwrap(), salt);
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        // Another installation gets another salt.
        let other = tempfile::tempdir().unwrap();
        assert_ne!(load_or_create_salt(other.path()).unwrap(), salt);
    }

    #[test]
    fn concurrent_first_starts_agree() {
        let dir = tempfile::tempdir().unwrap();
        let salts: Vec<Vec<u8>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| load_or_create_salt(dir.path()).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(salts.iter().all(|salt| *salt == salts[0]));
    }

    #[test]
    fn a_damaged_salt_is_an_error_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SALT_FILE);
        fs::write(&path, b"short").unwrap();
        let error = load_or_create_salt(dir.path()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert_eq!(fs::read(&path).unwrap(), b"short");
        let missing = dir.path().join("no-such-dir");
        assert!(load_or_create_salt(&missing).is_err());
    }
}
