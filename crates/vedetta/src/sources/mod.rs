//! Sources other than a server speaking our JSON: browsers through the tracker and site
//! keys ([`sites`], [`tracker`]). Shopify and mapped ERP webhooks arrive here too
//! (docs/sources.md).

pub mod sites;
pub mod tracker;
