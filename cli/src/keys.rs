//! Identity files: 32 secret bytes as hex, created with fresh randomness on first use.

use std::path::Path;

use anyhow::{bail, Context, Result};
use tessera_protocol::Identity;

/// Loads the identity at `path`, creating it if absent.
pub fn load_or_create(path: &Path) -> Result<Identity> {
    if path.exists() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading identity {}", path.display()))?;
        let t = text.trim();
        if t.len() != 64 {
            bail!(
                "{} is not an identity file (64 hex characters)",
                path.display()
            );
        }
        let mut seed = [0u8; 32];
        for (i, b) in seed.iter_mut().enumerate() {
            *b = u8::from_str_radix(&t[2 * i..2 * i + 2], 16)
                .with_context(|| format!("{} is not hex", path.display()))?;
        }
        return Ok(Identity::from_seed(seed));
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness for a new key: {e}"))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(path, hex + "\n")
        .with_context(|| format!("writing identity {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("protecting {}", path.display()))?;
    }
    Ok(Identity::from_seed(seed))
}
