//! From the users a trigger selected (pseudonyms) to the [`CrmUser`]s a CRM destination
//! is sent: each is looked up in the identity store and its sealed `email`/`crm_id`
//! opened. A user without marketing consent, or with consent but no stored identity, is
//! withheld and counted, never sent (issue 12: a user without marketing consent never
//! leaves Vedetta). The identity-less webhook does not come here: it gets pseudonyms only.

use crate::crypto::{Crypto, IdentityField};
use crate::watch::crm::{CrmEvent, CrmUser};
use std::collections::BTreeMap;
use vedetta_store::{IdentityStore, IdentityStoreError};

/// One user a trigger selected, with what the trigger says about them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Selected {
    /// The user's pseudonym, lower-case hex (as in a push).
    pub pseudonym: String,
    /// Tags to add (`vip`, `customer`).
    pub tags: Vec<String>,
    /// Field values by Vedetta's name (`product`, `offer`, `cart_value`).
    pub fields: BTreeMap<String, String>,
    pub events: Vec<CrmEvent>,
}

/// Selected users not sent, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Withheld {
    /// No marketing consent on record (never given, or withdrawn).
    pub no_consent: u64,
    /// Consent, but neither `email` nor `crm_id` stored (or not a pseudonym at all).
    pub no_identity: u64,
    /// A sealed field that does not open (the key is gone, or the row was tampered with).
    pub unreadable: u64,
}

/// Looks the selected users up; returns those that may be sent, with their identity, in
/// the order given, and the count of those withheld. Errors are the store's own; an
/// unreadable row is counted and logged by pseudonym, never by value.
pub fn crm_users(
    store: &IdentityStore,
    crypto: &Crypto,
    selected: Vec<Selected>,
) -> Result<(Vec<CrmUser>, Withheld), IdentityStoreError> {
    let mut users = Vec::with_capacity(selected.len());
    let mut withheld = Withheld::default();
    for user in selected {
        let Some(key) = parse_pseudonym(&user.pseudonym) else {
            withheld.no_identity += 1;
            continue;
        };
        let stored = match store.get(&key)? {
            Some(stored) if stored.marketing => stored,
            _ => {
                withheld.no_consent += 1;
                continue;
            }
        };
        if stored.email.is_none() && stored.crm_id.is_none() {
            withheld.no_identity += 1;
            continue;
        }
        let open = |field, sealed: Option<Vec<u8>>| {
            sealed
                .map(|s| crypto.open_identity(field, &user.pseudonym, &s))
                .transpose()
        };
        let (email, crm_id) = match (
            open(IdentityField::Email, stored.email),
            open(IdentityField::CrmId, stored.crm_id),
        ) {
            (Ok(email), Ok(crm_id)) => (email, crm_id),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(user = %user.pseudonym, error = %e, "a stored identity does not open; the user is not sent");
                withheld.unreadable += 1;
                continue;
            }
        };
        users.push(CrmUser {
            pseudonym: user.pseudonym,
            email,
            crm_id,
            tags: user.tags,
            fields: user.fields,
            events: user.events,
        });
    }
    Ok((users, withheld))
}

/// 32 lower-case hex digits to the 16 bytes of a pseudonym.
fn parse_pseudonym(hex: &str) -> Option<[u8; 16]> {
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use vedetta_store::IdentityWrite;

    const K: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn hex(user: [u8; 16]) -> String {
        user.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn selected(user: [u8; 16]) -> Selected {
        Selected {
            pseudonym: hex(user),
            tags: vec!["vip".into()],
            fields: [("product".to_string(), "P-7".to_string())].into(),
            events: vec![],
        }
    }

    #[test]
    fn only_consenting_users_with_an_identity_are_sent_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = IdentityStore::open(&dir.path().join("identity.redb")).unwrap();
        let crypto = Crypto::from_hex(K, &[]).unwrap();
        let (anna, bruno, carla, dario, elena) = ([1; 16], [2; 16], [3; 16], [4; 16], [5; 16]);
        let seal = |field, user: [u8; 16], value: &str| {
            Some(crypto.seal_identity(field, &hex(user), value).unwrap())
        };
        let write = |user, marketing, email, crm_id| IdentityWrite {
            user,
            ts_ms: 1,
            marketing,
            email,
            crm_id,
        };
        store
            .apply(&[
                write(
                    anna,
                    Some(true),
                    seal(IdentityField::Email, anna, "anna@example.it"),
                    seal(IdentityField::CrmId, anna, "42"),
                ),
                // Bruno said no: his identity was never kept.
                write(
                    bruno,
                    Some(false),
                    seal(IdentityField::Email, bruno, "b@example.it"),
                    None,
                ),
                // Carla consented but sent no identity.
                write(carla, Some(true), None, None),
                // Elena's row carries an address sealed for Anna: it must not open.
                write(
                    elena,
                    Some(true),
                    seal(IdentityField::Email, anna, "anna@example.it"),
                    None,
                ),
            ])
            .unwrap();
        let (users, withheld) = crm_users(
            &store,
            &crypto,
            vec![
                selected(anna),
                selected(bruno),
                selected(carla),
                selected(dario),
                selected(elena),
                Selected {
                    pseudonym: "not-hex".into(),
                    ..Default::default()
                },
            ],
        )
        .unwrap();
        assert_eq!(users.len(), 1);
        assert_eq!(users[0].pseudonym, hex(anna));
        assert_eq!(users[0].email.as_deref(), Some("anna@example.it"));
        assert_eq!(users[0].crm_id.as_deref(), Some("42"));
        assert_eq!(users[0].tags, ["vip"]);
        assert_eq!(users[0].fields["product"], "P-7");
        assert_eq!(
            withheld,
            Withheld {
                no_consent: 2,
                no_identity: 2,
                unreadable: 1
            }
        );
    }

    #[test]
    fn pseudonyms_parse_only_as_32_hex_digits() {
        assert_eq!(parse_pseudonym(&"0f".repeat(16)), Some([15; 16]));
        assert_eq!(parse_pseudonym(&"0f".repeat(15)), None);
        assert_eq!(parse_pseudonym(&format!("{}zz", "0f".repeat(15))), None);
        assert_eq!(parse_pseudonym(&format!("é{}", "0".repeat(30))), None);
    }
}
