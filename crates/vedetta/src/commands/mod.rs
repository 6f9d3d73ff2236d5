//! The command-line tools around the server.

pub mod bench;
pub mod costs_csv;
pub mod generate;
pub mod log;
pub mod replay;
pub mod rules;
pub mod send;
pub mod sources;

pub mod triggers;
