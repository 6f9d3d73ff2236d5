//! The pseudonymization key: from configuration, or generated once into the data directory.
//!
//! A generated key lives in `<data_dir>/pseudonym.key` (mode 0600). Losing it makes every
//! stored pseudonym unlinkable to its `udid`, so erasure by `udid` stops working for the
//! data written under it: back it up with the data, or set `privacy.pseudonym_key`.

use crate::config::PrivacyConfig;
use anyhow::Context;
use std::io::Write;
use std::path::Path;
use vedetta_core::privacy::{PseudonymKey, Pseudonymizer, encode_hex};

const KEY_FILE: &str = "pseudonym.key";

/// Builds the pseudonymizer, creating the key file on first start when no key is configured.
pub fn load_pseudonymizer(
    privacy: &PrivacyConfig,
    data_dir: &Path,
) -> anyhow::Result<Pseudonymizer> {
    let current_hex = match &privacy.pseudonym_key {
        Some(hex) => hex.clone(),
        None => read_or_create_key_file(&data_dir.join(KEY_FILE))?,
    };
    let current = PseudonymKey::from_hex(privacy.pseudonym_key_id, &current_hex)
        .context("privacy.pseudonym_key")?;
    let previous = privacy
        .previous_pseudonym_keys
        .iter()
        .enumerate()
        .map(|(i, hex)| {
            // Earlier keys are numbered downwards from the current id.
            let id = privacy.pseudonym_key_id.wrapping_sub(1 + i as u8);
            PseudonymKey::from_hex(id, hex).context("privacy.previous_pseudonym_keys")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Pseudonymizer::new(current, previous))
}

fn read_or_create_key_file(path: &Path) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => return Ok(text.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no system randomness: {e}"))?;
    let hex = encode_hex(&secret);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(hex.as_bytes())?;
    file.sync_all()?;
    tracing::warn!(
        path = %path.display(),
        "no privacy.pseudonym_key configured: generated a new key. Back it up with the data; \
         without it, erasure by udid cannot find this data"
    );
    Ok(hex)
}
