//! The filters' Debian version order (`query::compare_versions`) against the real
//! `dpkg --compare-versions`, on the fixture package list's versions and on generated
//! ones (epochs, `~`, `+`, revisions).

use std::cmp::Ordering;
use std::process::Command;

use proptest::prelude::*;
use vogeler_store::query::{compare, compare_versions, looks_like_version};

/// The versions of `fixtures/dpkg-query.txt` (`name version` lines).
fn fixture_versions() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/dpkg-query.txt");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    text.lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(str::to_string)
        .collect()
}

/// What dpkg says; a missing dpkg fails the test naming it.
fn dpkg_order(a: &str, b: &str) -> Ordering {
    let holds = |op: &str| {
        let status = Command::new("dpkg")
            .args(["--compare-versions", a, op, b])
            .status()
            .unwrap_or_else(|e| panic!("dpkg --compare-versions is needed by this test: {e}"));
        match status.code() {
            Some(0) => true,
            Some(1) => false,
            other => panic!("dpkg --compare-versions {a:?} {op} {b:?} exited {other:?}"),
        }
    };
    if holds("lt") {
        Ordering::Less
    } else if holds("eq") {
        Ordering::Equal
    } else {
        Ordering::Greater
    }
}

fn version() -> impl Strategy<Value = String> {
    let fixtures = fixture_versions();
    assert!(fixtures.len() > 100, "fixture package list too short");
    prop_oneof![
        proptest::sample::select(fixtures),
        "([0-9]{1,2}:)?[0-9][0-9a-z.+~]{0,6}(-[0-9a-z+~][0-9a-z.+~]{0,3})?",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn version_order_matches_dpkg(a in version(), b in version()) {
        prop_assert!(looks_like_version(&a), "{a:?} should look like a version");
        prop_assert_eq!(compare_versions(&a, &b), dpkg_order(&a, &b), "{:?} vs {:?}", a, b);
        // The filter order is the version order unless both sides are plain numbers.
        if a.parse::<f64>().is_err() || b.parse::<f64>().is_err() {
            prop_assert_eq!(compare(&a, &b), compare_versions(&a, &b));
        }
    }
}

#[test]
fn known_orders_agree_with_dpkg() {
    for (a, b) in [
        ("3.0.7", "3.0.20"),
        ("1.0~rc1", "1.0"),
        ("1:0.1", "9.9"),
        ("2.36-9+deb12u4", "2.36-9"),
        ("1.0a", "1.0+"),
        ("1.0", "1.0-0"),
    ] {
        assert_eq!(compare_versions(a, b), dpkg_order(a, b), "{a} vs {b}");
    }
}
