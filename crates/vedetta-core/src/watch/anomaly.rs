//! Anomaly detection on hourly and daily KPI series: the model behind the `anomaly` rules.
//!
//! One [`AnomalyModel`] (validated [`AnomalyConfig`] and the reporting time zone) serves every
//! series of a rule; each series (a KPI for one breakdown group) keeps a small
//! [`SeriesState`] that the evaluator stores between runs ([`SeriesState::encode`]: a version
//! byte and postcard). Pure: no clock, no I/O; the evaluator hands in each period as it closes.
//!
//! The model is a robust seasonal exponential smoothing (ETS(A,N,A), Holt–Winters additive
//! without trend) on a variance-stabilised scale:
//!
//! - **Seasonality**: one seasonal term per hour of the week (168, hourly series) or per day of
//!   the week (7, daily series), in local time of the configured zone, so both the daily cycle
//!   and the weekly one (weekends) are learnt, including a weekend's different hourly shape.
//!   A DST day simply skips (23 h) or revisits (25 h) its 02:00 slot.
//! - **Level**: a slowly moving offset that follows level changes and trends between weeks.
//! - **Scale**: a winsorised running variance of the one-step-ahead residuals, per hour of the
//!   day (noise is larger at night for ratios), shrunk toward a global one. Because the
//!   residuals are one step ahead, the band also covers the error of the seasonal estimate.
//! - **Robustness**: a residual moves the level, the seasonal term and the scale by at most
//!   [`UPDATE_CLAMP`] standard deviations, so a spike does not teach the model that spikes are
//!   normal, while a lasting shift is still learnt over days.
//! - **Counts** are modelled as `2·√(y + 3/8)` (Anscombe): Poisson noise then has a standard
//!   deviation near 1 whatever the volume, so one band width fits 2 and 200 conversions an hour.
//!   **Ratios** (CPA, conversion rate) are modelled as `√y`, which tames their right skew at
//!   low volume; an hour where the ratio is undefined (no conversions) is `None` and teaches
//!   nothing.
//! - **Two tests**: a period is anomalous when it alone lies outside the band, or when it and
//!   the two periods before it together do (their scores, each capped at
//!   [`SUSTAINED_CAP`], summed over √3): a level shift or an outage of a few hours that no
//!   single hour shows at this sensitivity.
//!
//! Why not MSTL or fitted ETS (the `augurs` crates): both refit the whole history (1,440
//! points for 60 days) at every update, where this model does O(1) work per closed hour, which
//! is what 10,000 series per hour within one second of CPU needs, and it adds no dependency.
//! `docs/anomaly.md` gives the evaluation that chose the defaults.
//!
//! [`contributor`] finds the breakdown value that explains most of an anomaly's deviation.

pub mod contributor;

pub use contributor::{RatioPart, SumPart, top_ratio_contributor, top_sum_contributor};

use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

/// The stored format of a [`SeriesState`] this build writes and reads.
pub const SERIES_STATE_FORMAT: u8 = 1;

/// Residuals are clamped at this many standard deviations before they update the model.
pub const UPDATE_CLAMP: f64 = 2.5;

/// Each score is capped at this many deviations before it enters the three-period test, so
/// that one spike alone cannot keep the sustained test firing after it.
pub const SUSTAINED_CAP: f64 = 4.0;

/// Periods in the sustained test.
const SUSTAINED_PERIODS: usize = 3;

/// `E[min(Z², c²)]` for a standard normal Z and c = [`UPDATE_CLAMP`]: the winsorised variance
/// underestimates the true one by this factor, which is divided out.
const WINSORISED_VARIANCE: f64 = 0.9776;

/// The scale needs this many residuals (a day of hours) before any check is made.
const MIN_SCALE_RESIDUALS: u32 = 24;

/// The weight of the global variance when shrinking a per-hour one (in residuals).
const SCALE_PRIOR_WEIGHT: f64 = 5.0;
/// At most this many residuals of weight for the per-hour variance in the shrinkage.
const SCALE_SLOT_WEIGHT_CAP: f64 = 10.0;

/// The band half-width of a count series when a rule names none: the smallest of the
/// evaluation's sweep that raised nothing on any quiet series (`docs/anomaly.md`).
pub const DEFAULT_COUNT_DEVIATIONS: f64 = 4.5;
/// The same for ratios, whose low-volume hours have heavier tails.
pub const DEFAULT_RATIO_DEVIATIONS: f64 = 6.5;

/// Which periods a series has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    /// Local hours; seasonality per hour of the week.
    Hourly,
    /// Local calendar days (23 or 25 hours on DST days); seasonality per day of the week.
    Daily,
}

/// Which deviations are anomalies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Above the band only.
    Up,
    /// Below the band only.
    Down,
    #[default]
    Both,
}

/// What the numbers of a series are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeriesKind {
    /// A count per period (conversions, sessions, duplicates). A period with no events is a
    /// zero, and the caller passes `Some(0.0)`.
    #[default]
    Count,
    /// A ratio or a money amount (CPA, conversion rate, revenue). `None` where undefined.
    Ratio,
}

/// An anomaly rule's model settings, as the rule file gives them.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalyConfig {
    /// Half-width of the expected band, in robust standard deviations, in [1, 20]. This is the
    /// rule's sensitivity: smaller finds more and raises more false alarms. Default:
    /// [`DEFAULT_COUNT_DEVIATIONS`] or [`DEFAULT_RATIO_DEVIATIONS`].
    #[serde(default)]
    pub deviations: Option<f64>,
    /// Periods with a value a series must have seen before it is checked. Hourly: 192 (eight
    /// days) to 8,784 (a year); daily: 8 to 732.
    #[serde(default)]
    pub min_history: Option<u32>,
    #[serde(default)]
    pub direction: Direction,
    pub granularity: Granularity,
    #[serde(default)]
    pub kind: SeriesKind,
}

impl AnomalyConfig {
    /// The defaults for a granularity and kind: the evaluated band width, both directions,
    /// two weeks of history.
    pub fn new(granularity: Granularity, kind: SeriesKind) -> Self {
        Self {
            deviations: None,
            min_history: None,
            direction: Direction::Both,
            granularity,
            kind,
        }
    }

    /// The band half-width in force: the configured one or the kind's default.
    pub fn deviations_in_force(&self) -> f64 {
        self.deviations.unwrap_or(match self.kind {
            SeriesKind::Count => DEFAULT_COUNT_DEVIATIONS,
            SeriesKind::Ratio => DEFAULT_RATIO_DEVIATIONS,
        })
    }

    /// The minimum history in force: the configured one or two weeks.
    pub fn min_history_periods(&self) -> u32 {
        self.min_history
            .unwrap_or_else(|| 2 * Params::of(self.granularity).season_len as u32)
    }
}

/// A setting out of bounds, naming the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("anomaly.{field}: {reason}")]
pub struct AnomalyConfigError {
    pub field: &'static str,
    pub reason: String,
}

/// Why an update or a check was refused. The state is unchanged when one is returned.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SeriesError {
    #[error("{start_ms} is not the start of a local {granularity:?} period")]
    NotAligned {
        start_ms: i64,
        granularity: Granularity,
    },
    #[error("{start_ms} is outside the supported time range")]
    OutOfRange { start_ms: i64 },
    #[error("the period starting at {start_ms} is not after the last one learnt")]
    NotAfterLast { start_ms: i64 },
    #[error("value {value} is not a finite number ≥ 0")]
    BadValue { value: f64 },
    #[error("the series state is {found:?} {found_kind:?}, the rule is {granularity:?} {kind:?}")]
    Mismatch {
        found: Granularity,
        found_kind: SeriesKind,
        granularity: Granularity,
        kind: SeriesKind,
    },
}

/// Why stored bytes are not a series state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateFormatError {
    #[error("a series state of format {found}; this build reads format {SERIES_STATE_FORMAT}")]
    Version { found: u8 },
    #[error("an empty series state")]
    Empty,
    #[error("a series state does not decode: {0}")]
    Body(String),
    #[error("a series state is inconsistent: {0}")]
    Inconsistent(&'static str),
}

/// Fixed smoothing settings per granularity, chosen with the evaluation.
#[derive(Clone, Copy, Debug)]
struct Params {
    /// Seasonal slots: hours of the week or days of the week.
    season_len: usize,
    /// Scale slots: hours of the day (hourly) or one.
    scale_len: usize,
    /// Level smoothing per period.
    alpha: f64,
    /// Floor of the seasonal smoothing per visit of a slot (the first visits average).
    gamma: f64,
    /// Floor of the smoothing of a per-hour variance, per visit.
    beta_slot: f64,
    /// Floor of the smoothing of the global variance, per period.
    beta_global: f64,
}

impl Params {
    const fn of(granularity: Granularity) -> Params {
        match granularity {
            Granularity::Hourly => Params {
                season_len: 168,
                scale_len: 24,
                alpha: 0.02,
                gamma: 0.2,
                beta_slot: 0.1,
                beta_global: 0.02,
            },
            Granularity::Daily => Params {
                season_len: 7,
                scale_len: 1,
                alpha: 0.1,
                gamma: 0.2,
                beta_slot: 0.1,
                beta_global: 0.1,
            },
        }
    }
}

/// A validated anomaly model: settings and time zone, shared by every series of a rule.
#[derive(Clone, Debug)]
pub struct AnomalyModel {
    config: AnomalyConfig,
    deviations: f64,
    min_history: u32,
    zone: TimeZone,
    params: Params,
}

/// Where a period falls: its ordering key and its seasonal and scale slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    period: i64,
    season: usize,
    scale: usize,
}

/// The expected band of a period, in the series' own units.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Band {
    pub expected: f64,
    pub low: f64,
    pub high: f64,
}

/// A value outside its band, in the rule's direction.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    pub observed: f64,
    pub expected: f64,
    pub low: f64,
    pub high: f64,
    /// How far out, in robust standard deviations of the model scale (≥ the band's width).
    pub score: f64,
    /// `Up` or `Down`, never `Both`.
    pub direction: Direction,
    /// Found by the three-period test: this period and the two before it are out together,
    /// though this one alone may lie inside its band.
    pub sustained: bool,
}

impl AnomalyModel {
    /// Validates a config for the given zone (`Europe/Rome` for Vedetta's reports).
    pub fn new(config: AnomalyConfig, zone: TimeZone) -> Result<Self, AnomalyConfigError> {
        let deviations = config.deviations_in_force();
        if !(deviations.is_finite() && (1.0..=20.0).contains(&deviations)) {
            return Err(AnomalyConfigError {
                field: "deviations",
                reason: format!("{deviations} is not in [1, 20]"),
            });
        }
        let params = Params::of(config.granularity);
        let bounds = match config.granularity {
            Granularity::Hourly => (192, 8_784),
            Granularity::Daily => (8, 732),
        };
        let min_history = config.min_history_periods();
        if !(bounds.0..=bounds.1).contains(&min_history) {
            return Err(AnomalyConfigError {
                field: "min_history",
                reason: format!(
                    "{min_history} is not in [{}, {}] {} periods: the model needs a week and a day \
                     to learn the weekly cycle and the noise",
                    bounds.0,
                    bounds.1,
                    match config.granularity {
                        Granularity::Hourly => "hourly",
                        Granularity::Daily => "daily",
                    }
                ),
            });
        }
        Ok(Self {
            config,
            deviations,
            min_history,
            zone,
            params,
        })
    }

    pub fn config(&self) -> &AnomalyConfig {
        &self.config
    }

    /// A series that has seen nothing.
    pub fn new_series(&self) -> SeriesState {
        SeriesState {
            granularity: self.config.granularity,
            kind: self.config.kind,
            last_period: None,
            recent_scores: [f32::NAN; SUSTAINED_PERIODS - 1],
            observed: 0,
            level: 0.0,
            seasonal: vec![0.0; self.params.season_len],
            seasonal_visits: vec![0; self.params.season_len],
            slot_variance: vec![0.0; self.params.scale_len],
            slot_residuals: vec![0; self.params.scale_len],
            global_variance: 0.0,
            global_residuals: 0,
        }
    }

    /// Learns the period starting at `start_ms` (a local hour or day start), once it has
    /// closed. Periods must come in increasing order; a skipped period teaches nothing (for a
    /// count, pass `Some(0.0)` for a period without events). `None`: the value is undefined.
    pub fn update(
        &self,
        state: &mut SeriesState,
        start_ms: i64,
        value: Option<f64>,
    ) -> Result<(), SeriesError> {
        self.matches(state)?;
        let slot = self.slot(start_ms)?;
        if state.last_period.is_some_and(|last| slot.period <= last) {
            return Err(SeriesError::NotAfterLast { start_ms });
        }
        let z = match value {
            Some(v) => Some(self.transform(v)?),
            None => None,
        };
        let consecutive = state.last_period == Some(slot.period - 1);
        state.last_period = Some(slot.period);
        let Some(z) = z else {
            state.recent_scores = [f32::NAN; SUSTAINED_PERIODS - 1];
            return Ok(());
        };
        let score = self
            .forecast_unchecked(state, slot)
            .map_or(f32::NAN, |(forecast, sigma)| {
                ((z - forecast) / sigma).clamp(-SUSTAINED_CAP, SUSTAINED_CAP) as f32
            });
        if consecutive {
            state.recent_scores.rotate_right(1);
            state.recent_scores[0] = score;
        } else {
            state.recent_scores = [f32::NAN; SUSTAINED_PERIODS - 1];
            state.recent_scores[0] = score;
        }
        state.observed = state.observed.saturating_add(1);
        let p = self.params;
        let visits = state.seasonal_visits[slot.season];
        if visits == 0 {
            // First visit of this hour of the week: the slot is what it was, relative to the
            // current level. No residual exists yet.
            state.seasonal[slot.season] = (z - f64::from(state.level)) as f32;
            state.seasonal_visits[slot.season] = 1;
            return Ok(());
        }
        let forecast = f64::from(state.level) + f64::from(state.seasonal[slot.season]);
        let residual = z - forecast;
        let sigma = state.sigma(slot.scale, self.config.kind, forecast);
        let clamped = match sigma {
            Some(sigma) => residual.clamp(-UPDATE_CLAMP * sigma, UPDATE_CLAMP * sigma),
            None => residual,
        };
        state.level = (f64::from(state.level) + p.alpha * clamped) as f32;
        // The first visits average the slot's values; later ones smooth with `gamma`.
        let gamma = (1.0 / (f64::from(visits) + 1.0)).max(p.gamma);
        state.seasonal[slot.season] =
            (f64::from(state.seasonal[slot.season]) + gamma * (1.0 - p.alpha) * clamped) as f32;
        state.seasonal_visits[slot.season] = visits.saturating_add(1);

        let squared = clamped * clamped;
        let n = state.slot_residuals[slot.scale];
        let beta = (1.0 / (f64::from(n) + 1.0)).max(p.beta_slot);
        let v = f64::from(state.slot_variance[slot.scale]);
        state.slot_variance[slot.scale] = (v + beta * (squared - v)) as f32;
        state.slot_residuals[slot.scale] = n.saturating_add(1);
        let n = state.global_residuals;
        let beta = (1.0 / (f64::from(n) + 1.0)).max(p.beta_global);
        let v = f64::from(state.global_variance);
        state.global_variance = (v + beta * (squared - v)) as f32;
        state.global_residuals = n.saturating_add(1);
        Ok(())
    }

    /// The expected band of the period starting at `start_ms` at this sensitivity; `None`
    /// while the series has too little history (or has never seen this slot).
    pub fn expected(
        &self,
        state: &SeriesState,
        start_ms: i64,
    ) -> Result<Option<Band>, SeriesError> {
        self.matches(state)?;
        let slot = self.slot(start_ms)?;
        Ok(self.forecast(state, slot).map(|(z, sigma)| {
            let k = self.deviations;
            Band {
                expected: self.inverse(z),
                low: self.inverse(z - k * sigma),
                high: self.inverse(z + k * sigma),
            }
        }))
    }

    /// Checks the closed period starting at `start_ms` before it is learnt: `Some` when its
    /// value lies outside the band in the rule's direction. `None` also when the value is
    /// undefined or the history too short. Call it, then [`AnomalyModel::update`].
    pub fn check(
        &self,
        state: &SeriesState,
        start_ms: i64,
        observed: Option<f64>,
    ) -> Result<Option<Anomaly>, SeriesError> {
        self.matches(state)?;
        let slot = self.slot(start_ms)?;
        let Some(observed) = observed else {
            return Ok(None);
        };
        let z = self.transform(observed)?;
        let Some((forecast, sigma)) = self.forecast(state, slot) else {
            return Ok(None);
        };
        let single = (z - forecast) / sigma;
        let k = self.deviations;
        let (score, sustained) = match self.sustained_score(state, slot, single) {
            Some(s) if s.abs() > k && single.abs() <= k => (s, true),
            _ => (single, false),
        };
        let direction = if score > k {
            Direction::Up
        } else if score < -k {
            Direction::Down
        } else {
            return Ok(None);
        };
        if self.config.direction != Direction::Both && self.config.direction != direction {
            return Ok(None);
        }
        Ok(Some(Anomaly {
            observed,
            expected: self.inverse(forecast),
            low: self.inverse(forecast - k * sigma),
            high: self.inverse(forecast + k * sigma),
            score: score.abs(),
            direction,
            sustained,
        }))
    }

    /// The signed score of a value (residual over scale), whatever the sensitivity: for
    /// evaluations that sweep the band width over one run.
    pub fn score(
        &self,
        state: &SeriesState,
        start_ms: i64,
        observed: f64,
    ) -> Result<Option<f64>, SeriesError> {
        self.matches(state)?;
        let slot = self.slot(start_ms)?;
        let z = self.transform(observed)?;
        Ok(self
            .forecast(state, slot)
            .map(|(forecast, sigma)| (z - forecast) / sigma))
    }

    /// The three-period score ending with the period starting at `start_ms`, for a value:
    /// `None` when the two periods before it were not both scored.
    pub fn sustained(
        &self,
        state: &SeriesState,
        start_ms: i64,
        observed: f64,
    ) -> Result<Option<f64>, SeriesError> {
        let Some(single) = self.score(state, start_ms, observed)? else {
            return Ok(None);
        };
        Ok(self.sustained_score(state, self.slot(start_ms)?, single))
    }

    fn sustained_score(&self, state: &SeriesState, slot: Slot, single: f64) -> Option<f64> {
        if state.last_period != Some(slot.period - 1) {
            return None;
        }
        let mut sum = single.clamp(-SUSTAINED_CAP, SUSTAINED_CAP);
        for recent in state.recent_scores {
            if !recent.is_finite() {
                return None;
            }
            sum += f64::from(recent);
        }
        Some(sum / (SUSTAINED_PERIODS as f64).sqrt())
    }

    /// Forecast and scale on the model's scale, once the series may be checked.
    fn forecast(&self, state: &SeriesState, slot: Slot) -> Option<(f64, f64)> {
        if state.observed < self.min_history {
            return None;
        }
        self.forecast_unchecked(state, slot)
    }

    /// Forecast and scale whatever the history, once the slot and the scale have data.
    fn forecast_unchecked(&self, state: &SeriesState, slot: Slot) -> Option<(f64, f64)> {
        if state.seasonal_visits[slot.season] == 0 {
            return None;
        }
        let forecast = f64::from(state.level) + f64::from(state.seasonal[slot.season]);
        let sigma = state.sigma(slot.scale, self.config.kind, forecast)?;
        Some((forecast, sigma))
    }

    fn matches(&self, state: &SeriesState) -> Result<(), SeriesError> {
        if state.granularity == self.config.granularity && state.kind == self.config.kind {
            Ok(())
        } else {
            Err(SeriesError::Mismatch {
                found: state.granularity,
                found_kind: state.kind,
                granularity: self.config.granularity,
                kind: self.config.kind,
            })
        }
    }

    fn transform(&self, value: f64) -> Result<f64, SeriesError> {
        if !value.is_finite() || value < 0.0 {
            return Err(SeriesError::BadValue { value });
        }
        Ok(match self.config.kind {
            SeriesKind::Count => 2.0 * (value + 0.375).sqrt(),
            SeriesKind::Ratio => value.sqrt(),
        })
    }

    /// Back to the series' units; KPIs are never negative.
    fn inverse(&self, z: f64) -> f64 {
        match self.config.kind {
            SeriesKind::Count if z <= 0.0 => 0.0,
            SeriesKind::Count => ((z / 2.0).powi(2) - 0.375).max(0.0),
            SeriesKind::Ratio if z <= 0.0 => 0.0,
            SeriesKind::Ratio => z * z,
        }
    }

    /// The slots of a period start, in local time; refuses a time that starts no period.
    fn slot(&self, start_ms: i64) -> Result<Slot, SeriesError> {
        let instant = jiff::Timestamp::from_millisecond(start_ms)
            .map_err(|_| SeriesError::OutOfRange { start_ms })?;
        let local = self.zone.to_datetime(instant);
        let on_hour = local.minute() == 0 && local.second() == 0 && local.subsec_nanosecond() == 0;
        let granularity = self.config.granularity;
        let aligned = match granularity {
            Granularity::Hourly => on_hour,
            // A day starts at local midnight (or at the first instant of the day where a
            // zone skips midnight: then the hour is not 0, which no Vedetta zone does).
            Granularity::Daily => on_hour && local.hour() == 0,
        };
        if !aligned {
            return Err(SeriesError::NotAligned {
                start_ms,
                granularity,
            });
        }
        let weekday = local.weekday().to_monday_zero_offset() as usize;
        let hour = local.hour() as usize;
        Ok(match granularity {
            Granularity::Hourly => Slot {
                // Hours are unique and increasing as UTC hours even across DST.
                period: start_ms.div_euclid(3_600_000),
                season: weekday * 24 + hour,
                scale: hour,
            },
            Granularity::Daily => Slot {
                period: days_from_civil(
                    i64::from(local.year()),
                    i64::from(local.month()),
                    i64::from(local.day()),
                ),
                season: weekday,
                scale: 0,
            },
        })
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm): consecutive
/// local days get consecutive numbers, which the sustained test needs.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// What one series has learnt: about 1 KB for an hourly series (168 seasonal terms and 24
/// variances as `f32`, visit counters as bytes), 60 bytes for a daily one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeriesState {
    granularity: Granularity,
    kind: SeriesKind,
    /// Number of the last period learnt (UTC hours, or local days, since the epoch).
    last_period: Option<i64>,
    /// Capped scores of the last periods learnt, newest first (NaN: not scored), for the
    /// sustained test.
    recent_scores: [f32; SUSTAINED_PERIODS - 1],
    /// Periods learnt with a value.
    observed: u32,
    level: f32,
    seasonal: Vec<f32>,
    /// Visits per seasonal slot, saturating at 255 (only the first few matter).
    seasonal_visits: Vec<u8>,
    slot_variance: Vec<f32>,
    slot_residuals: Vec<u8>,
    global_variance: f32,
    global_residuals: u32,
}

impl SeriesState {
    /// Periods learnt with a value.
    pub fn observed_periods(&self) -> u32 {
        self.observed
    }

    /// `[format u8][postcard]`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![SERIES_STATE_FORMAT];
        // Plain data: serializing into a Vec cannot fail.
        if let Ok(body) = postcard::to_allocvec(self) {
            out.extend_from_slice(&body);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, StateFormatError> {
        let state: SeriesState = match bytes.split_first() {
            None => return Err(StateFormatError::Empty),
            Some((&SERIES_STATE_FORMAT, body)) => {
                postcard::from_bytes(body).map_err(|e| StateFormatError::Body(e.to_string()))?
            }
            Some((&found, _)) => return Err(StateFormatError::Version { found }),
        };
        let p = Params::of(state.granularity);
        if state.seasonal.len() != p.season_len
            || state.seasonal_visits.len() != p.season_len
            || state.slot_variance.len() != p.scale_len
            || state.slot_residuals.len() != p.scale_len
        {
            return Err(StateFormatError::Inconsistent("slot counts"));
        }
        let finite = state.level.is_finite()
            && state.global_variance.is_finite()
            && state.global_variance >= 0.0
            && state.seasonal.iter().all(|v| v.is_finite())
            && state
                .slot_variance
                .iter()
                .all(|v| v.is_finite() && *v >= 0.0);
        if !finite {
            return Err(StateFormatError::Inconsistent("non-finite numbers"));
        }
        Ok(state)
    }

    /// The scale of a forecast: the per-hour variance shrunk toward the global one, corrected
    /// for winsorising, with a floor so a constant series does not make every change infinite.
    fn sigma(&self, scale_slot: usize, kind: SeriesKind, forecast: f64) -> Option<f64> {
        if self.global_residuals < MIN_SCALE_RESIDUALS {
            return None;
        }
        let global = f64::from(self.global_variance);
        let weight = f64::from(self.slot_residuals[scale_slot]).min(SCALE_SLOT_WEIGHT_CAP);
        let variance = (weight * f64::from(self.slot_variance[scale_slot])
            + SCALE_PRIOR_WEIGHT * global)
            / (weight + SCALE_PRIOR_WEIGHT)
            / WINSORISED_VARIANCE;
        let floor = match kind {
            // Poisson noise is 1 on this scale; a quarter of it still bounds the score of a
            // series that was always zero and sees its first event.
            SeriesKind::Count => 0.25,
            // 0.5 % of the ratio (on the square-root scale).
            SeriesKind::Ratio => (0.0025 * forecast.abs()).max(1e-9),
        };
        Some(variance.sqrt().max(floor))
    }
}

#[cfg(test)]
mod tests;
