//! Watch: alert rules over the KPI series, anomaly detection, and the notifications they
//! produce (issue 10). Pure: rules are evaluated on KPI data and times handed in; the
//! adapters read the store, keep the alert state and send what is in the outbox.

pub mod anomaly;
pub mod dispatch;
pub mod evaluate;
mod evaluate_anomaly;
pub mod expr;
pub mod notification;
pub mod rules;
