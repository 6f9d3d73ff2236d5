//! Mappings from other systems' payloads to Vedetta's event contract (docs/events.md).
//!
//! Each mapping is a pure function from a source's JSON to events in our wire form, which
//! then go through the same intake as every other event (`crate::intake`): one set of
//! checks, one set of error messages, whatever the source.

pub mod mapping;
pub mod shopify;
