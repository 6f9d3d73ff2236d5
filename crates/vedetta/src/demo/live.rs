//! The demo's live part: the generator in real time against the server's own front door,
//! and now and then a tracking glitch for the demo's alert rule to fire on.
//!
//! Both start when the history is stored, never before: a live event carries the time of
//! now, and one of them logged before the end of the history would move the watermark past
//! every window still to come and make the rest of the history late.

use super::history::post;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use vedetta_core::time::Clock;
use vedetta_synth::{SynthRecord, to_ndjson_line};

use crate::clock::SystemClock;

/// The live generator's seed: the demo's seed mixed with the live part's start, so that a
/// restarted demo does not send again the event ids of the last run (within the 24-hour
/// dedup horizon they would be counted as duplicates).
fn live_seed(seed: u64, start_ms: i64) -> u64 {
    let mut z = seed ^ (start_ms as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Streams live traffic from `start_ms` (the wall clock when the demo began, `origin` being
/// the same moment) at the history's level or about a fixed rate, until the process ends. What came
/// due while the history loaded goes out at once.
pub async fn stream(
    address: SocketAddr,
    seed: u64,
    rate: super::LiveRate,
    start_ms: i64,
    origin: Instant,
    key: Option<String>,
) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut config = match rate {
        super::LiveRate::FollowHistory => {
            vedetta_synth::demo::live_config_following_history(seed, start_ms)
        }
        super::LiveRate::Fixed(rate) => vedetta_synth::demo::live_config(seed, start_ms, rate),
    };
    // Its own event ids; the population (the history's users) and the order numbers
    // (numbered from the start minute) stay as `live_config` makes them.
    config.seed = live_seed(config.seed, start_ms);
    let mut generator = crate::commands::generate::synth(config)?.peekable();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let (mut events, mut costs) = (Vec::new(), Vec::new());
    loop {
        tick.tick().await;
        let now_sim = start_ms + origin.elapsed().as_millis() as i64;
        while let Some(arrival) = generator.next_if(|a| a.arrival_ms <= now_sim) {
            let target = match &arrival.record {
                SynthRecord::Event(_) => &mut events,
                SynthRecord::Spend(_) => &mut costs,
            };
            to_ndjson_line(&arrival.record, target);
        }
        for (body, path) in [(&mut events, "events"), (&mut costs, "costs")] {
            if body.is_empty() {
                continue;
            }
            let url = format!("http://{address}/v1/{path}");
            if let Err(error) = post(&client, &url, key.as_deref(), std::mem::take(body)).await {
                tracing::warn!(%error, "demo: a live batch was not delivered");
            }
        }
    }
}

/// When the glitches come.
#[derive(Debug, Clone, Copy)]
pub struct GlitchTiming {
    pub first: Duration,
    pub every: Duration,
}

/// Every `every` (the first `first` after the live part starts), a tracking glitch: a
/// burst of events each sent three times, as a tag firing in a loop would, worth about a
/// twentieth of a minute's traffic and never fewer than 60 events from 50 visitors. The demo's `tracking_glitch` rule fires on the minute
/// and resolves the minute after, so a newcomer sees the whole lifecycle within minutes.
pub async fn glitches(address: SocketAddr, rate: f64, timing: GlitchTiming, key: Option<String>) {
    let Ok(client) = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
    else {
        return;
    };
    // At least 60 events from 50 visitors: at the history's level a minute holds fewer than
    // 20 sessions of its own, and the rule's volume guard (`min_sessions = 20`) must see
    // the glitch's.
    let burst = ((rate * 60.0) / 20.0).clamp(60.0, 5_000.0) as usize;
    // Ids unique to this run: a restarted demo's glitch is a glitch again, not a repeat of
    // the last run's.
    let run = SystemClock.now_ms();
    tokio::time::sleep(timing.first).await;
    for round in 0u64.. {
        let now = SystemClock.now_ms();
        let mut body = String::new();
        for i in 0..burst {
            let event = serde_json::json!({
                "udid": format!("glitch-{run}-{round}-{}", i % 50),
                "type": "page_view",
                // All within the same half second: spread over 20 s, a burst could straddle
                // two minutes and leave each under the rule's volume guard.
                "ts": now - (i as i64 % 5) * 100,
                "event_id": format!("glitch-{run}-{round}-{i}"),
                "page": "/checkout/thank-you",
            });
            body.push_str(&event.to_string());
            body.push('\n');
        }
        let url = format!("http://{address}/v1/events");
        for _ in 0..3 {
            if let Err(error) = post(&client, &url, key.as_deref(), body.clone().into_bytes()).await
            {
                tracing::warn!(%error, "demo: the glitch could not be sent");
            }
        }
        tracing::info!(
            events = burst,
            "demo: injected a tracking glitch (each event sent three times)"
        );
        tokio::time::sleep(timing.every).await;
    }
}

/// The first live visitor the demo's triggers see: a consenting visitor who looks at a
/// product, puts it in the cart and leaves. Left to the traffic, the first abandoned cart
/// of a quiet hour (about four sessions a minute at night) can take minutes to come, and a
/// newcomer would not see the trigger push within the first minutes as it sees the glitch
/// alert: this one is pushed to the inbox once the cart trigger's minute has passed.
pub async fn first_abandoned_cart(address: SocketAddr, key: Option<String>) {
    let Ok(client) = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
    else {
        return;
    };
    let now = SystemClock.now_ms();
    let visitor = format!("demo-first-cart-{now}");
    let event = |kind: &str, ts: i64| {
        serde_json::json!({
            "udid": visitor,
            "type": kind,
            "ts": ts,
            "event_id": format!("{visitor}-{kind}"),
            "channel": "email",
            "campaign": "newsletter_settimanale",
            "product_id": "SKU-10502",
            "page": "/prodotto/borsa-tote-pelle-nera",
            "consent": {"analytics": true, "marketing": true},
        })
    };
    let mut cart = event("add_to_cart", now);
    cart["value"] = serde_json::json!(149.0);
    cart["currency"] = serde_json::json!("EUR");
    let body = format!("{}\n{cart}\n", event("page_view", now - 20_000));
    let url = format!("http://{address}/v1/events");
    match post(&client, &url, key.as_deref(), body.into_bytes()).await {
        Ok(_) => tracing::info!("demo: a first live visitor left a cart"),
        Err(error) => tracing::warn!(%error, "demo: the first abandoned cart could not be sent"),
    }
}
