//! Result formats: how a plugin's raw output becomes the JSON value stored in the node's record.
//!
//! A plugin's `result_format` names one [`Format`]; [`Format::convert`] does the conversion
//! without I/O, so the client (before publishing) and the server (for 2010 results, which carry
//! the raw output and the format) share one implementation.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{delimited, kv, pyliteral};

/// How to turn a plugin's output into JSON. The names are the `result_format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON string per non-empty line, each trimmed (2010's `output`: `ps -ef`, `rpm -qa`).
    Output,
    /// The output is a JSON document (`ohai`).
    Json,
    /// The output is a YAML document (`facter -y`); keys become strings.
    Yaml,
    /// The whole output, trimmed, as one JSON string.
    String,
    /// The whole output, untouched, as one JSON string.
    Raw,
    /// A list, as JSON or as a Python literal (`['a', u'b', None]`).
    Pylist,
    /// A dict, as JSON or as a Python literal (`{'a': True}`).
    Pydict,
    /// `KEY=VALUE` lines quoted as os-release(5) says, into one object.
    Kv,
    /// Comma-separated rows under a header row, into a list of objects (RFC 4180 quoting).
    Csv,
    /// Tab-separated rows under a header row, into a list of objects (no quoting).
    Tsv,
}

impl Format {
    /// Every format, in the order the docs list them.
    pub const ALL: [Format; 10] = [
        Format::Output,
        Format::Json,
        Format::Yaml,
        Format::String,
        Format::Raw,
        Format::Pylist,
        Format::Pydict,
        Format::Kv,
        Format::Csv,
        Format::Tsv,
    ];

    /// Read a `result_format` value (case-insensitive, surrounding spaces ignored).
    pub fn parse(name: &str) -> Result<Format, UnknownFormat> {
        let wanted = name.trim().to_ascii_lowercase();
        Format::ALL
            .into_iter()
            .find(|f| f.as_str() == wanted)
            .ok_or_else(|| UnknownFormat(name.to_string()))
    }

    /// The `result_format` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Output => "output",
            Format::Json => "json",
            Format::Yaml => "yaml",
            Format::String => "string",
            Format::Raw => "raw",
            Format::Pylist => "pylist",
            Format::Pydict => "pydict",
            Format::Kv => "kv",
            Format::Csv => "csv",
            Format::Tsv => "tsv",
        }
    }

    /// Convert a plugin's raw output. The error carries the position where it can; the caller
    /// keeps the raw output beside it and may name the plugin with [`FormatError::for_plugin`].
    pub fn convert(&self, raw: &str) -> Result<Value, FormatError> {
        let err = |at: Option<(usize, usize)>, message: String| FormatError {
            plugin: None,
            format: *self,
            // 0 means "unknown" in the sub-parsers.
            line: at.map(|a| a.0).filter(|&l| l > 0),
            column: at.map(|a| a.1).filter(|&c| c > 0),
            message,
        };
        match self {
            Format::Output => Ok(Value::Array(
                raw.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(|l| Value::String(l.to_string()))
                    .collect(),
            )),
            Format::String => Ok(Value::String(raw.trim().to_string())),
            Format::Raw => Ok(Value::String(raw.to_string())),
            Format::Json => {
                if raw.trim().is_empty() {
                    return Err(err(
                        None,
                        "the output is empty; expected a JSON document".into(),
                    ));
                }
                serde_json::from_str(raw)
                    .map_err(|e| err(Some((e.line(), e.column())), format!("invalid JSON: {e}")))
            }
            Format::Yaml => {
                if raw.trim().is_empty() {
                    return Err(err(
                        None,
                        "the output is empty; expected a YAML document".into(),
                    ));
                }
                let doc: serde_yaml::Value = serde_yaml::from_str(raw).map_err(|e| {
                    let at = e.location().map(|l| (l.line(), l.column()));
                    err(at, format!("invalid YAML: {e}"))
                })?;
                yaml_to_json(doc).map_err(|m| err(None, m))
            }
            Format::Pylist | Format::Pydict => {
                let value = match serde_json::from_str::<Value>(raw) {
                    Ok(v) => v,
                    Err(_) => pyliteral::parse(raw)
                        .map_err(|e| err(Some((e.line, e.column)), e.message))?,
                };
                match (self, &value) {
                    (Format::Pylist, Value::Array(_)) | (Format::Pydict, Value::Object(_)) => {
                        Ok(value)
                    }
                    _ => Err(err(
                        None,
                        format!(
                            "expected a {}, got {}",
                            if *self == Format::Pylist {
                                "list `[...]`"
                            } else {
                                "dict `{...}`"
                            },
                            kind_of(&value)
                        ),
                    )),
                }
            }
            Format::Kv => kv::parse(raw).map_err(|e| err(Some((e.line, e.column)), e.message)),
            Format::Csv => delimited::parse(raw, b',', true)
                .map_err(|e| err(Some((e.line, e.column)), e.message)),
            Format::Tsv => delimited::parse(raw, b'\t', false)
                .map_err(|e| err(Some((e.line, e.column)), e.message)),
        }
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a dict",
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Format {
    type Err = UnknownFormat;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Format::parse(s)
    }
}

/// A `result_format` value that names no [`Format`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown result_format `{0}`; use one of: output, json, yaml, string, raw, pylist, pydict, kv, csv, tsv")]
pub struct UnknownFormat(pub String);

/// Output that does not match its plugin's format. The caller keeps the raw output beside it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct FormatError {
    /// The plugin whose output this is, once known.
    pub plugin: Option<String>,
    /// The format the output was expected in.
    pub format: Format,
    /// 1-based line of the problem in the output, where known.
    pub line: Option<usize>,
    /// 1-based column of the problem in the output, where known.
    pub column: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl FormatError {
    /// Name the plugin whose output failed to convert.
    pub fn for_plugin(mut self, plugin: &str) -> Self {
        self.plugin = Some(plugin.to_string());
        self
    }
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(plugin) = &self.plugin {
            write!(f, "plugin `{plugin}`: ")?;
        }
        write!(f, "output is not valid `{}`", self.format)?;
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, " at line {l}, column {c}")?,
            (Some(l), _) => write!(f, " at line {l}")?,
            _ => {}
        }
        write!(f, ": {}", self.message)
    }
}

/// YAML to JSON: mapping keys become strings, tags are dropped, non-finite floats become
/// their YAML spelling (JSON has no NaN).
fn yaml_to_json(value: serde_yaml::Value) -> Result<Value, String> {
    use serde_yaml::Value as Y;
    Ok(match value {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => yaml_number(&n),
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(
            items
                .into_iter()
                .map(yaml_to_json)
                .collect::<Result<_, _>>()?,
        ),
        Y::Mapping(map) => {
            let mut out = serde_json::Map::with_capacity(map.len());
            for (k, v) in map {
                let key = match k {
                    Y::String(s) => s,
                    Y::Number(n) => n.to_string(),
                    Y::Bool(b) => b.to_string(),
                    Y::Null => "null".to_string(),
                    Y::Tagged(t) => match t.value {
                        Y::String(s) => s,
                        other => return Err(format!("mapping key {other:?} is not a scalar")),
                    },
                    other => {
                        return Err(format!(
                            "mapping key {other:?} is a list or mapping; JSON keys must be strings"
                        ))
                    }
                };
                out.insert(key, yaml_to_json(v)?);
            }
            Value::Object(out)
        }
        Y::Tagged(tagged) => yaml_to_json(tagged.value)?,
    })
}

fn yaml_number(n: &serde_yaml::Number) -> Value {
    if let Some(i) = n.as_i64() {
        Value::from(i)
    } else if let Some(u) = n.as_u64() {
        Value::from(u)
    } else {
        match n.as_f64().and_then(serde_json::Number::from_f64) {
            Some(f) => Value::Number(f),
            None => Value::String(n.to_string()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fixture(name: &str) -> String {
        let path = format!("{}/../../fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap()
    }

    #[test]
    fn parse_names() {
        for f in Format::ALL {
            assert_eq!(Format::parse(f.as_str()), Ok(f));
            assert_eq!(f.to_string().parse::<Format>(), Ok(f));
        }
        assert_eq!(Format::parse(" YAML "), Ok(Format::Yaml));
        let err = Format::parse("broken").unwrap_err();
        assert!(err.to_string().contains("`broken`"));
        assert!(err.to_string().contains("output, json"));
    }

    #[test]
    fn good_inputs() {
        let cases: &[(Format, &str, Value)] = &[
            (Format::Output, " a \n\n b\n", json!(["a", "b"])),
            (Format::Output, "", json!([])),
            (Format::String, "  hello world \n", json!("hello world")),
            (Format::Raw, " x\n", json!(" x\n")),
            (Format::Json, r#"{"a": [1, true]}"#, json!({"a": [1, true]})),
            (
                Format::Yaml,
                "a: '6.18'\nb: 1\n2: x\ntrue: y\n",
                json!({"a": "6.18", "b": 1, "2": "x", "true": "y"}),
            ),
            (Format::Yaml, "- !tag 1\n- .nan\n", json!([1, ".nan"])),
            (Format::Pylist, "[1, 2]", json!([1, 2])),
            (
                Format::Pylist,
                "['a', u'b', None, True]",
                json!(["a", "b", null, true]),
            ),
            (
                Format::Pydict,
                "{'a': (1, 2L), 'b': {'c': False}}",
                json!({"a": [1, 2], "b": {"c": false}}),
            ),
            (Format::Pydict, r#"{"a": 1}"#, json!({"a": 1})),
            (
                Format::Kv,
                "NAME=\"Debian GNU/Linux\"\nID=debian\n# c\n\nX='a b'\n",
                json!({"NAME": "Debian GNU/Linux", "ID": "debian", "X": "a b"}),
            ),
            (
                Format::Csv,
                "name,ver\nopenssl,\"3.0, patched\"\n",
                json!([{"name": "openssl", "ver": "3.0, patched"}]),
            ),
            (
                Format::Tsv,
                "name\tver\nbash\t5.2\n",
                json!([{"name": "bash", "ver": "5.2"}]),
            ),
        ];
        for (format, raw, want) in cases {
            assert_eq!(&format.convert(raw).unwrap(), want, "{format} {raw:?}");
        }
    }

    #[test]
    fn bad_inputs() {
        let cases: &[(Format, &str, Option<usize>, &str)] = &[
            (Format::Json, "", None, "empty"),
            (Format::Json, "{\n  \"a\": }", Some(2), "invalid JSON"),
            (Format::Yaml, "a: 1\n- b\n", Some(2), "invalid YAML"),
            (
                Format::Yaml,
                "? [1]\n: x\n",
                None,
                "JSON keys must be strings",
            ),
            (Format::Pylist, "{'a': 1}", None, "expected a list"),
            (Format::Pydict, "[1]", None, "expected a dict"),
            (Format::Pydict, "{'a': \n  oops}", Some(2), "unexpected"),
            (Format::Kv, "A=1\nnot a pair\n", Some(2), "KEY=VALUE"),
            (Format::Kv, "A=\"open\n", Some(1), "unterminated"),
            (Format::Csv, "a,b\n1,2\n3\n", Some(3), "1 field"),
            (Format::Csv, "a,b\n\"x,2\n", Some(2), "unterminated"),
            (Format::Tsv, "a\tb\n1\t2\t3\n", Some(2), "3 fields"),
            (Format::Csv, "", None, "header"),
        ];
        for (format, raw, line, needle) in cases {
            let err = format.convert(raw).unwrap_err().for_plugin("p");
            assert_eq!(err.line, *line, "{format} {raw:?}: {err}");
            let text = err.to_string();
            assert!(text.contains(needle), "{format} {raw:?}: {text}");
            assert!(text.starts_with(&format!("plugin `p`: output is not valid `{format}`")));
        }
    }

    #[test]
    fn facter_yaml_fixture() {
        let v = Format::Yaml.convert(&fixture("facter-y.yaml")).unwrap();
        assert_eq!(v["os"]["family"], "Debian");
        assert_eq!(v["kernelmajversion"], "6.18");
        assert_eq!(v["kernel"], "Linux");
        assert!(v["load_averages"]["15m"].is_number());
    }

    #[test]
    fn ohai_json_fixture() {
        let v = Format::Json.convert(&fixture("ohai.json")).unwrap();
        assert!(v.as_object().unwrap().len() > 10);
    }

    #[test]
    fn dpkg_output_fixture() {
        let v = Format::Output.convert(&fixture("dpkg-query.txt")).unwrap();
        let lines = v.as_array().unwrap();
        assert_eq!(lines.len(), 773);
        assert_eq!(lines[0], "adduser 3.134");
    }

    #[test]
    fn dpkg_kv_shape() {
        // What the shipped dpkg plugin's command prints, built from the real package list.
        let text: String = fixture("dpkg-query.txt")
            .lines()
            .map(|l| l.replacen(' ', "=", 1) + "\n")
            .collect();
        let v = Format::Kv.convert(&text).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 773);
        assert_eq!(v["adduser"], "3.134");
    }
}
