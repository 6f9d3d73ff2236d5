//! `vedetta`: the real-time conversion monitor, as a library under the binary.
//!
//! The binary (`main.rs`) is a thin `fn main` over these modules: the command line, the
//! server and the tools. The library exists so that code outside the binary can call the
//! same parsers the server runs: `crates/vedetta-fuzz` feeds the `/v1/kpis` query-string
//! parser ([`server::kpis`]) and the configuration parser ([`config`]) arbitrary bytes.

pub mod act;
mod clock;
pub mod commands;
pub mod config;
pub mod crypto;
pub mod demo;
mod geoip;
pub mod identity;
mod processor;
mod secrets;
pub mod server;
pub mod sources;
mod telemetry;
pub mod watch;
