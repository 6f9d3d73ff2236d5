//! Ad spend from the CSV exports of Google Ads and Meta Ads Manager, for
//! `vedetta send --costs FILE.csv`: each row becomes an ad spend record (docs/events.md).
//!
//! What is recognised (Italian and English exports):
//! - Google Ads: `Giorno`/`Day`, `Campagna`/`Campaign`, `Costo`/`Cost`, `Codice valuta`/
//!   `Valuta`/`Currency code`/`Currency`. Channel `paid_search`, source `google_ads`. The
//!   report's title lines above the header and its `Totale`/`Total` rows are skipped.
//! - Meta: `Giorno`/`Day` or `Inizio dei report`/`Reporting starts`, `Nome della campagna`/
//!   `Campaign name`, `Importo speso (EUR)`/`Amount spent (EUR)` (the currency in the
//!   header) or `Importo speso` with a `Valuta`/`Currency` column. Channel `social` (the
//!   channel grouping of docs/semantics.md reads Meta's paid social as `social`), source
//!   `meta`. A row whose `Reporting ends` is another day than its start is refused: the
//!   export must be broken down by day.
//! - RFC 4180 quoting, a UTF-8 BOM (or a UTF-16 LE export, as "CSV for Excel" writes it),
//!   `,`, `;` or tab as separator (the one most frequent in the header line).
//! - Amounts: `1234.56`, `1,234.56`, and with a decimal comma `1.234,56` / `1234,56` when the
//!   header is Italian or the separator is `;`. A currency sign around the number is
//!   dropped.
//! - Days: `2024-04-05`, or `05/04/2024` and `05.04.2024` (day first) in Italian exports.
//!   The day's spend goes to the first minute of that day in `zone` (the day windows of
//!   the server's time zone then hold it whole).
//!
//! A bad row is reported with its line number (1-based, the line where the row starts) and
//! the others are kept.

use jiff::civil::Date;
use jiff::tz::TimeZone;
use serde_json::{Value, json};

/// Largest export read (a year of daily rows for thousands of campaigns fits easily).
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// The ad platform an export came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    GoogleAds,
    Meta,
}

impl Platform {
    pub fn channel(self) -> &'static str {
        match self {
            Platform::GoogleAds => "paid_search",
            Platform::Meta => "social",
        }
    }

    pub fn source(self) -> &'static str {
        match self {
            Platform::GoogleAds => "google_ads",
            Platform::Meta => "meta",
        }
    }
}

/// An export read: its spend records and the rows refused, by line.
#[derive(Debug)]
pub struct Export {
    pub platform: Platform,
    pub records: Vec<Value>,
    pub errors: Vec<(usize, String)>,
    /// Total rows and blank rows skipped.
    pub skipped: usize,
}

/// The text of an export's bytes: UTF-8 (a BOM dropped) or UTF-16 LE with its BOM.
pub fn decode(bytes: &[u8]) -> Result<String, String> {
    if let Some(rest) = bytes.strip_prefix(&[0xFF, 0xFE]) {
        if !rest.len().is_multiple_of(2) {
            return Err("a UTF-16 file with an odd number of bytes".into());
        }
        let units: Vec<u16> = rest
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        return String::from_utf16(&units).map_err(|_| "not valid UTF-16".into());
    }
    let bytes = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(bytes);
    String::from_utf8(bytes.to_vec()).map_err(|e| {
        format!(
            "not UTF-8 (byte {}): save the export as UTF-8",
            e.utf8_error().valid_up_to()
        )
    })
}

/// Rows of a CSV text: each with the line it starts on (1-based) and its fields.
pub fn parse_csv(text: &str, separator: char) -> Result<Vec<(usize, Vec<String>)>, String> {
    let mut rows = Vec::new();
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut line = 1;
    let mut start = 1;
    let mut quoted = false;
    let mut at_field_start = true;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                '\n' => {
                    line += 1;
                    field.push(c);
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' if at_field_start => {
                quoted = true;
                at_field_start = false;
            }
            c if c == separator => {
                fields.push(std::mem::take(&mut field));
                at_field_start = true;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                fields.push(std::mem::take(&mut field));
                rows.push((start, std::mem::take(&mut fields)));
                line += 1;
                start = line;
                at_field_start = true;
            }
            _ => {
                field.push(c);
                at_field_start = false;
            }
        }
    }
    if quoted {
        return Err(format!(
            "line {start}: a quoted field is not closed before the end of the file"
        ));
    }
    if !field.is_empty() || !fields.is_empty() {
        fields.push(field);
        rows.push((start, fields));
    }
    Ok(rows)
}

/// The separator of a header line: the most frequent of `,`, `;` and tab outside quotes.
fn separator_of(line: &str) -> char {
    let mut counts = [(',', 0), (';', 0), ('\t', 0)];
    let mut quoted = false;
    for c in line.chars() {
        if c == '"' {
            quoted = !quoted;
        } else if !quoted && let Some(slot) = counts.iter_mut().find(|(s, _)| *s == c) {
            slot.1 += 1;
        }
    }
    counts
        .iter()
        .max_by_key(|(_, n)| *n)
        .map_or(',', |(s, _)| *s)
}

fn normal(name: &str) -> String {
    name.trim().trim_matches('"').trim().to_lowercase()
}

#[derive(Debug, Default)]
struct Columns {
    day: Option<usize>,
    day_end: Option<usize>,
    campaign: Option<usize>,
    amount: Option<usize>,
    currency: Option<usize>,
    header_currency: Option<String>,
    platform: Option<Platform>,
    italian: bool,
}

fn columns(header: &[String]) -> Columns {
    let mut c = Columns::default();
    for (i, name) in header.iter().enumerate() {
        let n = normal(name);
        match n.as_str() {
            "giorno" | "data" => {
                c.day = c.day.or(Some(i));
                c.italian = true;
            }
            "day" | "date" => c.day = c.day.or(Some(i)),
            "inizio dei report" => {
                c.day = c.day.or(Some(i));
                c.italian = true;
            }
            "reporting starts" => c.day = c.day.or(Some(i)),
            "fine dei report" | "reporting ends" => c.day_end = Some(i),
            "campagna" | "nome della campagna" => {
                c.campaign = Some(i);
                c.italian = true;
            }
            "campaign" | "campaign name" => c.campaign = Some(i),
            "costo" | "cost" => {
                c.amount = Some(i);
                c.platform = Some(Platform::GoogleAds);
                c.italian |= n == "costo";
            }
            "codice valuta" | "valuta" | "currency code" | "currency" => c.currency = Some(i),
            _ => {
                for (prefix, italian) in [("importo speso", true), ("amount spent", false)] {
                    if let Some(rest) = n.strip_prefix(prefix) {
                        let rest = rest.trim();
                        if rest.is_empty() {
                            c.amount = Some(i);
                        } else if let Some(code) = rest
                            .strip_prefix('(')
                            .and_then(|r| r.strip_suffix(')'))
                            .map(str::trim)
                            .filter(|code| {
                                code.len() == 3 && code.bytes().all(|b| b.is_ascii_alphabetic())
                            })
                        {
                            c.amount = Some(i);
                            c.header_currency = Some(code.to_ascii_uppercase());
                        } else {
                            continue;
                        }
                        c.platform = Some(Platform::Meta);
                        c.italian |= italian;
                    }
                }
            }
        }
    }
    c
}

/// Reads an export; `zone` places each day.
pub fn read_export(text: &str, zone: &TimeZone) -> Result<Export, String> {
    // The header is the first line naming a day, a campaign and an amount column; Google
    // writes a report title and a date range above it.
    let mut header_at = None;
    for (index, line) in text.lines().take(20).enumerate() {
        let separator = separator_of(line);
        let fields: Vec<String> = line.split(separator).map(String::from).collect();
        let c = columns(&fields);
        if c.day.is_some() && c.campaign.is_some() && c.amount.is_some() {
            header_at = Some((index, separator));
            break;
        }
    }
    let Some((header_index, separator)) = header_at else {
        return Err(
            "no header with a day, a campaign and a cost column in the first 20 lines \
             (expected a Google Ads export: Giorno/Day, Campagna/Campaign, Costo/Cost; or a Meta \
             one: Giorno/Day or Inizio dei report/Reporting starts, Nome della campagna/Campaign \
             name, Importo speso (EUR)/Amount spent (EUR))"
                .into(),
        );
    };
    let rows = parse_csv(text, separator)?;
    let header_row = rows
        .iter()
        .position(|(line, _)| *line == header_index + 1)
        .ok_or("the header line is inside a quoted field")?;
    let c = columns(&rows[header_row].1);
    let (Some(day), Some(campaign), Some(amount), Some(platform)) =
        (c.day, c.campaign, c.amount, c.platform)
    else {
        return Err("the header lost its columns when read as CSV".into());
    };
    if c.currency.is_none() && c.header_currency.is_none() {
        return Err(
            "no currency: add the Valuta/Currency column to the export (or use a Meta export \
             whose amount column names it, \"Amount spent (EUR)\")"
                .into(),
        );
    }
    let decimal_comma = c.italian || separator == ';';
    let mut export = Export {
        platform,
        records: Vec::new(),
        errors: Vec::new(),
        skipped: 0,
    };
    for (line, fields) in rows.into_iter().skip(header_row + 1) {
        let cell = |i: usize| fields.get(i).map_or("", |s| s.trim());
        if fields.iter().all(|f| f.trim().is_empty()) {
            export.skipped += 1;
            continue;
        }
        // Total rows: "Totale: account" or "Total: Account" where the day goes (or, with no
        // day, in another cell), or a day of "--". A campaign merely named "Total…" on a
        // dated row is a campaign.
        let day_cell = normal(cell(day));
        if day_cell.starts_with("total")
            || day_cell == "--"
            || (day_cell.is_empty() && fields.iter().any(|f| normal(f).starts_with("total")))
        {
            export.skipped += 1;
            continue;
        }
        match record(
            cell(day),
            c.day_end.map(&cell),
            cell(campaign),
            cell(amount),
            c.currency.map(&cell).or(c.header_currency.as_deref()),
            c.italian,
            decimal_comma,
            platform,
            zone,
        ) {
            Ok(record) => export.records.push(record),
            Err(e) => export.errors.push((line, e)),
        }
    }
    Ok(export)
}

#[allow(clippy::too_many_arguments)]
fn record(
    day: &str,
    day_end: Option<&str>,
    campaign: &str,
    amount: &str,
    currency: Option<&str>,
    italian: bool,
    decimal_comma: bool,
    platform: Platform,
    zone: &TimeZone,
) -> Result<Value, String> {
    let date = parse_day(day, italian)?;
    if let Some(end) = day_end.filter(|e| !e.is_empty()) {
        let end = parse_day(end, italian)?;
        if end != date {
            return Err(format!(
                "the row covers {date} to {end}: export the report broken down by day \
                 (Analisi/Breakdown → Per ora/By time → Giorno/Day)"
            ));
        }
    }
    if campaign.is_empty() {
        return Err("campaign: empty".into());
    }
    if campaign.chars().count() > 256 {
        return Err("campaign: longer than 256 characters".into());
    }
    let number = amount
        .trim_matches(|c: char| c.is_whitespace() || matches!(c, '€' | '$' | '£'))
        .to_string();
    let amount_value = vedetta_core::sources::mapping::parse_number(&number, decimal_comma)
        .filter(|v| v.as_f64().is_some_and(|f| f >= 0.0))
        .ok_or_else(|| {
            format!(
                "cost: expected an amount ≥ 0 like {}, got {:?}",
                if decimal_comma {
                    "\"1.234,56\""
                } else {
                    "\"1,234.56\""
                },
                amount.chars().take(40).collect::<String>()
            )
        })?;
    let currency = currency
        .map(str::trim)
        .filter(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_alphabetic()))
        .ok_or_else(|| format!("currency: expected an ISO 4217 code, got {currency:?}"))?
        .to_ascii_uppercase();
    let ts = zone
        .to_ambiguous_zoned_datetime(date.to_datetime(jiff::civil::Time::midnight()))
        .compatible()
        .map_err(|e| format!("day: {e}"))?
        .timestamp();
    Ok(json!({
        "ts": ts.to_string(),
        "channel": platform.channel(),
        "campaign": campaign,
        "amount": amount_value,
        "currency": currency,
        "source": platform.source(),
    }))
}

fn parse_day(text: &str, italian: bool) -> Result<Date, String> {
    let text = text.trim();
    let bad = || {
        format!(
            "day: expected a date like 2024-04-05{}, got {:?}",
            if italian { " or 05/04/2024" } else { "" },
            text.chars().take(40).collect::<String>()
        )
    };
    if let Ok(date) = text.parse::<Date>() {
        return Ok(date);
    }
    if italian {
        for pattern in ["%d/%m/%Y", "%d.%m.%Y"] {
            if let Ok(date) = Date::strptime(pattern, text) {
                return Ok(date);
            }
        }
    }
    Err(bad())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn rome() -> TimeZone {
        TimeZone::get("Europe/Rome").unwrap()
    }

    fn fixture(name: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/costs")
            .join(name);
        decode(&std::fs::read(&path).unwrap()).unwrap()
    }

    fn amounts(export: &Export) -> Vec<(String, String, f64)> {
        export
            .records
            .iter()
            .map(|r| {
                (
                    r["ts"].as_str().unwrap().to_string(),
                    r["campaign"].as_str().unwrap().to_string(),
                    r["amount"].as_f64().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn google_ads_italian_export() {
        let export = read_export(&fixture("google_ads_it.csv"), &rome()).unwrap();
        assert_eq!(export.platform, Platform::GoogleAds);
        assert_eq!(
            amounts(&export),
            [
                (
                    "2024-04-04T22:00:00Z".into(),
                    "Saldi Primavera".into(),
                    1234.56
                ),
                ("2024-04-04T22:00:00Z".into(), "Brand; Italia".into(), 89.9),
                ("2024-04-05T22:00:00Z".into(), "Saldi Primavera".into(), 0.0),
            ]
        );
        assert_eq!(export.records[0]["channel"], "paid_search");
        assert_eq!(export.records[0]["source"], "google_ads");
        assert_eq!(export.records[0]["currency"], "EUR");
        assert_eq!(
            export.errors,
            [(
                7,
                "cost: expected an amount ≥ 0 like \"1.234,56\", got \"n/d\"".to_string()
            )]
        );
        assert_eq!(export.skipped, 1, "the total row");
    }

    #[test]
    fn google_ads_english_export() {
        let export = read_export(&fixture("google_ads_en.csv"), &rome()).unwrap();
        assert_eq!(
            amounts(&export),
            [
                (
                    "2024-01-14T23:00:00Z".into(),
                    "Spring Sale, IT".into(),
                    1234.56
                ),
                ("2024-01-14T23:00:00Z".into(), "Brand".into(), 12.0),
            ]
        );
        assert_eq!(export.records[1]["currency"], "USD");
        let named = read_export(
            "Day,Campaign,Currency code,Cost\n2024-01-15,Total Look,EUR,5.00\n,Total: Account,,5.00\n",
            &rome(),
        )
        .unwrap();
        assert_eq!(named.records.len(), 1, "{:?}", named.errors);
        assert_eq!(named.records[0]["campaign"], "Total Look");
        assert_eq!(named.skipped, 1);
        assert_eq!(export.errors.len(), 1);
        assert_eq!(export.errors[0].0, 6);
        assert!(
            export.errors[0].1.starts_with("day:"),
            "{:?}",
            export.errors
        );
    }

    #[test]
    fn meta_italian_export_with_bom_and_currency_in_the_header() {
        let export = read_export(&fixture("meta_it.csv"), &rome()).unwrap();
        assert_eq!(export.platform, Platform::Meta);
        assert_eq!(
            amounts(&export),
            [
                (
                    "2024-04-04T22:00:00Z".into(),
                    "Prospecting \"Primavera\"".into(),
                    45.3
                ),
                ("2024-04-04T22:00:00Z".into(), "Retargeting".into(), 1002.0),
            ]
        );
        assert_eq!(export.records[0]["channel"], "social");
        assert_eq!(export.records[0]["source"], "meta");
        assert_eq!(export.records[0]["currency"], "EUR");
        // A row over several days is refused, naming the fix.
        assert_eq!(export.errors.len(), 1);
        assert_eq!(export.errors[0].0, 4);
        assert!(export.errors[0].1.contains("broken down by day"));
    }

    #[test]
    fn meta_english_export_in_utf16() {
        let text = fixture("meta_en.csv");
        let mut utf16 = vec![0xFF, 0xFE];
        for unit in text.encode_utf16() {
            utf16.extend_from_slice(&unit.to_le_bytes());
        }
        let export = read_export(&decode(&utf16).unwrap(), &rome()).unwrap();
        assert_eq!(
            amounts(&export),
            [
                ("2024-04-04T22:00:00Z".into(), "Spring sale".into(), 1234.5),
                ("2024-04-05T22:00:00Z".into(), "Spring sale".into(), 7.25),
            ]
        );
        assert_eq!(export.errors.len(), 1);
        assert!(export.errors[0].1.starts_with("campaign: empty"));
    }

    #[test]
    fn csv_quoting_lines_and_separators() {
        let rows = parse_csv(
            "a,\"b,c\",\"d \"\"e\"\"\"\r\n\"multi\nline\",x\n\nlast",
            ',',
        )
        .unwrap();
        assert_eq!(
            rows[0],
            (1, vec!["a".into(), "b,c".into(), "d \"e\"".into()])
        );
        assert_eq!(rows[1], (2, vec!["multi\nline".into(), "x".into()]));
        assert_eq!(rows[2], (4, vec![String::new()]));
        assert_eq!(rows[3], (5, vec!["last".into()]));
        assert!(parse_csv("a,\"open\n", ',').unwrap_err().contains("line 1"));
        assert_eq!(separator_of("Giorno;Campagna;\"Costo, EUR\""), ';');
        assert_eq!(separator_of("Day,Campaign,Cost"), ',');
        assert_eq!(separator_of("Day\tCampaign\tCost"), '\t');
    }

    #[test]
    fn files_that_are_not_exports_are_refused() {
        assert!(
            read_export("a,b,c\n1,2,3\n", &rome())
                .unwrap_err()
                .contains("no header")
        );
        let err = read_export("Day,Campaign,Cost\n2024-04-05,x,1\n", &rome()).unwrap_err();
        assert!(err.contains("no currency"), "{err}");
        assert!(decode(&[0xC3, 0x28]).is_err());
    }
}
