//! Exports to the tools people already run: an Ansible dynamic inventory and
//! Prometheus HTTP service discovery, both built from the same selection (`-W`, `-n`)
//! and the same stored values as the reports.

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Map, Value};
use vogeler_store::{DynStore, KeyPath, Query};

/// Where a node's address is looked for, first found wins; without one the node
/// name is the address (it is a host name).
pub const ADDRESS_PATHS: &[&str] = &["facter.networking.ip", "facter.ipaddress", "ohai.ipaddress"];

/// The selected node names, sorted, and each one's value at every path asked for.
struct Selection {
    names: Vec<String>,
    values: Vec<HashMap<String, Value>>,
    address: HashMap<String, String>,
}

async fn select(store: &DynStore, q: &Query, paths: &[KeyPath]) -> anyhow::Result<Selection> {
    let names: Vec<String> = store
        .select(q)
        .await?
        .rows
        .into_iter()
        .map(|n| n.name)
        .collect();
    let mut values = Vec::with_capacity(paths.len());
    for p in paths {
        values.push(store.values(p).await?.rows.into_iter().collect());
    }
    let mut address = HashMap::new();
    for p in ADDRESS_PATHS {
        let path = KeyPath::parse(p)?;
        for (node, v) in store.values(&path).await?.rows {
            if let Value::String(ip) = v {
                if !ip.is_empty() {
                    address.entry(node).or_insert(ip);
                }
            }
        }
    }
    Ok(Selection {
        names,
        values,
        address,
    })
}

/// A name Ansible and Prometheus both accept: letters, digits and `_`, not starting
/// with a digit (`facter.os.family` → `facter_os_family`).
pub fn identifier(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// A value as a label or group: strings bare, anything else as compact JSON.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The Ansible dynamic-inventory JSON (what a `--list` script prints): one group per
/// value of each `group_by` path (`facter_os_family_Debian`), the values at
/// `hostvars` paths as host variables, and `ansible_host` from the node's address.
pub async fn ansible(
    store: &DynStore,
    q: &Query,
    group_by: &[KeyPath],
    hostvars: &[KeyPath],
) -> anyhow::Result<Value> {
    let paths: Vec<KeyPath> = group_by.iter().chain(hostvars).cloned().collect();
    let mut sel = select(store, q, &paths).await?;
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut meta = Map::new();
    for name in &sel.names {
        let mut vars = Map::new();
        if let Some(ip) = sel.address.remove(name) {
            vars.insert("ansible_host".into(), json!(ip));
        }
        for (i, path) in paths.iter().enumerate() {
            let Some(v) = sel.values[i].get(name) else {
                continue;
            };
            if i < group_by.len() {
                let group = identifier(&format!("{path}_{}", text(v)));
                groups.entry(group).or_default().push(name.clone());
            } else {
                vars.insert(identifier(&path.to_string()), v.clone());
            }
        }
        meta.insert(name.clone(), Value::Object(vars));
    }
    let mut out = Map::new();
    out.insert(
        "all".into(),
        json!({ "hosts": sel.names, "children": groups.keys().collect::<Vec<_>>() }),
    );
    for (group, hosts) in groups {
        out.insert(group, json!({ "hosts": hosts }));
    }
    out.insert("_meta".into(), json!({ "hostvars": meta }));
    Ok(Value::Object(out))
}

/// Prometheus HTTP service discovery (`http_sd_configs`): one target group per node,
/// `ADDRESS:port`, labelled `__meta_vogeler_node` and `__meta_vogeler_<path>` for each
/// `labels` path the node has (relabel them to keep them).
pub async fn prometheus(
    store: &DynStore,
    q: &Query,
    port: u16,
    labels: &[KeyPath],
) -> anyhow::Result<Value> {
    let mut sel = select(store, q, labels).await?;
    let mut out = Vec::with_capacity(sel.names.len());
    for name in &sel.names {
        let address = sel.address.remove(name).unwrap_or_else(|| name.clone());
        // An IPv6 address goes in brackets before its port.
        let target = if address.contains(':') {
            format!("[{address}]:{port}")
        } else {
            format!("{address}:{port}")
        };
        let mut l = Map::new();
        l.insert("__meta_vogeler_node".into(), json!(name));
        for (i, path) in labels.iter().enumerate() {
            if let Some(v) = sel.values[i].get(name) {
                l.insert(
                    format!("__meta_vogeler_{}", identifier(&path.to_string())),
                    json!(text(v)),
                );
            }
        }
        out.push(json!({ "targets": [target], "labels": l }));
    }
    Ok(Value::Array(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_what_ansible_and_prometheus_accept() {
        assert_eq!(identifier("facter.os.family"), "facter_os_family");
        assert_eq!(identifier("dpkg.\"libc6.1\""), "dpkg__libc6_1_");
        assert_eq!(identifier("12.11"), "_12_11");
        assert_eq!(identifier(""), "_");
    }
}
