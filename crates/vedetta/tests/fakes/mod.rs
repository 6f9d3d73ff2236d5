//! Fakes of the services Vedetta acts on, over real HTTP on loopback, enforcing their
//! contracts: an OAuth2 server with rotating refresh tokens and a protected receiver
//! ([`oauth2`]), ActiveCampaign API v3 ([`activecampaign`]) and the Mailchimp Marketing
//! API ([`mailchimp`]).

pub mod activecampaign;
pub mod mailchimp;
pub mod oauth2;
