//! The INI reader for `vogeler.conf` and plugin files: Python ConfigParser's syntax, keeping every line number.
//!
//! Off-the-shelf INI crates forget where a value came from; plugin errors must name the file
//! and line, so this small reader keeps them. Syntax, as ConfigParser read it in 2010:
//! `[section]` headers; `key = value` or `key: value` (keys lower-cased); lines that start with
//! `#` or `;` are comments; an indented line continues the previous value. A value wrapped in
//! matching `'…'` or `"…"` is unquoted (ConfigParser kept the quotes; every 2010 user meant
//! them as quoting). A `#@source LINE PATH` comment is the compiled file's marker of where the
//! next section came from.

use std::path::PathBuf;

/// One `key = value` line (plus continuation lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Lower-cased key.
    pub key: String,
    /// Value, unquoted and trimmed; continuation lines joined with `\n`.
    pub value: String,
    /// 1-based line of the key.
    pub line: usize,
}

/// One `[section]` and its entries, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// Section name as written between the brackets.
    pub name: String,
    /// 1-based line of the header.
    pub line: usize,
    /// Entries in file order.
    pub entries: Vec<Entry>,
    /// Where the section was originally written (from a `#@source` marker), if known.
    pub origin: Option<(PathBuf, usize)>,
}

impl Section {
    /// The last value for `key` (ConfigParser: a repeated key overrides the earlier one).
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().rev().find(|e| e.key == key)
    }
}

/// A syntax error: the line and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// 1-based line.
    pub line: usize,
    /// What is wrong there.
    pub message: String,
}

/// The marker the compiled file writes before each section.
pub const SOURCE_MARKER: &str = "#@source ";

/// Parse a whole file. Like ConfigParser, any syntax error refuses the whole file.
pub fn parse(text: &str) -> Result<Vec<Section>, SyntaxError> {
    let mut sections: Vec<Section> = Vec::new();
    let mut pending_origin: Option<(PathBuf, usize)> = None;
    // Whether the last non-comment line was an entry that a continuation may extend.
    let mut can_continue = false;
    for (index, raw_line) in text.lines().enumerate() {
        let line = index + 1;
        let raw_line = raw_line.strip_suffix('\r').unwrap_or(raw_line);
        if let Some(marker) = raw_line.strip_prefix(SOURCE_MARKER) {
            pending_origin = parse_marker(marker);
            continue;
        }
        let trimmed = raw_line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            // ConfigParser: blank lines end a value only if not followed by indentation; in
            // practice a blank line ends the continuation.
            if trimmed.is_empty() {
                can_continue = false;
            }
            continue;
        }
        let indented = raw_line.starts_with([' ', '\t']);
        if indented && can_continue {
            if let Some(entry) = sections.last_mut().and_then(|s| s.entries.last_mut()) {
                entry.value.push('\n');
                entry.value.push_str(trimmed);
                continue;
            }
        }
        if let Some(rest) = trimmed.strip_prefix('[') {
            let Some(name) = rest.strip_suffix(']') else {
                return Err(SyntaxError {
                    line,
                    message: format!(
                        "section header `{trimmed}` has no closing `]`; write `[facter]`"
                    ),
                });
            };
            let name = name.trim();
            if name.is_empty() {
                return Err(SyntaxError {
                    line,
                    message: "empty section header `[]`; name the plugin: `[facter]`".into(),
                });
            }
            sections.push(Section {
                name: name.to_string(),
                line,
                entries: Vec::new(),
                origin: pending_origin.take(),
            });
            can_continue = false;
            continue;
        }
        let Some(section) = sections.last_mut() else {
            return Err(SyntaxError {
                line,
                message: format!(
                    "`{trimmed}` comes before any section header; a plugin file starts with `[name]`, e.g. `[facter]`"
                ),
            });
        };
        let Some(split) = trimmed.find(['=', ':']) else {
            return Err(SyntaxError {
                line,
                message: format!("`{trimmed}` is not `key = value`; e.g. `command = facter -y`"),
            });
        };
        let key = trimmed[..split].trim().to_lowercase();
        if key.is_empty() {
            return Err(SyntaxError {
                line,
                message: format!(
                    "`{trimmed}` has no key before `{}`",
                    &trimmed[split..=split]
                ),
            });
        }
        let value = trimmed[split + 1..].trim().to_string();
        section.entries.push(Entry { key, value, line });
        can_continue = true;
    }
    for section in &mut sections {
        for entry in &mut section.entries {
            entry.value = unquote(&entry.value).to_string();
        }
    }
    Ok(sections)
}

fn parse_marker(marker: &str) -> Option<(PathBuf, usize)> {
    let (line, path) = marker.split_once(' ')?;
    Some((PathBuf::from(path), line.parse().ok()?))
}

/// Strip one pair of matching outer quotes, when the inside holds no other such quote
/// (so `'a' 'b'` stays as written).
pub fn unquote(value: &str) -> &str {
    for quote in ['\'', '"'] {
        if value.len() >= 2 && value.starts_with(quote) && value.ends_with(quote) {
            let inner = &value[1..value.len() - 1];
            if !inner.contains(quote) {
                return inner;
            }
        }
    }
    value
}

/// Write a value so that [`parse`] reads it back unchanged, or `None` if no quoting can.
pub fn render_value(value: &str) -> Option<String> {
    if value.contains(['\n', '\r']) {
        return None;
    }
    if unquote(value) == value && value.trim() == value {
        return Some(value.to_string());
    }
    for quote in ['"', '\''] {
        if !value.contains(quote) {
            return Some(format!("{quote}{value}{quote}"));
        }
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_2010_file_with_lines() {
        let text = "[facter]\nname = facter\ncommand: facter -y\n# comment\n; other\nresult_format = 'yaml'\n";
        let sections = parse(text).unwrap();
        assert_eq!(sections.len(), 1);
        let s = &sections[0];
        assert_eq!((s.name.as_str(), s.line), ("facter", 1));
        assert_eq!(s.get("command").unwrap().value, "facter -y");
        assert_eq!(s.get("command").unwrap().line, 3);
        assert_eq!(s.get("result_format").unwrap().value, "yaml");
        assert_eq!(s.get("result_format").unwrap().line, 6);
    }

    #[test]
    fn continuation_and_case() {
        let text = "[a]\nDescription = one\n  two\ncommand = x\n";
        let s = &parse(text).unwrap()[0];
        assert_eq!(s.get("description").unwrap().value, "one\ntwo");
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            ("name = x\n[a]\n", 1, "before any section"),
            ("[a]\njust words\n", 2, "not `key = value`"),
            ("\n[a\n", 2, "closing"),
            ("[]\n", 1, "empty section"),
            ("[a]\n= v\n", 2, "no key"),
        ];
        for (text, line, needle) in cases {
            let err = parse(text).unwrap_err();
            assert_eq!(err.line, line, "{text:?}");
            assert!(err.message.contains(needle), "{text:?}: {}", err.message);
        }
    }

    #[test]
    fn unquote_rules() {
        let cases = [
            ("'x'", "x"),
            ("\"x y\"", "x y"),
            ("'a' 'b'", "'a' 'b'"),
            ("'", "'"),
            ("x", "x"),
            ("-f='${Package}'", "-f='${Package}'"),
        ];
        for (input, want) in cases {
            assert_eq!(unquote(input), want, "{input}");
        }
    }

    #[test]
    fn render_round_trips() {
        for value in ["plain", "'quoted'", "\"dq\"", " lead", "a 'b' c", "'a\"b'"] {
            match render_value(value) {
                Some(rendered) => {
                    let text = format!("[s]\nk = {rendered}\n");
                    assert_eq!(parse(&text).unwrap()[0].entries[0].value, value);
                }
                None => assert!(value.contains('\'') && value.contains('"')),
            }
        }
    }

    #[test]
    fn source_marker_sets_origin() {
        let text = "#@source 7 /etc/x y.cfg\n[a]\ncommand = x\n";
        let s = &parse(text).unwrap()[0];
        assert_eq!(s.origin, Some((PathBuf::from("/etc/x y.cfg"), 7)));
    }
}
