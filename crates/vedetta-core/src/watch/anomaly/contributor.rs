//! Which breakdown value explains an anomaly: "conversions fell by 40, and `channel = social`
//! accounts for 85 % of the fall".
//!
//! The evaluator has a model per KPI and breakdown group, so for the anomalous period it knows
//! each part's observed and expected value. The parts may come from several dimensions at
//! once (every channel, every device, …); each dimension's parts add up to the whole, and the
//! single part with the largest share of the whole's deviation, in the same direction, wins.
//! Across dimensions that favours the coarsest explanation that is true ("social", rather than
//! one of its campaigns, when all of social fell), which is what a person acts on.

use crate::watch::notification::Contributor;

/// One breakdown value of a KPI that adds up (a count, revenue, spend).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SumPart<'a> {
    /// `channel`, `campaign`, `device` or `region`.
    pub dimension: &'a str,
    pub value: &'a str,
    pub observed: f64,
    pub expected: f64,
}

/// One breakdown value of a ratio KPI (`numerator / denominator`: CPA is spend over
/// conversions, conversion rate conversions over sessions).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RatioPart<'a> {
    pub dimension: &'a str,
    pub value: &'a str,
    pub numerator: f64,
    pub denominator: f64,
    /// The part's own expected ratio (its model's forecast).
    pub expected_ratio: f64,
}

/// The part of an additive KPI that carries most of the deviation `whole_observed −
/// whole_expected`: its share is its own deviation over the whole's. A share above 1 means
/// other parts moved the other way. `None` when the whole did not deviate, or no part moved
/// the same way as the whole. Non-finite numbers are skipped.
pub fn top_sum_contributor(
    whole_observed: f64,
    whole_expected: f64,
    parts: &[SumPart<'_>],
) -> Option<Contributor> {
    let deviation = whole_observed - whole_expected;
    if !deviation.is_finite() || deviation == 0.0 {
        return None;
    }
    best(parts.iter().map(|part| {
        let share = (part.observed - part.expected) / deviation;
        (
            part.dimension,
            part.value,
            share,
            part.observed,
            part.expected,
        )
    }))
}

/// The part of a ratio KPI that carries most of the deviation of the whole ratio.
///
/// Part *i* contributes `(Nᵢ − Eᵢ·Dᵢ) / D` to the whole ratio `N / D`: what the whole would
/// lose if that part had kept its expected ratio at its observed volume. Its share is that
/// over `whole_observed − whole_expected`. `whole_denominator` is `D` (every dimension's parts
/// sum to it). Parts with no denominator (undefined ratio) are skipped.
pub fn top_ratio_contributor(
    whole_observed: f64,
    whole_expected: f64,
    whole_denominator: f64,
    parts: &[RatioPart<'_>],
) -> Option<Contributor> {
    let deviation = whole_observed - whole_expected;
    if !deviation.is_finite() || deviation == 0.0 || whole_denominator <= 0.0 {
        return None;
    }
    best(parts.iter().filter(|p| p.denominator > 0.0).map(|part| {
        let contribution =
            (part.numerator - part.expected_ratio * part.denominator) / whole_denominator;
        (
            part.dimension,
            part.value,
            contribution / deviation,
            part.numerator / part.denominator,
            part.expected_ratio,
        )
    }))
}

/// The candidate with the largest positive, finite share; the first on ties.
fn best<'a>(
    candidates: impl Iterator<Item = (&'a str, &'a str, f64, f64, f64)>,
) -> Option<Contributor> {
    let mut top: Option<(&str, &str, f64, f64, f64)> = None;
    for candidate in candidates {
        let share = candidate.2;
        if !(share.is_finite() && share > 0.0 && candidate.3.is_finite() && candidate.4.is_finite())
        {
            continue;
        }
        if top.is_none_or(|t| share > t.2) {
            top = Some(candidate);
        }
    }
    top.map(
        |(dimension, value, share, observed, expected)| Contributor {
            dimension: dimension.to_string(),
            value: value.to_string(),
            share,
            observed,
            expected,
        },
    )
}
