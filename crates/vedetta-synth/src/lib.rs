//! `vedetta-synth`: a deterministic generator of realistic synthetic conversion traffic.
//!
//! Its place in the picture is in front of the sources: it produces what shops and ad platforms
//! would send to Vedetta — funnel events per EVENTS.md and ad spend per minute — in the order
//! the server would receive them. `vedetta gen` writes it to NDJSON files or streams it live,
//! the demo mode shows it, the benchmarks load it, and the correctness tests compare the
//! pipeline's KPIs with the ground truth it carries.
//!
//! What it promises:
//! - **Deterministic forever**: the same [`SynthConfig`] gives byte-identical output on every
//!   platform and version (own PRNG, no platform math; see `rng`). No clock is read, nothing is
//!   read or written: time is `SynthConfig::start_ms` plus simulated time.
//! - **Arrival order**: [`Generator`] yields [`Arrival`]s with non-decreasing `arrival_ms`,
//!   endlessly; event times go backwards now and then (jitter of a few seconds, a few events
//!   minutes late), as on a real network. Memory stays bounded however long it runs.
//! - **Contract-valid**: every record serializes (see [`to_ndjson_line`]) to a valid event or
//!   spend record of EVENTS.md, using the whole breadth of the contract: Italian aliases,
//!   epoch-ms and offset timestamps, channel given or left to derivation, consent forms.
//! - **Ground truth**: each arrival says whether it is an original, an exact retry or a
//!   double-fire, late, a fast checkout, and which session it belongs to; [`SynthStats`] sums
//!   it up.
//!
//! ```
//! use vedetta_synth::{to_ndjson_line, Generator, SynthConfig};
//!
//! let config = SynthConfig { seed: 7, sessions_per_minute: 300.0, ..SynthConfig::default() };
//! let mut generator = Generator::new(config)?;
//! let mut ndjson = Vec::new();
//! for arrival in generator.by_ref().take(1_000) {
//!     to_ndjson_line(&arrival.record, &mut ndjson);
//! }
//! assert_eq!(ndjson.iter().filter(|&&b| b == b'\n').count(), 1_000);
//! assert_eq!(generator.stats().records, 1_000);
//! # Ok::<(), vedetta_synth::ConfigError>(())
//! ```

mod arrival_queue;
mod catalog;
mod config;
pub mod demo;
mod generator;
pub mod geoip;
mod population;
mod record;
mod rfc3339;
pub mod rhythm;
mod rng;
mod session;
pub mod truth;

pub use catalog::{
    CampaignSpec, DeviceClass, IspPrefix, RegionSpec, SHOP_ORIGIN, UserAgentSpec, campaigns,
    isp_prefixes, paid_campaigns, regions, user_agents,
};
pub use config::{
    ConfigError, DEFAULT_START_MS, DemoShape, MAX_DISORDER_MS, MAX_SESSIONS_PER_MINUTE,
    MAX_START_MS, MAX_USERS, MIN_USERS_PER_SESSION_PER_MINUTE, SynthConfig, Tagging,
};
pub use generator::{Arrival, ArrivalKind, Generator, GroundTruth, SynthStats};
pub use record::{
    Channel, ClickId, ClickIdKind, Consent, EventId, EventType, OrderId, Properties, SynthEvent,
    SynthRecord, SynthSpend, Timestamp, TsFormat, Udid, UdidStyle, to_ndjson_line,
};
pub use rfc3339::{MAX_RFC3339_MS, MIN_RFC3339_MS, Rfc3339, format_rfc3339_ms};
