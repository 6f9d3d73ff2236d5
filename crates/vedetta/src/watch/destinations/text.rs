//! What every message says about a notice, in Italian or English: the rule, the group,
//! the value against the threshold or the expected band, the window in Europe/Rome time,
//! the drill-down link. Numbers in the language's format (it-IT: `1.234,56 €`).

use serde::Deserialize;
use vedetta_core::watch::notification::{AlertNotice, AlertStatus, Notification, Unit};

/// The language of a destination's messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    #[default]
    En,
    It,
}

/// The longest a single value (a rule name, a group value, a summary) is shown: values
/// come from event data, and one long campaign name must not push the message past a
/// receiver's limit. Whole notices are left out, never cut; only such a field is clipped.
pub const MAX_FIELD_CHARS: usize = 200;

/// Clips `s` to [`MAX_FIELD_CHARS`] characters at a character boundary.
pub fn clip(s: &str) -> String {
    match s.char_indices().nth(MAX_FIELD_CHARS) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_owned(),
    }
}

/// `1234.5` → `1.234,50` (it) or `1,234.50` (en), with `decimals` digits.
pub fn number(x: f64, decimals: usize, lang: Lang) -> String {
    if !x.is_finite() {
        return match lang {
            Lang::It => "n.d.".into(),
            Lang::En => "n/a".into(),
        };
    }
    let (thousands, point) = match lang {
        Lang::It => ('.', ','),
        Lang::En => (',', '.'),
    };
    let formatted = format!("{:.*}", decimals, x.abs());
    let (int, frac) = match formatted.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (formatted.as_str(), None),
    };
    let mut grouped = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(thousands);
        }
        grouped.push(c);
    }
    let negative = x < 0.0 && formatted.chars().any(|c| c.is_ascii_digit() && c != '0');
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    out.push_str(&grouped);
    if let Some(frac) = frac {
        out.push(point);
        out.push_str(frac);
    }
    out
}

/// A value in its unit: `1.234,56 €` / `€1,234.56`, `12,5 %` / `12.5%`, `1.234`, `2,5 s`.
pub fn value(x: f64, unit: Unit, lang: Lang) -> String {
    if !x.is_finite() {
        return number(x, 0, lang);
    }
    match (unit, lang) {
        (Unit::Money, Lang::It) => format!("{} €", number(x, 2, lang)),
        (Unit::Money, Lang::En) if x < 0.0 => format!("-€{}", number(-x, 2, lang)),
        (Unit::Money, Lang::En) => format!("€{}", number(x, 2, lang)),
        (Unit::Ratio, Lang::It) => format!("{} %", number(x * 100.0, 1, lang)),
        (Unit::Ratio, Lang::En) => format!("{}%", number(x * 100.0, 1, lang)),
        (Unit::Count, _) if x.fract() == 0.0 => number(x, 0, lang),
        (Unit::Count, _) => number(x, 2, lang),
        (Unit::Seconds, _) => format!("{} s", number(x, 1, lang)),
    }
}

/// The window `[start, end)` in Europe/Rome time.
pub fn window(start_ms: i64, end_ms: i64, lang: Lang) -> String {
    let tz = jiff::tz::TimeZone::get("Europe/Rome").unwrap_or(jiff::tz::TimeZone::UTC);
    let at = |ms: i64| {
        jiff::Timestamp::from_millisecond(ms)
            .ok()
            .map(|t| t.to_zoned_datetime(tz.clone()))
    };
    let (Some(start), Some(end)) = (at(start_ms), at(end_ms)) else {
        return "?".into();
    };
    let day = match lang {
        Lang::It => "%d/%m/%Y",
        Lang::En => "%Y-%m-%d",
    };
    let first = start.strftime(&format!("{day} %H:%M")).to_string();
    let last = if start.date() == end.date() {
        end.strftime("%H:%M").to_string()
    } else {
        end.strftime(&format!("{day} %H:%M")).to_string()
    };
    let zone = end.strftime("%Z").to_string();
    match lang {
        Lang::It => format!("{first}–{last} ora di Roma ({zone})"),
        Lang::En => format!("{first}–{last} Rome time ({zone})"),
    }
}

/// The status word.
pub fn status(status: AlertStatus, lang: Lang) -> &'static str {
    match (status, lang) {
        (AlertStatus::Firing, Lang::En) => "FIRING",
        (AlertStatus::Resolved, Lang::En) => "RESOLVED",
        (AlertStatus::Firing, Lang::It) => "ATTIVO",
        (AlertStatus::Resolved, Lang::It) => "RISOLTO",
    }
}

/// One notice, as lines a person reads. Fields are clipped, not escaped: each destination
/// escapes for its own format.
#[derive(Clone, Debug)]
pub struct NoticeText {
    /// `FIRING cpa_high (warning)`.
    pub headline: String,
    /// `channel=paid_search, campaign=brand`.
    pub group: String,
    pub summary: String,
    /// `cpa €23.40, threshold €20.00`.
    pub measure: String,
    pub contributor: Option<String>,
    /// `window: 2024-04-05 14:00–14:10 Rome time (CEST)`.
    pub window: String,
    pub link: String,
}

impl NoticeText {
    /// The notice as plain text lines.
    pub fn plain(&self) -> String {
        let mut lines = vec![
            self.headline.clone(),
            self.group.clone(),
            self.summary.clone(),
            self.measure.clone(),
        ];
        lines.extend(self.contributor.clone());
        lines.push(self.window.clone());
        lines.push(self.link.clone());
        lines.retain(|l| !l.is_empty());
        lines.join("\n")
    }
}

/// The group of a notice (`(all)` for the whole).
pub fn group(notice: &AlertNotice, lang: Lang) -> String {
    if notice.group.is_empty() {
        return match lang {
            Lang::It => "(tutto)".into(),
            Lang::En => "(all)".into(),
        };
    }
    clip(
        &notice
            .group
            .iter()
            .map(|(k, v)| format!("{}={}", clip(k), clip(v)))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

pub fn describe(notification: &Notification, notice: &AlertNotice, lang: Lang) -> NoticeText {
    let v = |x: f64| value(x, notice.unit, lang);
    let metric = clip(&notice.metric);
    let mut measure = match notice.value {
        Some(x) => format!("{metric} {}", v(x)),
        None => match lang {
            Lang::It => format!("{metric}: nessun dato"),
            Lang::En => format!("{metric}: no data"),
        },
    };
    if let Some(t) = notice.threshold {
        measure.push_str(&match lang {
            Lang::It => format!(", soglia {} ({})", v(t), clip(&notice.expr)),
            Lang::En => format!(", threshold {} ({})", v(t), clip(&notice.expr)),
        });
    }
    if let Some((low, high)) = notice.expected {
        measure.push_str(&match lang {
            Lang::It => format!(", atteso tra {} e {}", v(low), v(high)),
            Lang::En => format!(", expected {} to {}", v(low), v(high)),
        });
    }
    let contributor = notice.contributor.as_ref().map(|c| {
        let share = value(c.share, Unit::Ratio, lang);
        match lang {
            Lang::It => format!(
                "contributo maggiore: {}={} ({share} dello scostamento; {} contro {} attesi)",
                clip(&c.dimension),
                clip(&c.value),
                v(c.observed),
                v(c.expected)
            ),
            Lang::En => format!(
                "top contributor: {}={} ({share} of the deviation; {} against {} expected)",
                clip(&c.dimension),
                clip(&c.value),
                v(c.observed),
                v(c.expected)
            ),
        }
    });
    let window_label = match lang {
        Lang::It => "finestra",
        Lang::En => "window",
    };
    NoticeText {
        headline: format!(
            "{} {} ({})",
            status(notice.status, lang),
            clip(&notice.rule),
            notice.severity.as_str()
        ),
        group: group(notice, lang),
        summary: clip(&notice.summary),
        measure,
        contributor,
        window: format!(
            "{window_label}: {}",
            window(notice.window_start_ms, notice.window_end_ms, lang)
        ),
        link: notification.link(notice),
    }
}

/// A one-line title for a notification: `FIRING cpa_high: channel=…` or, for a group of
/// notices, `FIRING cpa_high: 3 groups`.
pub fn title(notification: &Notification, lang: Lang) -> String {
    let word = status(notification.status, lang);
    let mut rules: Vec<&str> = notification
        .notices
        .iter()
        .map(|n| n.rule.as_str())
        .collect();
    rules.dedup();
    let rules = clip(&rules.join(", "));
    match notification.notices.as_slice() {
        [] => format!("{word} {rules}"),
        [one] => format!("{word} {rules}: {}", group(one, lang)),
        many => match lang {
            Lang::It => format!("{word} {rules}: {} gruppi", many.len()),
            Lang::En => format!("{word} {rules}: {} groups", many.len()),
        },
    }
}

/// `&`, `<`, `>` (and quotes) escaped for HTML and Slack's mrkdwn.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_follow_the_language() {
        assert_eq!(value(1234.56, Unit::Money, Lang::It), "1.234,56 €");
        assert_eq!(value(1234.56, Unit::Money, Lang::En), "€1,234.56");
        assert_eq!(
            value(-1234567.891, Unit::Money, Lang::It),
            "-1.234.567,89 €"
        );
        assert_eq!(value(-0.001, Unit::Money, Lang::It), "0,00 €");
        assert_eq!(value(0.125, Unit::Ratio, Lang::It), "12,5 %");
        assert_eq!(value(0.125, Unit::Ratio, Lang::En), "12.5%");
        assert_eq!(value(1234.0, Unit::Count, Lang::It), "1.234");
        assert_eq!(value(999.0, Unit::Count, Lang::En), "999");
        assert_eq!(value(2.5, Unit::Seconds, Lang::It), "2,5 s");
        assert_eq!(value(f64::NAN, Unit::Money, Lang::It), "n.d.");
    }

    #[test]
    fn windows_are_in_rome_time_across_summer_time() {
        // 2024-04-05 12:00 UTC is 14:00 CEST.
        assert_eq!(
            window(1_712_318_400_000, 1_712_319_000_000, Lang::It),
            "05/04/2024 14:00–14:10 ora di Roma (CEST)"
        );
        // 2024-01-15 22:50–23:10 UTC is 23:50–00:10 CET, across midnight in Rome.
        assert_eq!(
            window(1_705_359_000_000, 1_705_360_200_000, Lang::En),
            "2024-01-15 23:50–2024-01-16 00:10 Rome time (CET)"
        );
    }

    #[test]
    fn a_notice_names_rule_group_value_threshold_window_and_link() {
        let n = Notification::example();
        let t = describe(&n, &n.notices[0], Lang::It);
        let text = t.plain();
        for part in [
            "ATTIVO cpa_high (warning)",
            "channel=paid_search, campaign=brand",
            "cpa 23,40 €, soglia 20,00 € (cpa > 20)",
            "finestra: 05/04/2024 14:00–14:10",
            "http://127.0.0.1:8080/?channel=paid_search&campaign=brand",
        ] {
            assert!(text.contains(part), "{part:?} not in {text}");
        }
        let long = "x".repeat(5_000);
        assert_eq!(clip(&long).chars().count(), MAX_FIELD_CHARS + 1);
        assert_eq!(escape("<a&b>"), "&lt;a&amp;b&gt;");
    }
}
