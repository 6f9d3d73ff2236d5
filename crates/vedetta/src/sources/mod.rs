//! Sources other than a server speaking our JSON: browsers through the tracker and site
//! keys ([`sites`], [`tracker`]). Shopify and mapped ERP webhooks arrive here too
//! (docs/sources.md).

pub mod shopify;
pub mod sites;
pub mod tracker;

use serde::Deserialize;

/// `[sources]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSources {
    pub shopify: Option<shopify::RawShopify>,
}

/// Validated source settings.
#[derive(Debug, Clone, Default)]
pub struct SourcesConfig {
    pub shopify: Option<shopify::ShopifySource>,
}

impl SourcesConfig {
    pub fn from_raw(raw: RawSources) -> Result<Self, (String, String)> {
        Ok(Self {
            shopify: raw
                .shopify
                .map(shopify::ShopifySource::from_raw)
                .transpose()?,
        })
    }
}
