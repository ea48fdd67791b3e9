//! The shipped plugins in `etc/plugins`, run for real on this machine where installed.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use vogeler_plugins::{run_plugin, ExecLimits, Registry};

#[tokio::test]
async fn every_available_shipped_plugin_yields_its_format() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../etc/plugins");
    let compiled = tempfile::tempdir().unwrap();
    let (registry, errors) =
        Registry::compile(&dir, &compiled.path().join("plugins.compiled")).unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    for plugin in registry.plugins() {
        let outcome = run_plugin(plugin, &ExecLimits::default()).await;
        if !plugin.available {
            let err = outcome.result.unwrap_err();
            assert!(err.to_string().contains("command not found"), "{err}");
            continue;
        }
        if plugin.name == "os_release" && !Path::new("/etc/os-release").exists() {
            continue;
        }
        let value = match outcome.result {
            Ok(value) => value,
            Err(e) => panic!("{}: {e}\nraw: {}", plugin.name, outcome.raw),
        };
        match plugin.name.as_str() {
            "dpkg" => assert!(
                value.get("dpkg").and_then(|v| v.as_str()).is_some(),
                "{value}"
            ),
            "os_release" => assert!(value.get("ID").is_some(), "{value}"),
            "ps" => assert!(value.as_array().is_some_and(|a| !a.is_empty())),
            _ => {}
        }
    }
}
