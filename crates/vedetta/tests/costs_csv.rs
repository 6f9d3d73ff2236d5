//! `vedetta send --costs FILE.csv` against a real server: a Meta Ads Manager export in Italian
//! (BOM, `;`, decimal commas, the currency in the header) and a Google Ads one in English
//! (title lines, quoted `1,234.56`, a total row) become spend under `social` and
//! `paid_search`; a bad row is reported with its line and the good rows are sent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{BIN, Server, client, get_json, wait_processed};

#[test]
fn google_and_meta_exports_become_spend_and_bad_rows_are_named_by_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let http = client();
    let zone = jiff::tz::TimeZone::get("Europe/Rome").unwrap();
    let today = jiff::Timestamp::from_millisecond(support::now_ms())
        .unwrap()
        .to_zoned_datetime(zone)
        .date();

    let meta = dir.path().join("meta_it.csv");
    let mut text = vec![0xEF, 0xBB, 0xBF];
    text.extend_from_slice(
        format!(
            "Giorno;Nome della campagna;Importo speso (EUR);Risultati\n\
             {today};csv_prospecting;1.234,50;12\n\
             {today};csv_retargeting;abc;3\n\
             {today};csv_retargeting;\"10,25\";3\n"
        )
        .as_bytes(),
    );
    std::fs::write(&meta, text).unwrap();
    let google = dir.path().join("google_ads_en.csv");
    std::fs::write(
        &google,
        format!(
            "Campaign report\r\n\"{today} - {today}\"\r\nDay,Campaign,Currency code,Cost\r\n\
             {today},\"csv_brand, IT\",EUR,\"2,000.75\"\r\nTotal: Account,,EUR,\"2,000.75\"\r\n"
        ),
    )
    .unwrap();

    let output = std::process::Command::new(BIN)
        .args(["send", "--costs", "--quiet", "--url", &server.url("")])
        .arg(&meta)
        .arg(&google)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!("{}:3: cost: expected an amount", meta.display())),
        "{stderr}"
    );
    assert!(stdout.contains("accepted 3  rejected 1"), "{stdout}");

    wait_processed(&http, &server);
    let answer = get_json(
        &http,
        &server.url("/v1/kpis?granularity=1d&last=2d&group_by=channel,campaign"),
    );
    let spend = |channel: &str, campaign: &str| -> f64 {
        answer["rows"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["channel"] == channel && r["campaign"] == campaign)
            .map(|r| r["spend"].as_f64().unwrap_or(0.0))
            .sum()
    };
    assert_eq!(spend("social", "csv_prospecting"), 1234.5, "{answer}");
    assert_eq!(spend("social", "csv_retargeting"), 10.25);
    assert_eq!(spend("paid_search", "csv_brand, IT"), 2000.75);
    server.stop();
}
