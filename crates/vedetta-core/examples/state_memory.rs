//! Memory of the pipeline's state with many users active at once.
//!
//! `cargo run --release -p vedetta-core --example state_memory [USERS] [--without-event-ids]
//! [--first-touch-returning [--returning-percent P]]` (default 1,000,000 users). Without event ids the exact-dedup
//! map stays empty, so the resident memory measures the per-user state alone.
//!
//! `--first-touch-returning`: under `pipeline.attribution = "first_touch"`, every user first
//! made three visits, one a day over the three days before (a landing page view through a
//! channel picked at random per visit, so most users switch channels and some come direct),
//! dropped before the measured session: each user comes back with a `first_touch` list of
//! runs, and the estimate shows what the earlier runs cost. With `--returning-percent P`,
//! only P % of the users made those visits (the others are new).
//!
//! Every user has one short session of 2–4 events (page view, add to cart, checkout,
//! purchase, 40 s apart, each with an `event_id`); session starts are spread evenly over
//! 8 minutes of event time, so the whole run covers 10 minutes and no user's state is
//! evicted: they are all active within the allowed lateness at the end. Events are fed in
//! event-time order, deltas are taken every 10,000 records as the processor does.
//!
//! Reports the process's resident memory (`VmRSS`) before and after, its growth per active
//! user, and the pipeline's own estimate from its data structures
//! ([`Pipeline::state_footprint`]), with the exact-dedup ids (per-event state, held 24 h)
//! shown apart. Linux only for RSS (reads `/proc/self/status`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use vedetta_core::pipeline::{AttributionModel, Pipeline, PipelineConfig};
use vedetta_core::record::{EventKind, LogRecord, StoredEvent, UserPseudonym};
use vedetta_core::time::EventTime;

const T0: i64 = 1_712_318_400_000; // 2024-04-05T12:00:00Z
const STARTS_SPREAD_MS: i64 = 8 * 60_000;
const STEP_MS: i64 = 40_000;
const KINDS: [EventKind; 4] = [
    EventKind::PageView,
    EventKind::AddToCart,
    EventKind::Checkout,
    EventKind::Purchase,
];
const CHANNELS: [&str; 5] = ["paid_search", "social", "organic", "email", "direct"];
const DEVICES: [&str; 3] = ["mobile", "desktop", "tablet"];
const REGIONS: [&str; 5] = ["IT-25", "IT-62", "IT-72", "IT-21", "IT-45"];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let with_event_ids = !args.iter().any(|a| a == "--without-event-ids");
    let users: u64 = args
        .iter()
        .enumerate()
        .find(|(i, a)| !a.starts_with("--") && (*i == 0 || args[i - 1] != "--returning-percent"))
        .map(|(_, a)| a)
        .map(|n| n.parse().expect("USERS must be a number"))
        .unwrap_or(1_000_000);

    let first_touch = args.iter().any(|a| a == "--first-touch-returning");
    let returning_percent: u64 = args
        .iter()
        .position(|a| a == "--returning-percent")
        .and_then(|i| args.get(i + 1))
        .map_or(100, |p| {
            p.parse().expect("--returning-percent takes 0 to 100")
        })
        .min(100);
    let config = PipelineConfig {
        attribution: if first_touch {
            AttributionModel::FirstTouch
        } else {
            AttributionModel::LastNonDirect
        },
        ..PipelineConfig::default()
    };
    let mut pipeline = Pipeline::new(config, None);
    let rss_before = rss_bytes();
    let mut offset = 0u64;
    if first_touch {
        // Three earlier visits per user, days -3, -2 and -1, in event-time order.
        for day in (1..=3).rev() {
            for user in (0..users).filter(|u| splitmix(u ^ 77) % 100 < returning_percent) {
                let ts = Events::start_of(users, user) - day * 86_400_000;
                let mut e = event(user, 0, ts, false);
                e.channel = Some(pick(user, &CHANNELS, 10 + day as u64));
                e.order_id = None;
                pipeline.process(offset, &LogRecord::Event(e));
                offset += 1;
                if offset.is_multiple_of(10_000) {
                    pipeline.take_deltas();
                }
            }
        }
        pipeline.take_deltas();
        let history = pipeline.state_footprint();
        println!(
            "history: {offset} earlier visits, {} users held, {} dormant",
            history.users, history.dormant_users
        );
    }

    let mut events = Events::new(users, with_event_ids);
    let mut delta_rows = 0usize;
    let started = std::time::Instant::now();
    while let Some(event) = events.next_event() {
        pipeline.process(offset, &LogRecord::Event(event));
        offset += 1;
        if offset.is_multiple_of(10_000) {
            delta_rows += pipeline.take_deltas().rows.len();
        }
    }
    delta_rows += pipeline.take_deltas().rows.len();
    let elapsed = started.elapsed();
    let rss_after = rss_bytes();

    let active = pipeline.active_users();
    let footprint = pipeline.state_footprint();
    let growth = rss_after.saturating_sub(rss_before);
    let per_user = |bytes: usize| bytes as f64 / active.max(1) as f64;

    println!("users generated           {users}");
    println!("events processed          {offset}");
    println!("delta rows taken          {delta_rows}");
    println!(
        "processing time           {:.2} s ({:.0} events/s, event construction included)",
        elapsed.as_secs_f64(),
        offset as f64 / elapsed.as_secs_f64()
    );
    println!("active users              {active}");
    println!("event ids held (dedup)    {}", footprint.event_ids);
    println!("counters                  {:?}", pipeline.counters());
    println!();
    println!("RSS before                {:>8.1} MiB", mib(rss_before));
    println!("RSS after                 {:>8.1} MiB", mib(rss_after));
    println!(
        "RSS growth                {:>8.1} MiB = {:.0} bytes per active user ({})",
        mib(growth),
        per_user(growth),
        if with_event_ids {
            "exact-dedup ids included"
        } else {
            "no event ids: per-user state alone"
        }
    );
    println!();
    println!("estimate from the data structures:");
    let line = |name: &str, bytes: usize| {
        println!(
            "  {name:<24}{:>8.1} MiB  {:>6.1} bytes/user",
            mib(bytes),
            per_user(bytes)
        );
    };
    line("user map", footprint.user_map_bytes);
    line("users' event lists", footprint.user_events_bytes);
    line("expiry schedule", footprint.expiry_bytes);
    line("earlier first_touch runs", footprint.earlier_runs_bytes);
    if first_touch {
        println!(
            "  users with earlier runs   {} ({:.1} bytes each)",
            footprint.earlier_runs_users,
            footprint.earlier_runs_bytes as f64 / footprint.earlier_runs_users.max(1) as f64
        );
    }
    line("per-user state", footprint.per_user_state_bytes());
    line("exact-dedup ids", footprint.dedup_bytes);
    line(
        "all state",
        footprint.per_user_state_bytes() + footprint.dedup_bytes,
    );
    println!(
        "  exact-dedup per event id  {:.1} bytes",
        footprint.dedup_bytes as f64 / footprint.event_ids.max(1) as f64
    );
    if with_event_ids {
        println!(
            "RSS growth less the dedup estimate: {:.0} bytes per active user",
            per_user(growth.saturating_sub(footprint.dedup_bytes))
        );
    }
    println!(
        "  order ids held            {} ({:.1} bytes each: per order, over 7 days)",
        footprint.orders,
        footprint.order_bytes as f64 / footprint.orders.max(1) as f64
    );
    println!(
        "  orders kept for refunds   {} ({:.1} bytes each: per order, while its user is held \
         and then for the refund horizon)",
        footprint.refund_orders,
        footprint.refund_bytes as f64 / footprint.refund_orders.max(1) as f64
    );
    println!(
        "  RSS growth less the per-order state: {:.0} bytes per active user",
        per_user(growth.saturating_sub(footprint.order_bytes + footprint.refund_bytes))
    );
    println!(
        "  attribution memory        {} bytes in each held user's state (included above)",
        std::mem::size_of::<vedetta_core::pipeline::attribution::Memory>()
    );

    // A day later every user is idle past the lateness: dropped, their memory waiting for
    // the next snapshot to take it to the store.
    let mut later = |offset, kind| {
        let mut e = event(u64::MAX, 0, T0 + 86_400_000, false);
        e.kind = kind;
        pipeline.process(offset, &LogRecord::Event(e));
    };
    later(offset, EventKind::PageView);
    later(offset + 1, EventKind::AddToCart);
    let dropped = pipeline.state_footprint();
    println!(
        "after a day: {} users held, {} dormant memories, {:.1} bytes each until the next \
         snapshot moves them to the store",
        dropped.users,
        dropped.dormant_users,
        dropped.dormant_bytes as f64 / dropped.dormant_users.max(1) as f64
    );
}

/// The events of every user in event-time order: a merge of four sequences, one per step of
/// the session (user `i` starts at `T0 + i × spread / users` and does `2 + i % 3` steps).
struct Events {
    users: u64,
    with_event_ids: bool,
    /// Next user of each step.
    cursors: [u64; 4],
}

impl Events {
    fn new(users: u64, with_event_ids: bool) -> Self {
        Self {
            users,
            with_event_ids,
            cursors: [0; 4],
        }
    }

    fn steps(user: u64) -> usize {
        2 + (user % 3) as usize
    }

    fn start(&self, user: u64) -> i64 {
        Self::start_of(self.users, user)
    }

    fn start_of(users: u64, user: u64) -> i64 {
        T0 + (i128::from(user) * i128::from(STARTS_SPREAD_MS) / i128::from(users)) as i64
    }

    fn next_event(&mut self) -> Option<StoredEvent> {
        let mut best: Option<(i64, usize)> = None;
        for step in 0..4 {
            // Skip users whose session is shorter than this step.
            while self.cursors[step] < self.users && Self::steps(self.cursors[step]) <= step {
                self.cursors[step] += 1;
            }
            let user = self.cursors[step];
            if user >= self.users {
                continue;
            }
            let ts = self.start(user) + step as i64 * STEP_MS;
            if best.is_none_or(|(best_ts, _)| ts < best_ts) {
                best = Some((ts, step));
            }
        }
        let (ts, step) = best?;
        let user = self.cursors[step];
        self.cursors[step] += 1;
        Some(event(user, step, ts, self.with_event_ids))
    }
}

fn pseudonym(user: u64) -> UserPseudonym {
    let mut bytes = [0; 16];
    bytes[..8].copy_from_slice(&splitmix(user).to_le_bytes());
    bytes[8..].copy_from_slice(&splitmix(user ^ 0x5555_5555).to_le_bytes());
    UserPseudonym(bytes)
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn pick(user: u64, names: &[&str], salt: u64) -> String {
    names[(splitmix(user ^ salt) % names.len() as u64) as usize].to_string()
}

fn event(user: u64, step: usize, ts: i64, with_event_id: bool) -> StoredEvent {
    let kind = KINDS[step].clone();
    let purchase = kind == EventKind::Purchase;
    let pick = |names: &[&str], salt: u64| pick(user, names, salt);
    StoredEvent {
        event_id: with_event_id.then(|| format!("{user:x}-{step}")),
        value: purchase.then_some(49.9),
        // One order per purchase, kept for order dedup over 7 days.
        order_id: purchase.then(|| format!("order-{user:x}")),
        // Realistic tagging: the source is on the landing hit only.
        channel: (step == 0).then(|| pick(&CHANNELS, 1)),
        device: Some(pick(&DEVICES, 2)),
        region: Some(pick(&REGIONS, 3)),
        ..StoredEvent::bare(pseudonym(user), kind, EventTime(ts))
    }
}

/// Resident set size of this process, from `/proc/self/status` (0 where unavailable).
fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<usize>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
