//! Tests of the enrichment stage as the pipeline uses it: one rule of `docs/semantics.md`
//! per test, then the generator's traffic through intake and enrichment against the answers
//! the generator knows.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::intake::{BodyFormat, IntakeContext, IntakeLimits, judge_events};
use crate::privacy::{PseudonymKey, Pseudonymizer};
use crate::record::{EventKind, LogRecord, UserPseudonym};
use crate::time::EventTime;
use vedetta_synth::geoip::{catalog_region_mmdb, catalog_region_of, write_region_mmdb};
use vedetta_synth::{
    Arrival, DeviceClass as SynthDevice, Generator, SynthConfig, SynthRecord, to_ndjson_line,
};

/// An event with nothing but its identity: every dimension falls to its default.
fn bare() -> StoredEvent {
    StoredEvent::bare(
        UserPseudonym([1; 16]),
        EventKind::PageView,
        EventTime(1_712_318_400_000),
    )
}

fn some(text: &str) -> Option<String> {
    Some(text.to_string())
}

fn channel(event: &StoredEvent) -> String {
    channel_of(event, &["bottega.example".to_string()]).into_owned()
}

fn with_referrer(referrer: &str) -> StoredEvent {
    StoredEvent {
        referrer: some(referrer),
        ..bare()
    }
}

fn with_medium(medium: &str) -> StoredEvent {
    StoredEvent {
        utm_medium: some(medium),
        ..bare()
    }
}

fn with_source(source: &str) -> StoredEvent {
    StoredEvent {
        utm_source: some(source),
        ..bare()
    }
}

// Channel field.

#[test]
fn a_given_channel_is_trimmed_and_lower_cased_and_borrowed_when_it_can_be() {
    let event = StoredEvent {
        channel: some("social"),
        gclid: some("Cj0KCQjw"), // ignored: the client's channel wins
        ..bare()
    };
    assert!(matches!(channel_of(&event, &[]), Cow::Borrowed("social")));
    let event = StoredEvent {
        channel: some("  Paid_Search "),
        ..bare()
    };
    assert!(matches!(channel_of(&event, &[]), Cow::Owned(ref c) if c == "paid_search"));
    let custom = StoredEvent {
        channel: some("Podcast"),
        ..bare()
    };
    assert_eq!(channel(&custom), "podcast", "custom channels are kept");
    let blank = StoredEvent {
        channel: some("   "),
        ..bare()
    };
    assert_eq!(channel(&blank), "direct", "a blank channel is no channel");
}

// Default channel grouping, rule by rule.

#[test]
fn rule_1_a_gclid_is_paid_search_whatever_else_the_event_says() {
    let event = StoredEvent {
        gclid: some("Cj0KCQjw"),
        fbclid: some("IwAR"),
        utm_medium: some("email"),
        referrer: some("https://www.facebook.com/"),
        ..bare()
    };
    assert_eq!(channel(&event), "paid_search");
    assert!(matches!(channel_of(&event, &[]), Cow::Borrowed(_)));
}

#[test]
fn rule_2_an_fbclid_is_social() {
    let event = StoredEvent {
        fbclid: some("IwAR"),
        utm_medium: some("cpc"),
        ..bare()
    };
    assert_eq!(channel(&event), "social");
}

#[test]
fn rule_3_the_medium_decides_in_any_case() {
    let cases = [
        ("cpc", "paid_search"),
        ("PPC", "paid_search"),
        ("paid_search", "paid_search"),
        ("paidsearch", "paid_search"),
        ("sem", "paid_search"),
        ("paid_social", "social"),
        ("paidsocial", "social"),
        ("Social", "social"),
        ("social-media", "social"),
        ("social_media", "social"),
        ("sm", "social"),
        ("email", "email"),
        ("E-Mail", "email"),
        ("newsletter", "email"),
        ("display", "display"),
        ("banner", "display"),
        ("cpm", "display"),
        ("programmatic", "display"),
        ("affiliate", "affiliate"),
        ("affiliates", "affiliate"),
        ("referral", "referral"),
        ("organic", "organic"),
    ];
    for (medium, expected) in cases {
        assert_eq!(channel(&with_medium(medium)), expected, "{medium}");
    }
}

#[test]
fn rule_3_paid_clicks_on_a_social_network_are_social() {
    let event = StoredEvent {
        utm_medium: some("cpc"),
        utm_source: some("Instagram"),
        ..bare()
    };
    assert_eq!(channel(&event), "social");
    let event = StoredEvent {
        utm_medium: some("cpc"),
        utm_source: some("bing"),
        ..bare()
    };
    assert_eq!(channel(&event), "paid_search");
}

#[test]
fn rule_3_an_unknown_medium_lets_the_later_rules_decide() {
    let event = StoredEvent {
        utm_medium: some("qr_code"),
        utm_source: some("newsletter"),
        ..bare()
    };
    assert_eq!(channel(&event), "email");
    let event = StoredEvent {
        utm_medium: some("qr_code"),
        referrer: some("https://www.google.it/"),
        ..bare()
    };
    assert_eq!(channel(&event), "organic");
    assert_eq!(channel(&with_medium("qr_code")), "direct");
}

#[test]
fn rule_4_the_source_alone_social_networks_and_email_tools() {
    for source in [
        "facebook",
        "Instagram",
        "fb",
        "ig",
        "tiktok",
        "linkedin",
        "twitter",
        "x",
        "pinterest",
        "youtube",
    ] {
        assert_eq!(channel(&with_source(source)), "social", "{source}");
    }
    for source in ["newsletter", "mailchimp", "MailUp", "brevo", "klaviyo"] {
        assert_eq!(channel(&with_source(source)), "email", "{source}");
    }
    // Other sources say nothing by themselves.
    assert_eq!(channel(&with_source("trovaprezzi")), "direct");
    let event = StoredEvent {
        utm_source: some("google"),
        referrer: some("https://www.google.com/"),
        ..bare()
    };
    assert_eq!(channel(&event), "organic");
}

#[test]
fn rule_5_search_engines_are_organic() {
    for referrer in [
        "https://www.google.com/",
        "https://www.google.it/search?q=moka",
        "https://google.co.uk/",
        "https://www.bing.com/search?q=x",
        "https://cn.bing.com/",
        "https://it.search.yahoo.com/",
        "https://duckduckgo.com/",
        "https://www.ecosia.org/search?q=x",
        "https://yandex.ru/",
        "https://www.baidu.com/",
        "https://www.qwant.com/?q=x",
        "HTTPS://WWW.GOOGLE.IT/",
    ] {
        assert_eq!(channel(&with_referrer(referrer)), "organic", "{referrer}");
    }
}

#[test]
fn rule_5_social_networks_and_their_short_and_link_hosts_are_social() {
    for referrer in [
        "https://www.facebook.com/",
        "https://m.facebook.com/",
        "https://l.facebook.com/l.php?u=x",
        "https://lm.facebook.com/",
        "https://www.instagram.com/",
        "https://l.instagram.com/",
        "https://t.co/abc",
        "https://twitter.com/",
        "https://x.com/shop",
        "https://www.linkedin.com/",
        "https://www.tiktok.com/",
        "https://www.pinterest.it/",
        "https://pinterest.com/",
        "https://www.youtube.com/watch?v=x",
        "https://m.youtube.com/",
    ] {
        assert_eq!(channel(&with_referrer(referrer)), "social", "{referrer}");
    }
}

#[test]
fn rule_5_webmail_is_email_even_on_a_search_engines_domain() {
    for referrer in [
        "https://mail.google.com/",
        "https://mail.yahoo.com/d/folders/1",
        "https://outlook.live.com/mail/0/",
        "https://outlook.office.com/",
        "https://mail.libero.it/appsuite/",
        "https://webmail.aruba.it/",
        "https://mail1.tiscali.it/",
    ] {
        assert_eq!(channel(&with_referrer(referrer)), "email", "{referrer}");
    }
}

#[test]
fn rule_5_other_hosts_are_referral_and_look_alikes_are_not_search_or_social() {
    for referrer in [
        "https://www.giallozafferano.it/ricette",
        "https://www.reddit.com/r/italy",
        "https://google.evil.example/",
        "https://notgoogle.com/",
        "https://myfacebook.com/",
        "https://facebook.com.example/",
        "https://mail.ru/",
        "www.aranzulla.it/articolo",
    ] {
        assert_eq!(channel(&with_referrer(referrer)), "referral", "{referrer}");
    }
}

#[test]
fn rule_5_internal_hosts_are_not_referral_and_fall_through_to_direct() {
    for referrer in [
        "https://www.bottega.example/carrello",
        "https://bottega.example/",
        "https://shop.bottega.example/x",
        "https://WWW.Bottega.Example:443/",
    ] {
        assert_eq!(channel(&with_referrer(referrer)), "direct", "{referrer}");
    }
    // Internal hosts may be configured as URLs or with `www.`.
    let internal = ["https://www.bottega.example/".to_string()];
    let event = with_referrer("https://bottega.example/prodotto/x");
    assert_eq!(channel_of(&event, &internal), "direct");
    // Without the configuration the same referrer is a referral.
    assert_eq!(channel_of(&event, &[]), "referral");
    // An internal referrer does not hide earlier hints.
    let event = StoredEvent {
        utm_source: some("facebook"),
        referrer: some("https://www.bottega.example/"),
        ..bare()
    };
    assert_eq!(channel(&event), "social");
}

#[test]
fn rule_6_nothing_is_direct() {
    assert_eq!(channel(&bare()), "direct");
    for referrer in [
        "",
        "about:blank",
        "android",
        "mailto:x@example.com",
        "https://",
    ] {
        assert_eq!(channel(&with_referrer(referrer)), "direct", "{referrer:?}");
    }
}

#[test]
fn referrer_hosts_are_read_from_urls_and_bare_hosts() {
    let cases = [
        ("https://www.google.it/search?q=x", Some("www.google.it")),
        ("http://user:pw@Example.com:8080/a", Some("Example.com")),
        ("https://example.com.", Some("example.com")),
        ("https://example.com?x=1", Some("example.com")),
        ("https://example.com#top", Some("example.com")),
        ("//cdn.example.com/x", Some("cdn.example.com")),
        ("www.example.it/path", Some("www.example.it")),
        (
            "android-app://com.google.android.gm/",
            Some("com.google.android.gm"),
        ),
        ("http://[2001:db8::1]:8080/", Some("2001:db8::1")),
        ("about:blank", None),
        ("mailto:someone@example.com", None),
        ("localhost", None),
        ("", None),
    ];
    for (referrer, expected) in cases {
        assert_eq!(referrer_host(referrer), expected, "{referrer}");
    }
}

// Campaign.

#[test]
fn campaign_is_campaign_else_utm_campaign_else_none() {
    let event = StoredEvent {
        campaign: some("Saldi"),
        utm_campaign: some("other"),
        ..bare()
    };
    assert_eq!(campaign_of(&event), "Saldi", "kept in its case");
    let event = StoredEvent {
        campaign: some("  "),
        utm_campaign: some(" black_friday "),
        ..bare()
    };
    assert_eq!(campaign_of(&event), "black_friday");
    assert_eq!(campaign_of(&bare()), "(none)");
}

// Device.

const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4.1 Mobile/15E148 Safari/604.1";
const IPAD: &str = "Mozilla/5.0 (iPad; CPU OS 16_7_7 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1";

#[test]
fn device_field_overrides_the_user_agent_which_still_gives_os_and_browser() {
    let mut enricher = Enricher::new(EnrichConfig::default(), None);
    let event = StoredEvent {
        user_agent: some(IPHONE),
        device: some("Tablet"),
        ..bare()
    };
    let enrichment = enricher.enrich(&event);
    assert_eq!(enrichment.device, DeviceClass::Tablet);
    assert_eq!((enrichment.os, enrichment.browser), ("iOS", "Safari"));
    let event = StoredEvent {
        user_agent: some(IPHONE),
        device: some("smart_tv"),
        ..bare()
    };
    assert_eq!(enricher.enrich(&event).device, DeviceClass::Other);
    let event = StoredEvent {
        user_agent: some(IPAD),
        ..bare()
    };
    assert_eq!(enricher.enrich(&event).device, DeviceClass::Tablet);
    let bare = bare();
    let none = enricher.enrich(&bare);
    assert_eq!(
        (none.device, none.os, none.browser),
        (DeviceClass::Unknown, "unknown", "unknown")
    );
}

#[test]
fn the_user_agent_memo_is_bounded_by_the_configuration() {
    let config = EnrichConfig {
        user_agent_cache_capacity: 50,
        ..EnrichConfig::default()
    };
    let mut enricher = Enricher::new(config, None);
    for n in 0..500 {
        let event = StoredEvent {
            user_agent: Some(format!("{IPAD} app/{n}")),
            ..bare()
        };
        assert_eq!(enricher.enrich(&event).device, DeviceClass::Tablet);
        assert!(enricher.user_agents_remembered() <= 50);
    }
    assert!(enricher.user_agents_remembered() > 0);
}

// Region.

fn lookup() -> Arc<dyn RegionLookup> {
    let bytes = write_region_mmdb(&[
        ("79.0.0.0".parse().unwrap(), 10, "IT-25"),
        ("2001:b07::".parse().unwrap(), 32, "IT-62"),
    ]);
    Arc::new(MmdbRegionLookup::from_bytes(bytes).unwrap())
}

fn region_of(enricher: &mut Enricher, region: Option<&str>, ip: Option<&str>) -> &'static str {
    let event = StoredEvent {
        region: region.map(str::to_string),
        ip_network: ip.map(|ip| ip.parse().unwrap()),
        ..bare()
    };
    enricher.enrich(&event).region.code()
}

#[test]
fn the_region_field_wins_by_name_or_code() {
    let mut enricher = Enricher::new(EnrichConfig::default(), Some(lookup()));
    let ip = Some("79.18.120.0");
    assert_eq!(region_of(&mut enricher, Some("Sicilia"), ip), "IT-82");
    assert_eq!(region_of(&mut enricher, Some("sicily"), ip), "IT-82");
    assert_eq!(region_of(&mut enricher, Some("IT-88"), ip), "IT-88");
    assert_eq!(region_of(&mut enricher, Some("88"), None), "IT-88");
    assert_eq!(
        region_of(&mut enricher, Some("Valle d’Aosta"), None),
        "IT-23"
    );
}

#[test]
fn the_ip_decides_when_the_field_is_absent_or_names_no_region() {
    let mut enricher = Enricher::new(EnrichConfig::default(), Some(lookup()));
    assert_eq!(region_of(&mut enricher, None, Some("79.18.120.0")), "IT-25");
    assert_eq!(
        region_of(&mut enricher, Some("Baviera"), Some("79.18.120.0")),
        "IT-25"
    );
    assert_eq!(
        region_of(&mut enricher, None, Some("2001:b07:6462::")),
        "IT-62"
    );
    assert_eq!(region_of(&mut enricher, None, Some("80.1.2.0")), "unknown");
    assert_eq!(region_of(&mut enricher, Some("Baviera"), None), "unknown");
    // Remembered answers are the same answers.
    assert_eq!(region_of(&mut enricher, None, Some("79.18.120.0")), "IT-25");
    assert_eq!(region_of(&mut enricher, None, Some("80.1.2.0")), "unknown");
    assert_eq!(enricher.networks_remembered(), 3);
}

#[test]
fn without_a_geoip_database_only_the_field_places_an_event() {
    let mut enricher = Enricher::new(EnrichConfig::default(), None);
    assert_eq!(
        region_of(&mut enricher, None, Some("79.18.120.0")),
        "unknown"
    );
    assert_eq!(
        region_of(&mut enricher, Some("Lazio"), Some("79.18.120.0")),
        "IT-62"
    );
    // A database arriving later is used, and forgets nothing it should not.
    enricher.set_region_lookup(Some(lookup()));
    assert_eq!(region_of(&mut enricher, None, Some("79.18.120.0")), "IT-25");
}

#[test]
fn a_new_database_is_asked_again_for_networks_already_answered() {
    let mut enricher = Enricher::new(EnrichConfig::default(), Some(lookup()));
    for _ in 0..3 {
        assert_eq!(region_of(&mut enricher, None, Some("79.18.120.0")), "IT-25");
    }
    let moved = write_region_mmdb(&[("79.0.0.0".parse().unwrap(), 10, "IT-82")]);
    enricher.set_region_lookup(Some(Arc::new(MmdbRegionLookup::from_bytes(moved).unwrap())));
    assert_eq!(region_of(&mut enricher, None, Some("79.18.120.0")), "IT-82");
}

#[test]
fn networks_that_share_a_front_slot_get_their_own_regions() {
    // Capacity 4: one front slot shared by every network, and a memo of 3.
    for capacity in [4, 1, 64, 65_536] {
        let config = EnrichConfig {
            region_cache_capacity: capacity,
            ..EnrichConfig::default()
        };
        let mut enricher = Enricher::new(config, Some(lookup()));
        for round in 0..3 {
            for (ip, expected) in [
                ("79.18.120.0", "IT-25"),
                ("80.1.2.0", "unknown"),
                ("2001:b07:6462::", "IT-62"),
                ("79.1.2.0", "IT-25"),
                ("2001:b08::", "unknown"),
            ] {
                assert_eq!(
                    region_of(&mut enricher, None, Some(ip)),
                    expected,
                    "{ip}, capacity {capacity}, round {round}"
                );
            }
        }
    }
}

#[test]
fn the_network_memo_is_bounded_by_the_configuration() {
    let config = EnrichConfig {
        region_cache_capacity: 64,
        ..EnrichConfig::default()
    };
    let mut enricher = Enricher::new(config, Some(lookup()));
    for n in 0..1_000u32 {
        let ip = std::net::Ipv4Addr::from((79 << 24) | (n << 8));
        assert_eq!(
            region_of(&mut enricher, None, Some(&ip.to_string())),
            "IT-25"
        );
        assert!(enricher.networks_remembered() <= 64);
    }
}

// The generator's traffic, through intake, against its ground truth.

/// `count` generated events, as intake stores them, with the arrival that produced each.
fn generated_events(seed: u64, count: usize) -> Vec<(Arrival, StoredEvent)> {
    let config = SynthConfig {
        seed,
        ..SynthConfig::default()
    };
    let arrivals: Vec<Arrival> = Generator::new(config)
        .unwrap()
        .filter(|arrival| matches!(arrival.record, SynthRecord::Event(_)))
        .take(count)
        .collect();
    let mut body = Vec::new();
    for arrival in &arrivals {
        to_ndjson_line(&arrival.record, &mut body);
    }
    let pseudonymizer = Pseudonymizer::new(PseudonymKey::from_bytes(1, &[7; 32]).unwrap(), vec![]);
    let limits = IntakeLimits {
        max_events_per_request: count,
        ..IntakeLimits::default()
    };
    let context = IntakeContext {
        now_ms: 4_102_444_800_000, // 2100: every generated time is in the past
        pseudonymizer: &pseudonymizer,
        limits: &limits,
    };
    let judged = judge_events(&body, BodyFormat::Ndjson, &context).unwrap();
    assert!(judged.rejected.is_empty(), "{:?}", judged.rejected.first());
    let events = judged.records.into_iter().map(|record| match record {
        LogRecord::Event(event) => event,
        LogRecord::Spend(_) => unreachable!("only events were sent"),
    });
    arrivals.into_iter().zip(events).collect()
}

#[test]
fn generated_events_without_a_channel_group_to_the_intended_channel() {
    let config = EnrichConfig {
        internal_hosts: vec!["www.bottega.example".into()],
        ..EnrichConfig::default()
    };
    let mut derived = std::collections::BTreeMap::new();
    for (arrival, event) in generated_events(11, 40_000) {
        let intended = arrival.truth.channel.unwrap().as_str();
        let found = channel_of(&event, &config.internal_hosts);
        assert_eq!(found, intended, "{event:?}");
        if event.channel.is_none() {
            *derived.entry(intended).or_insert(0) += 1;
        }
    }
    // Every channel was derived at least once, so every branch above was exercised.
    assert_eq!(derived.len(), 8, "{derived:?}");
}

#[test]
fn generated_events_get_the_device_and_region_the_generator_chose() {
    let lookup: Arc<dyn RegionLookup> =
        Arc::new(MmdbRegionLookup::from_bytes(catalog_region_mmdb()).unwrap());
    let mut enricher = Enricher::new(EnrichConfig::default(), Some(lookup));
    let mut by_ip = 0;
    for (arrival, event) in generated_events(12, 20_000) {
        let SynthRecord::Event(sent) = &arrival.record else {
            unreachable!("events only")
        };
        let enrichment = enricher.enrich(&event);
        let expected_device = match sent.user_agent {
            None => DeviceClass::Unknown,
            Some(user_agent) => {
                let spec = vedetta_synth::user_agents()
                    .iter()
                    .find(|spec| spec.user_agent == user_agent)
                    .unwrap();
                assert_eq!(enrichment.os, spec.os);
                assert_eq!(enrichment.browser, spec.browser);
                match spec.device {
                    SynthDevice::Mobile => DeviceClass::Mobile,
                    SynthDevice::Tablet => DeviceClass::Tablet,
                    SynthDevice::Desktop => DeviceClass::Desktop,
                }
            }
        };
        assert_eq!(enrichment.device, expected_device, "{:?}", sent.user_agent);
        let expected_region = match (sent.region, sent.ip) {
            (Some(region), _) => vedetta_synth::regions()
                .iter()
                .find(|spec| spec.name == region || spec.iso_code == region)
                .map(|spec| spec.iso_code),
            (None, Some(ip)) => {
                by_ip += 1;
                catalog_region_of(ip).map(|spec| spec.iso_code)
            }
            (None, None) => None,
        };
        assert_eq!(
            enrichment.region.code(),
            expected_region.unwrap_or("unknown"),
            "{:?} {:?}",
            sent.region,
            sent.ip
        );
    }
    assert!(by_ip > 10_000, "{by_ip} events placed by IP");
    assert!(enricher.user_agents_remembered() <= vedetta_synth::user_agents().len());
}
