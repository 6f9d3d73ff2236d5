//! Sources other than a server speaking our JSON: browsers through the tracker and site
//! keys ([`sites`], [`tracker`]). Shopify and mapped ERP webhooks arrive here too
//! (docs/sources.md).

pub mod mapped;
pub mod shopify;
pub mod sites;
pub mod tracker;

use serde::Deserialize;

/// `[sources]` as written. Every table but `shopify` is a mapped source (`[sources.NAME]`,
/// [`mapped`]); its own fields are checked strictly.
#[derive(Debug, Default, Deserialize)]
pub struct RawSources {
    pub shopify: Option<shopify::RawShopify>,
    #[serde(flatten)]
    pub mapped: std::collections::BTreeMap<String, mapped::RawMapped>,
}

/// Validated source settings.
#[derive(Debug, Clone, Default)]
pub struct SourcesConfig {
    pub shopify: Option<shopify::ShopifySource>,
    /// Mapped webhooks by name (`POST /v1/sources/NAME`).
    pub mapped: std::collections::BTreeMap<String, mapped::MappedSource>,
}

impl SourcesConfig {
    pub fn from_raw(raw: RawSources) -> Result<Self, (String, String)> {
        Ok(Self {
            shopify: raw
                .shopify
                .map(shopify::ShopifySource::from_raw)
                .transpose()?,
            mapped: mapped::validate(raw.mapped)?,
        })
    }
}
