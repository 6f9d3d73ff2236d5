#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::needless_pass_by_value
)]

use super::*;
use serde_json::json;

fn mapping(raw: Value) -> Mapping {
    Mapping::compile(serde_json::from_value(raw).unwrap()).unwrap()
}

fn compile_err(raw: Value) -> CompileError {
    Mapping::compile(serde_json::from_value(raw).unwrap()).unwrap_err()
}

/// udid, type and ts from constants, plus `extra` rules.
fn with(extra: Value) -> Value {
    let mut fields = json!({
        "udid": {"constant": "u1"},
        "type": {"constant": "purchase"},
        "ts": {"constant": "2024-04-05T14:23:05Z"},
    });
    for (k, v) in extra.as_object().unwrap() {
        fields[k] = v.clone();
    }
    json!({ "fields": fields })
}

fn field(rule: Value, row: Value) -> Result<Value, FieldError> {
    let m = mapping(with(json!({ "properties.out": rule })));
    m.map_row(&row, &row)
        .map(|event| event["properties"]["out"].clone())
}

fn ts(rule: Value, row: Value) -> Result<String, FieldError> {
    let m = mapping(json!({"fields": {
        "udid": {"constant": "u1"},
        "type": {"constant": "purchase"},
        "ts": rule,
    }}));
    m.map_row(&row, &row)
        .map(|event| event["ts"].as_str().unwrap().to_string())
}

#[test]
fn sap_dates_round_trip_with_and_without_offset() {
    for (text, ms, offset_s) in [
        ("/Date(1712327000000)/", 1_712_327_000_000_i64, None),
        ("/Date(1712327000000+0200)/", 1_712_327_000_000, Some(7200)),
        (
            "/Date(1712327000000-0530)/",
            1_712_327_000_000,
            Some(-19_800),
        ),
        ("/Date(-86400000)/", -86_400_000, None),
        ("/Date(0+0000)/", 0, Some(0)),
    ] {
        let (parsed, offset) = parse_sap_date(text).unwrap();
        assert_eq!(parsed.as_millisecond(), ms, "{text}");
        assert_eq!(offset.map(|o| o.seconds()), offset_s, "{text}");
        assert_eq!(format_sap_date(parsed, offset), text);
    }
    for bad in [
        "/Date()/",
        "/Date(abc)/",
        "Date(1712327000000)",
        "/Date(1712327000000+02)/",
        "/Date(1712327000000+2500)/",
        "/Date(1712327000000+02:00)/",
        "/Date(99999999999999999999)/",
    ] {
        assert_eq!(parse_sap_date(bad), None, "{bad}");
    }
    // The number is UTC either way: the offset does not move the instant.
    assert_eq!(
        ts(
            json!({"pointer": "/d", "time": "sap"}),
            json!({"d": "/Date(1712327000000+0200)/"})
        )
        .unwrap(),
        "2024-04-05T14:23:20Z"
    );
}

#[test]
fn compact_times_are_read_in_the_configured_zone() {
    let rule = json!({"pointer": "/t", "time": "compact", "zone": "Europe/Rome"});
    // April: CEST, +02:00.
    assert_eq!(
        ts(rule.clone(), json!({"t": "20240405142305"})).unwrap(),
        "2024-04-05T12:23:05Z"
    );
    // January: CET, +01:00; and as a number, as SAP sometimes writes it.
    assert_eq!(
        ts(rule.clone(), json!({"t": 20240105142305_u64})).unwrap(),
        "2024-01-05T13:23:05Z"
    );
    // A time in the spring-forward gap resolves to the later instant.
    assert_eq!(
        ts(rule.clone(), json!({"t": "20240331023000"})).unwrap(),
        "2024-03-31T01:30:00Z"
    );
    let err = ts(rule, json!({"t": "2024-04-05"})).unwrap_err();
    assert_eq!(err.field, "ts");
    assert!(err.to_string().contains("%Y%m%d%H%M%S"), "{err}");
    // Without a zone the mapping does not compile.
    let err = compile_err(json!({"fields": {
        "udid": {"constant": "u"}, "type": {"constant": "purchase"},
        "ts": {"pointer": "/t", "time": "compact"}}}));
    assert_eq!(err.key, "fields.ts.zone");
    let err = compile_err(json!({"fields": {
        "udid": {"constant": "u"}, "type": {"constant": "purchase"},
        "ts": {"pointer": "/t", "time": "compact", "zone": "Europe/Atlantide"}}}));
    assert_eq!(err.key, "fields.ts.zone");
}

#[test]
fn epoch_rfc3339_and_pattern_times() {
    assert_eq!(
        ts(
            json!({"pointer": "/t", "time": "epoch_ms"}),
            json!({"t": 1712327000123_i64})
        )
        .unwrap(),
        "2024-04-05T14:23:20.123Z"
    );
    assert_eq!(
        ts(
            json!({"pointer": "/t", "time": "epoch_ms"}),
            json!({"t": "1712327000123"})
        )
        .unwrap(),
        "2024-04-05T14:23:20.123Z"
    );
    assert_eq!(
        ts(
            json!({"pointer": "/t", "time": "epoch_s"}),
            json!({"t": 1712327000})
        )
        .unwrap(),
        "2024-04-05T14:23:20Z"
    );
    assert_eq!(
        ts(
            json!({"pointer": "/t", "time": "rfc3339"}),
            json!({"t": "2024-04-05T16:23:05+02:00"})
        )
        .unwrap(),
        "2024-04-05T14:23:05Z"
    );
    assert!(
        ts(
            json!({"pointer": "/t", "time": "rfc3339"}),
            json!({"t": "2024-04-05 16:23:05"})
        )
        .is_err()
    );
    assert!(
        ts(
            json!({"pointer": "/t", "time": "epoch_s"}),
            json!({"t": 1.5})
        )
        .is_err()
    );
    assert_eq!(
        ts(
            json!({"pointer": "/t", "time_format": "%d.%m.%Y %H:%M:%S", "zone": "Europe/Rome"}),
            json!({"t": "05.04.2024 16:23:05"})
        )
        .unwrap(),
        "2024-04-05T14:23:05Z"
    );
}

#[test]
fn value_maps_constants_and_defaults() {
    let map = json!({"pointer": "/k", "map": {"ZPUR": "purchase", "ZLEA": "lead", "7": "lead"}});
    assert_eq!(
        field(map.clone(), json!({"k": "ZPUR"})).unwrap(),
        "purchase"
    );
    assert_eq!(field(map.clone(), json!({"k": " ZLEA "})).unwrap(), "lead");
    // Numbers are looked up by their text.
    assert_eq!(field(map.clone(), json!({"k": 7})).unwrap(), "lead");
    let err = field(map.clone(), json!({"k": "ZXXX"})).unwrap_err();
    assert_eq!(
        err.to_string(),
        "field properties.out (pointer /k): \"ZXXX\" is not in the map (known: 7, ZLEA, ZPUR)"
    );
    assert!(field(map, json!({"k": {"a": 1}})).is_err());
    assert_eq!(field(json!({"constant": 3}), json!({})).unwrap(), 3);
    assert_eq!(
        field(json!({"pointer": "/missing", "default": "web"}), json!({})).unwrap(),
        "web"
    );
    assert_eq!(
        field(
            json!({"pointer": "/n", "default": "web"}),
            json!({"n": null})
        )
        .unwrap(),
        "web"
    );
    let err = field(json!({"pointer": "/missing"}), json!({})).unwrap_err();
    assert_eq!(
        err.to_string(),
        "field properties.out (pointer /missing): missing (or null)"
    );
    // Optional: left out.
    let m = mapping(with(
        json!({"channel": {"pointer": "/c", "optional": true}}),
    ));
    let event = m.map_row(&json!({}), &json!({})).unwrap();
    assert!(event.get("channel").is_none());
    // From the envelope around the rows.
    let m = mapping(json!({
        "items": "/rows",
        "fields": {
            "udid": {"pointer": "/u"},
            "type": {"constant": "purchase"},
            "ts": {"constant": "2024-04-05T14:23:05Z"},
            "currency": {"pointer": "/header/Currency", "from": "body"},
        }
    }));
    let body = json!({"header": {"Currency": "EUR"}, "rows": [{"u": "a"}, {"u": "b"}]});
    let events = m.map_body(&body).unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].as_ref().unwrap()["currency"], "EUR");
    assert_eq!(events[1].as_ref().unwrap()["udid"], "b");
}

#[test]
fn conversions_between_texts_and_numbers() {
    let number = json!({"pointer": "/v", "convert": "number"});
    let comma = json!({"pointer": "/v", "convert": "number", "decimal_comma": true});
    assert_eq!(
        field(number.clone(), json!({"v": "1234.56"})).unwrap(),
        json!(1234.56)
    );
    assert_eq!(
        field(number.clone(), json!({"v": "1,234.56"})).unwrap(),
        json!(1234.56)
    );
    assert_eq!(field(number.clone(), json!({"v": 12})).unwrap(), json!(12));
    assert_eq!(
        field(comma.clone(), json!({"v": "1.234,56"})).unwrap(),
        json!(1234.56)
    );
    assert_eq!(
        field(comma.clone(), json!({"v": "89,5"})).unwrap(),
        json!(89.5)
    );
    assert_eq!(
        field(comma.clone(), json!({"v": " -3 "})).unwrap(),
        json!(-3)
    );
    for bad in ["abc", "", "1.2.3", "12,34,5", "1e9", "0x10", "1 000", "NaN"] {
        let err = field(number.clone(), json!({"v": bad})).unwrap_err();
        assert!(err.message.starts_with("expected a number"), "{bad}: {err}");
    }
    for bad in ["1,234.56", "1.23,4.5", "1.23,45", ",5"] {
        assert!(field(comma.clone(), json!({"v": bad})).is_err(), "{bad}");
    }
    assert!(field(number, json!({"v": true})).is_err());
    let text = json!({"pointer": "/v", "convert": "string"});
    assert_eq!(field(text.clone(), json!({"v": 4711})).unwrap(), "4711");
    assert_eq!(field(text.clone(), json!({"v": "A-1"})).unwrap(), "A-1");
    assert!(field(text, json!({"v": [1]})).is_err());
}

#[test]
fn errors_name_the_rule_and_the_pointer() {
    let m = mapping(with(json!({
        "value": {"pointer": "/NetValue", "convert": "number"},
    })));
    let err = m
        .map_row(&json!({"NetValue": "abc"}), &json!({}))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "field value (pointer /NetValue): expected a number, got \"abc\" (written \"1234.56\")"
    );
    assert_eq!(err.field, "value");
    assert_eq!(err.pointer.as_deref(), Some("/NetValue"));
    // A structured value in a scalar field.
    let m = mapping(with(json!({"order_id": {"pointer": "/o"}})));
    let err = m.map_row(&json!({"o": {"x": 1}}), &json!({})).unwrap_err();
    assert_eq!(
        err.to_string(),
        "field order_id (pointer /o): expected a text, number or boolean, got an object"
    );
}

#[test]
fn bad_mappings_are_refused_naming_the_key() {
    for (rules, key) in [
        (json!({"colour": {"constant": 1}}), "fields.colour"),
        (
            json!({"value": {"pointer": "NetValue"}}),
            "fields.value.pointer",
        ),
        (
            json!({"value": {"pointer": "/a~2"}}),
            "fields.value.pointer",
        ),
        (json!({"value": {}}), "fields.value"),
        (
            json!({"value": {"pointer": "/a", "constant": 1}}),
            "fields.value",
        ),
        (
            json!({"value": {"pointer": "/a", "convert": "float"}}),
            "fields.value.convert",
        ),
        (
            json!({"value": {"pointer": "/a", "decimal_comma": true}}),
            "fields.value.decimal_comma",
        ),
        (
            json!({"value": {"pointer": "/a", "map": {}}}),
            "fields.value.map",
        ),
        (
            json!({"value": {"pointer": "/a", "from": "header"}}),
            "fields.value.from",
        ),
        (
            json!({"ts": {"pointer": "/a", "time": "julian"}}),
            "fields.ts.time",
        ),
        (
            json!({"properties.a b": {"constant": 1}}),
            "fields.properties.a b",
        ),
        (
            json!({"consent.ads": {"constant": true}}),
            "fields.consent.ads",
        ),
    ] {
        assert_eq!(compile_err(with(rules.clone())).key, key, "{rules}");
    }
    assert_eq!(
        compile_err(json!({"fields": {"udid": {"constant": "u"}, "ts": {"constant": "x"}}})).key,
        "fields.type"
    );
    let mut raw = with(json!({}));
    raw["max_rows"] = json!(0);
    assert_eq!(compile_err(raw).key, "max_rows");
    let mut raw = with(json!({}));
    raw["items"] = json!("rows");
    assert_eq!(compile_err(raw).key, "items");
    // Unknown keys in a rule: refused by serde, naming the key.
    let err = serde_json::from_value::<RawMapping>(json!({"fields": {"value": {"pointr": "/a"}}}))
        .unwrap_err();
    assert!(err.to_string().contains("pointr"), "{err}");
}

#[test]
fn batches_map_row_by_row_and_are_bounded() {
    let mut raw = with(json!({"value": {"pointer": "/v", "convert": "number"}}));
    raw["items"] = json!("/rows");
    raw["max_rows"] = json!(3);
    let m = mapping(raw);
    let events = m
        .map_body(&json!({"rows": [{"v": "1"}, {"v": "x"}, {"v": 3}]}))
        .unwrap();
    assert_eq!(events[0].as_ref().unwrap()["value"], json!(1));
    assert_eq!(events[1].as_ref().unwrap_err().field, "value");
    assert_eq!(events[2].as_ref().unwrap()["value"], json!(3));
    let err = m.map_body(&json!({"rows": [{}, {}, {}, {}]})).unwrap_err();
    assert!(err.0.contains("max_rows"), "{err}");
    let err = m.map_body(&json!({"rows": {}})).unwrap_err();
    assert_eq!(
        err.0,
        "items (pointer \"/rows\"): expected an array of rows, got an object"
    );
    assert!(m.map_body(&json!({})).unwrap_err().0.contains("not found"));
    // `items = ""`: the body is the array.
    let mut raw = with(json!({}));
    raw["items"] = json!("");
    assert_eq!(mapping(raw).map_body(&json!([{}, {}])).unwrap().len(), 2);
}

#[test]
fn targets_fill_properties_and_consent() {
    let m = mapping(with(json!({
        "properties.plant": {"pointer": "/Plant"},
        "consent.marketing": {"pointer": "/Optin", "map": {"X": true, "": false}},
    })));
    let event = m
        .map_row(&json!({"Plant": "1010", "Optin": "X"}), &json!({}))
        .unwrap();
    assert_eq!(event["properties"]["plant"], "1010");
    assert_eq!(event["consent"]["marketing"], true);
    assert_eq!(event["udid"], "u1");
}

proptest::proptest! {
    #[test]
    fn any_sap_date_round_trips(
        ms in -62_135_596_800_000_i64..253_402_300_799_000,
        offset_minutes in proptest::option::of(-18 * 60..=18 * 60_i32),
    ) {
        let ts = Timestamp::from_millisecond(ms).unwrap();
        let offset = offset_minutes.map(|m| Offset::from_seconds(m * 60).unwrap());
        let text = format_sap_date(ts, offset);
        let (parsed, parsed_offset) = parse_sap_date(&text).unwrap();
        proptest::prop_assert_eq!(parsed, ts);
        proptest::prop_assert_eq!(parsed_offset, offset);
    }

    #[test]
    fn decimal_comma_numbers_read_back_what_was_written(
        whole in 0_u64..1_000_000_000, cents in 0_u32..100,
    ) {
        // Written the Italian way, with thousands points.
        let digits = whole.to_string();
        let mut grouped = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                grouped.push('.');
            }
            grouped.push(c);
        }
        let text = format!("{grouped},{cents:02}");
        let value = parse_number(&text, true).unwrap();
        let expected: f64 = format!("{whole}.{cents:02}").parse().unwrap();
        proptest::prop_assert_eq!(value.as_f64(), Some(expected));
    }
}
