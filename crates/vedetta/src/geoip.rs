//! Loads the GeoIP database named in the configuration (the file read happens here, at the
//! edge; the core's lookup works on bytes).

use anyhow::Context;
use std::path::Path;
use std::sync::Arc;
use vedetta_core::enrich::{MmdbRegionLookup, RegionLookup};

/// The region lookup, or `None` when no database is configured (regions then come only
/// from the `region` field).
pub fn load(path: Option<&Path>) -> anyhow::Result<Option<Arc<dyn RegionLookup>>> {
    let Some(path) = path else {
        return Ok(None);
    };
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read the GeoIP database {}", path.display()))?;
    let lookup = MmdbRegionLookup::from_bytes(bytes)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    tracing::info!(path = %path.display(), "GeoIP database loaded");
    Ok(Some(Arc::new(lookup)))
}
