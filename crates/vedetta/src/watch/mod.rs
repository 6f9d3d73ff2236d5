//! Watch adapters: the destinations notifications are delivered to, the outbox sender, and
//! the task that evaluates alert rules as the watermark moves (issue 10). The rules, their
//! lifecycle and the notifications themselves are pure (`vedetta_core::watch`).

pub mod config;
pub mod crm;
pub mod destination;
pub mod destinations;
pub mod evaluation;
pub mod oauth2;
pub mod sender;
