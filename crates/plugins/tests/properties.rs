//! Property tests: no result format's parser panics on any output a plugin may print, and
//! the formats that can be written back round-trip. Cases: `PROPTEST_CASES` (256 unless set).

use proptest::prelude::*;
use serde_json::Value;
use vogeler_plugins::Format;

/// Output shaped like what plugins print: lines, separators, quotes, brackets, Python and
/// YAML punctuation, plus anything at all.
fn output() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-zA-Z0-9 =,\t\n\"'\\[\\]{}:#\\\\u.-]{0,200}",
        "([A-Z_]{1,6}=(\"[^\"\n]{0,8}\"|'[^'\n]{0,8}'|[a-z]{0,8})\n){0,8}",
        "([a-z,\"]{0,12}\n){0,8}",
        "(\\[|\\{|'|u'|None|True|False|[0-9]|: |, |\\]|\\}){0,40}",
    ]
}

/// JSON values of the kinds plugins produce.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,6}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn no_format_panics_on_any_output(raw in output()) {
        for format in Format::ALL {
            let _ = format.convert(&raw);
        }
    }

    #[test]
    fn json_round_trips(v in json_value()) {
        let text = serde_json::to_string_pretty(&v).expect("serialize");
        prop_assert_eq!(Format::Json.convert(&text).ok(), Some(v));
    }

    #[test]
    fn pylist_and_pydict_accept_json(items in prop::collection::vec(json_value(), 0..5)) {
        let list = Value::Array(items.clone());
        prop_assert_eq!(Format::Pylist.convert(&list.to_string()).ok(), Some(list));
        let dict = Value::Object(items.into_iter().enumerate().map(|(i, v)| (format!("k{i}"), v)).collect());
        prop_assert_eq!(Format::Pydict.convert(&dict.to_string()).ok(), Some(dict));
    }

    #[test]
    fn output_lines_round_trip(lines in prop::collection::vec("[!-~]([ -~]{0,20}[!-~])?", 0..10)) {
        let want = Value::Array(lines.iter().cloned().map(Value::String).collect());
        prop_assert_eq!(Format::Output.convert(&lines.join("\n")).ok(), Some(want));
    }

    #[test]
    fn raw_and_string_keep_the_text(raw in any::<String>()) {
        prop_assert_eq!(Format::Raw.convert(&raw).ok(), Some(Value::String(raw.clone())));
        prop_assert_eq!(Format::String.convert(&raw).ok(), Some(Value::String(raw.trim().to_string())));
    }

    #[test]
    fn tsv_rows_round_trip(
        header in prop::collection::btree_set("[a-z]{1,6}", 1..4),
        rows in prop::collection::vec(prop::collection::vec("[a-zA-Z0-9.]{1,8}", 4), 0..5),
    ) {
        let header: Vec<String> = header.into_iter().collect();
        let mut text = header.join("\t");
        for r in &rows {
            text.push('\n');
            text.push_str(&r[..header.len()].join("\t"));
        }
        let parsed = Format::Tsv.convert(&text);
        prop_assert!(parsed.is_ok(), "{:?} for {:?}", parsed, text);
        let parsed = parsed.unwrap_or_default();
        let parsed = parsed.as_array().cloned().unwrap_or_default();
        prop_assert_eq!(parsed.len(), rows.len());
    }
}
