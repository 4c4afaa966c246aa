//! Identity files: 32 secret bytes as hex, created with fresh randomness on first use.

use std::path::Path;

use anyhow::{Context, Result};
use tessera_protocol::identity::{hex, parse_hex32};
use tessera_protocol::Identity;

/// The administrator's token: the first line of `file`, else `TESSERA_ADMIN_TOKEN`, else none;
/// surrounding whitespace removed.
pub fn admin_secret(file: Option<&Path>) -> Result<Option<String>> {
    Ok(match file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading the admin token {}", f.display()))?
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_string(),
        ),
        None => std::env::var("TESSERA_ADMIN_TOKEN")
            .ok()
            .map(|s| s.trim().to_string()),
    })
}

/// Loads the identity at `path`, creating it if absent.
pub fn load_or_create(path: &Path) -> Result<Identity> {
    if path.exists() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading identity {}", path.display()))?;
        let seed = parse_hex32(&text).with_context(|| {
            format!(
                "{} is not an identity file (64 hex characters)",
                path.display()
            )
        })?;
        return Ok(Identity::from_seed(seed));
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness for a new key: {e}"))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Created readable by its owner only (never written first and protected after), and
    // never over a file that appeared meanwhile.
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("creating identity {}", path.display()))?;
    std::io::Write::write_all(&mut file, (hex(&seed) + "\n").as_bytes())
        .with_context(|| format!("writing identity {}", path.display()))?;
    Ok(Identity::from_seed(seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_identity_file_is_its_owners_alone_and_loads_back() {
        let dir = std::env::temp_dir().join(format!("tessera-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("nested").join("worker.key");
        let made = load_or_create(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "identity file mode {mode:o}");
        }
        assert_eq!(load_or_create(&path).unwrap().public(), made.public());
        std::fs::write(&path, "not a key\n").unwrap();
        let err = load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("is not an identity file"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
