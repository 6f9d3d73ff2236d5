//! Sessions and where they are counted: passes 4 and 5 of the truth, written from
//! `docs/semantics.md` ("Sessions", "Attribution") as plain loops over each user's whole
//! history, sorted once. Nothing is incremental: a session's acquisition is read off its sorted
//! events, and each session looks back over the user's earlier sessions in a list.

use std::collections::HashMap;

use super::LoggedEvent;
use super::dimensions::DIRECT;
use crate::record::EventType;

/// `pipeline.attribution`: which touch a session is credited to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AttributionModel {
    /// A direct session takes the acquisition of the user's latest non-direct session started
    /// within the lookback before it.
    #[default]
    LastNonDirect,
    /// Every session keeps its own acquisition.
    Session,
    /// Every session takes the acquisition of the user's earliest non-direct session (itself
    /// included) started within the lookback before it; with none, its own.
    FirstTouch,
}

impl AttributionModel {
    pub const ALL: [AttributionModel; 3] = [
        AttributionModel::LastNonDirect,
        AttributionModel::Session,
        AttributionModel::FirstTouch,
    ];

    /// The configuration name (`last_non_direct`, `session`, `first_touch`).
    pub fn as_str(self) -> &'static str {
        match self {
            AttributionModel::LastNonDirect => "last_non_direct",
            AttributionModel::Session => "session",
            AttributionModel::FirstTouch => "first_touch",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|model| model.as_str() == name)
    }
}

/// A channel and a campaign: what an event's fields say, or what a session is credited to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct Touch<'a> {
    pub(super) channel: &'a str,
    pub(super) campaign: &'a str,
}

impl Touch<'_> {
    pub(super) fn is_direct(&self) -> bool {
        self.channel == DIRECT
    }
}

/// One session of one user.
#[derive(Debug)]
pub(super) struct Session<'a> {
    /// Indices of its events, sorted by (`ts`, log order): the first is the session's first.
    pub(super) events: Vec<usize>,
    pub(super) start: i64,
    pub(super) converting: bool,
    /// The touch of its earliest non-direct event, else of its first event.
    pub(super) acquisition: Touch<'a>,
    /// Whether any event's touch is non-direct.
    pub(super) non_direct: bool,
    /// Filled by [`attribute`].
    pub(super) attributed: Touch<'a>,
}

/// Pass 4: per user, the accepted events sorted by (`ts`, log order), cut at every gap of
/// `session_gap_ms` or more. Returns each user's sessions in order of start.
pub(super) fn sessionize<'a>(
    events: &[LoggedEvent<'a>],
    accepted: &[bool],
    flagged: &[bool],
    session_gap_ms: i64,
) -> Vec<Vec<Session<'a>>> {
    let is_clean_conversion =
        |index: usize| events[index].event_type == EventType::Purchase && !flagged[index];

    let mut events_by_user: HashMap<&str, Vec<usize>> = HashMap::new();
    for (index, event) in events.iter().enumerate().filter(|(i, _)| accepted[*i]) {
        events_by_user
            .entry(event.user.as_str())
            .or_default()
            .push(index);
    }
    let mut users = Vec::with_capacity(events_by_user.len());
    for mut indices in events_by_user.into_values() {
        indices.sort_by_key(|&index| (events[index].ts, events[index].offset));
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut previous_ts = i64::MIN;
        for index in indices {
            let ts = events[index].ts;
            match groups.last_mut() {
                Some(group) if ts.saturating_sub(previous_ts) < session_gap_ms => group.push(index),
                _ => groups.push(vec![index]),
            }
            previous_ts = ts;
        }
        let sessions = groups
            .into_iter()
            .map(|group| {
                let first = &events[group[0]];
                let earliest_non_direct = group
                    .iter()
                    .map(|&index| events[index].touch())
                    .find(|touch| !touch.is_direct());
                let acquisition = earliest_non_direct.unwrap_or(first.touch());
                Session {
                    start: first.ts,
                    converting: group.iter().any(|&index| is_clean_conversion(index)),
                    acquisition,
                    non_direct: earliest_non_direct.is_some(),
                    attributed: acquisition,
                    events: group,
                }
            })
            .collect();
        users.push(sessions);
    }
    users
}

/// Pass 5: each session's attributed touch, from the user's sessions in order of start.
/// "Within the lookback before S" is `0 < start(S) − start(P) ≤ lookback`.
pub(super) fn attribute(sessions: &mut [Session<'_>], model: AttributionModel, lookback_ms: i64) {
    match model {
        AttributionModel::Session => {
            for session in sessions.iter_mut() {
                session.attributed = session.acquisition;
            }
        }
        AttributionModel::LastNonDirect => {
            for s in 0..sessions.len() {
                let start = sessions[s].start;
                sessions[s].attributed = if sessions[s].non_direct {
                    sessions[s].acquisition
                } else {
                    // The latest earlier non-direct session within the lookback; its own
                    // acquisition, never one it inherited (there is none to inherit: it is
                    // non-direct).
                    sessions[..s]
                        .iter()
                        .filter(|p| p.non_direct && (1..=lookback_ms).contains(&(start - p.start)))
                        .max_by_key(|p| p.start)
                        .map_or(sessions[s].acquisition, |p| p.acquisition)
                };
            }
        }
        AttributionModel::FirstTouch => {
            // The earliest non-direct session P, S itself included, with
            // 0 ≤ start(S) − start(P) ≤ lookback. Sessions are in order of start, so the
            // candidates are among S and those before it.
            for s in 0..sessions.len() {
                let start = sessions[s].start;
                sessions[s].attributed = sessions[..=s]
                    .iter()
                    .filter(|p| p.non_direct && (0..=lookback_ms).contains(&(start - p.start)))
                    .min_by_key(|p| p.start)
                    .map_or(sessions[s].acquisition, |p| p.acquisition);
            }
        }
    }
}
