//! `<data>/demo.json`: how far the demo's history load has come, so that a restart continues
//! where the last run stopped and never loads a second history.
//!
//! Versioned (`format`), written atomically (temporary file, fsync, rename, fsync of the
//! directory): a crash leaves the old marker or the new one, never half of one.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The marker's format version; a marker of another version is refused with its path.
pub const FORMAT: u32 = 1;

/// File name of the marker in the data directory.
pub const FILE_NAME: &str = "demo.json";

/// Progress of the history load. The history is cut into chunks of consecutive arrivals;
/// each chunk is posted as one events request, then one costs request, and the marker is
/// written after each acknowledged request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Marker {
    pub format: u32,
    /// The demo's seed: the history is generated from it.
    pub seed: u64,
    /// Event time at which the history ends (exclusive), epoch ms.
    pub history_end_ms: i64,
    /// Fraction of the history's volume that is loaded (1 in the real demo; tests load less).
    pub history_scale: f64,
    /// Arrivals of the history fully stored: the next chunk starts here.
    pub arrivals_done: u64,
    /// The current chunk's events request was acknowledged (only its costs remain).
    pub chunk_events_done: bool,
    /// The log's end offset after the last acknowledged request: a larger end offset at
    /// start means the request in flight when the server stopped was stored after all.
    pub log_end_offset: u64,
    /// Records of the history the server accepted and refused so far.
    pub accepted: u64,
    pub refused: u64,
    /// Every chunk is stored (or no history is loaded: see `skipped`).
    pub complete: bool,
    /// No history was loaded because the data directory already held data of its own.
    pub skipped: bool,
}

impl Marker {
    /// The marker of a history not begun yet.
    pub fn new(seed: u64, history_end_ms: i64, history_scale: f64) -> Self {
        Self {
            format: FORMAT,
            seed,
            history_end_ms,
            history_scale,
            arrivals_done: 0,
            chunk_events_done: false,
            log_end_offset: 0,
            accepted: 0,
            refused: 0,
            complete: false,
            skipped: false,
        }
    }

    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(FILE_NAME)
    }

    /// The marker of `data_dir`, `None` if there is none.
    pub fn load(data_dir: &Path) -> anyhow::Result<Option<Self>> {
        let path = Self::path(data_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        // The version first, so that a newer marker is named as such rather than as a
        // field this build does not know.
        let version: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        match version.get("format").and_then(serde_json::Value::as_u64) {
            Some(v) if v == u64::from(FORMAT) => {}
            Some(v) => anyhow::bail!(
                "{}: format {v} is not the {FORMAT} this version of Vedetta reads; \
                 use the version that wrote it or start the demo on a new data directory",
                path.display()
            ),
            None => anyhow::bail!("{}: format: missing or not a number", path.display()),
        }
        let marker: Self = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a demo marker", path.display()))?;
        if !(marker.history_scale > 0.0 && marker.history_scale <= 1.0) {
            anyhow::bail!(
                "{}: history_scale: {} is not in (0, 1]",
                path.display(),
                marker.history_scale
            );
        }
        Ok(Some(marker))
    }

    /// Writes the marker atomically: a temporary file, fsynced, renamed over the old one,
    /// and the directory fsynced so that the rename itself survives a power cut.
    pub fn save(&self, data_dir: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_vec_pretty(self)?;
        write_atomically(&Self::path(data_dir), &text)
    }
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new content.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| anyhow::anyhow!("{} has no directory", path.display()))?;
    let mut file = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.as_file().sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.persist(path)
        .with_context(|| format!("cannot replace {}", path.display()))?;
    #[cfg(unix)]
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_marker_survives_a_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Marker::load(dir.path()).unwrap(), None);
        let mut marker = Marker::new(7, 1_700_000_000_000, 0.5);
        marker.arrivals_done = 15_000;
        marker.chunk_events_done = true;
        marker.save(dir.path()).unwrap();
        assert_eq!(Marker::load(dir.path()).unwrap(), Some(marker));
    }

    #[test]
    fn another_format_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut marker = serde_json::to_value(Marker::new(7, 0, 1.0)).unwrap();
        marker["format"] = 2.into();
        std::fs::write(Marker::path(dir.path()), marker.to_string()).unwrap();
        let error = format!("{:#}", Marker::load(dir.path()).unwrap_err());
        assert!(error.contains("format 2"), "{error}");
        std::fs::write(Marker::path(dir.path()), "{\"seed\": 1}").unwrap();
        let error = format!("{:#}", Marker::load(dir.path()).unwrap_err());
        assert!(error.contains("format: missing"), "{error}");
        let mut marker = serde_json::to_value(Marker::new(7, 0, 1.0)).unwrap();
        marker["history_scale"] = 3.0.into();
        std::fs::write(Marker::path(dir.path()), marker.to_string()).unwrap();
        let error = format!("{:#}", Marker::load(dir.path()).unwrap_err());
        assert!(error.contains("history_scale"), "{error}");
    }
}
