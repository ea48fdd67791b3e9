//! One plugin: its definition, checked from a `.cfg` section, and the diagnostics that name
//! the file and line a problem is on.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::format::Format;
use vogeler_config::ini::Section;

/// Document fields the store owns; a plugin with one of these names would overwrite them.
pub const RESERVED_NAMES: [&str; 6] = [
    "doc_type",
    "system_name",
    "created_at",
    "updated_at",
    "last_seen",
    "last_error",
];

/// The keys a plugin section may have; anything else is warned about and ignored.
pub const KNOWN_KEYS: [&str; 8] = [
    "name",
    "description",
    "command",
    "result_format",
    "command_alias",
    "interval",
    "timeout",
    "history",
];

/// An authorized command: what to run, how to read its output, and where it was defined.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plugin {
    /// The key its result is stored under in the node's record.
    pub name: String,
    /// Free text for `list`.
    pub description: String,
    /// The argv to run, split with shell-words rules (never run through a shell).
    pub command: Vec<String>,
    /// The command as written in the file, for display.
    pub command_line: String,
    /// How the output becomes JSON.
    pub format: Format,
    /// Another name a request may use (2010's `command_alias`).
    pub alias: Option<String>,
    /// How often scheduled inventory runs it, if at all.
    pub interval: Option<Duration>,
    /// Overrides the client's default run time limit.
    pub timeout: Option<Duration>,
    /// Whether the server keeps this key's history (`history = false`: a volatile
    /// value such as `ps`, stored as its current value only, so it floods neither
    /// history nor `changes`).
    pub history: bool,
    /// The `.cfg` file that defined it.
    pub source: PathBuf,
    /// The line of its `[section]` header in `source`.
    pub line: usize,
    /// Whether its command was found when the registry loaded; runs are still attempted.
    pub available: bool,
    /// Why it is unavailable (e.g. "command not found: `facter` is not in PATH ...").
    pub unavailable_reason: Option<String>,
}

/// A plugin definition that was refused (and skipped) or is suspicious (and kept), with the
/// file and line to fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
pub struct PluginFileError {
    /// The `.cfg` file.
    pub path: PathBuf,
    /// The 1-based line, when the problem is on one line.
    pub line: Option<usize>,
    /// The plugin (section) concerned, when known.
    pub plugin: Option<String>,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// A problem worth telling the operator about that did not stop a plugin from loading.
pub type PluginWarning = PluginFileError;

impl PluginFileError {
    pub(crate) fn new(
        path: &Path,
        line: Option<usize>,
        plugin: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        PluginFileError {
            path: path.to_path_buf(),
            line,
            plugin: plugin.map(str::to_string),
            message: message.into(),
        }
    }
}

impl fmt::Display for PluginFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(plugin) = &self.plugin {
            write!(f, ": plugin `{plugin}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Why a name cannot be a plugin name (a key of the node's record).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{name}` cannot be a plugin name: {reason}")]
pub struct InvalidPluginName {
    /// The refused name.
    pub name: String,
    /// Why.
    pub reason: String,
}

/// Check that `name` is a safe key for the node's record: ASCII letters, digits, `_`, `-`,
/// `.`; not starting with `_` (CouchDB reserves those); not a field the store owns.
pub fn check_plugin_name(name: &str) -> Result<(), InvalidPluginName> {
    let refuse = |reason: String| {
        Err(InvalidPluginName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return refuse("it is empty; e.g. `name = facter`".into());
    }
    if name.starts_with('_') {
        return refuse("names starting with `_` are reserved for the store".into());
    }
    if RESERVED_NAMES.contains(&name) {
        return refuse(format!(
            "it is a field of the node's record ({})",
            RESERVED_NAMES.join(", ")
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return refuse(format!(
            "`{bad}` is not allowed; use letters, digits, `_`, `-` or `.`, e.g. `os_release`"
        ));
    }
    Ok(())
}

fn parse_seconds(value: &str) -> Result<Duration, String> {
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| format!("`{value}` is not a number of seconds greater than 0; e.g. `3600`"))
}

/// A `.cfg` boolean as ConfigParser's `getboolean` reads it (case-insensitive).
fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "yes" | "true" | "on" => Some(true),
        "0" | "no" | "false" | "off" => Some(false),
        _ => None,
    }
}

impl Plugin {
    /// Check one section of `path` and build the plugin it defines. Unknown keys are
    /// returned as warnings; availability is decided later by the registry.
    pub(crate) fn from_section(
        section: &Section,
        path: &Path,
    ) -> Result<(Plugin, Vec<PluginWarning>), PluginFileError> {
        let section_name = section.name.as_str();
        let err = |line: usize, message: String| {
            PluginFileError::new(path, Some(line), Some(section_name), message)
        };
        let mut warnings = Vec::new();
        for entry in &section.entries {
            if !KNOWN_KEYS.contains(&entry.key.as_str()) {
                warnings.push(PluginFileError::new(
                    path,
                    Some(entry.line),
                    Some(section_name),
                    format!(
                        "unknown key `{}` ignored; known keys: {}",
                        entry.key,
                        KNOWN_KEYS.join(", ")
                    ),
                ));
            }
        }

        let name = match section.get("name") {
            Some(entry) if entry.value != section.name => {
                return Err(err(
                    entry.line,
                    format!(
                        "`name = {}` differs from the section header `[{}]`; make them the same",
                        entry.value, section.name
                    ),
                ))
            }
            _ => section.name.clone(),
        };
        check_plugin_name(&name).map_err(|e| {
            err(
                section.get("name").map_or(section.line, |e| e.line),
                e.to_string(),
            )
        })?;

        let Some(command_entry) = section.get("command") else {
            return Err(err(
                section.line,
                "no `command`; add e.g. `command = facter -y`".into(),
            ));
        };
        let command_line = command_entry.value.replace('\n', " ");
        let command = shell_words::split(&command_line).map_err(|e| {
            err(
                command_entry.line,
                format!("cannot split `command = {command_line}`: {e}"),
            )
        })?;
        if command.is_empty() {
            return Err(err(
                command_entry.line,
                "`command` is empty; e.g. `command = facter -y`".into(),
            ));
        }

        let Some(format_entry) = section.get("result_format") else {
            return Err(err(
                section.line,
                "no `result_format`; add e.g. `result_format = output`".into(),
            ));
        };
        let format = Format::parse(&format_entry.value)
            .map_err(|e| err(format_entry.line, e.to_string()))?;

        let alias = match section.get("command_alias") {
            Some(entry) if entry.value.is_empty() || entry.value.contains(char::is_whitespace) => {
                return Err(err(
                    entry.line,
                    format!(
                        "`command_alias = {}` must be one word; e.g. `command_alias = get_facts`",
                        entry.value
                    ),
                ))
            }
            Some(entry) => Some(entry.value.clone()),
            None => None,
        };
        let seconds = |key: &str| -> Result<Option<Duration>, PluginFileError> {
            section
                .get(key)
                .map(|e| parse_seconds(&e.value).map_err(|m| err(e.line, format!("`{key}`: {m}"))))
                .transpose()
        };
        let interval = seconds("interval")?;
        let timeout = seconds("timeout")?;
        let history = match section.get("history") {
            None => true,
            Some(e) => parse_bool(&e.value).ok_or_else(|| {
                err(
                    e.line,
                    format!(
                        "`history = {}` is not a boolean; write `history = false` (keep only the current value) or `history = true`",
                        e.value
                    ),
                )
            })?,
        };
        let description = section
            .get("description")
            .map(|e| e.value.replace('\n', " "))
            .unwrap_or_default();

        let plugin = Plugin {
            name,
            description,
            command,
            command_line,
            format,
            alias,
            interval,
            timeout,
            history,
            source: path.to_path_buf(),
            line: section.line,
            available: true,
            unavailable_reason: None,
        };
        Ok((plugin, warnings))
    }

    /// Every name a request may use for this plugin: its name, then its alias.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.name.as_str()).chain(self.alias.as_deref())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use vogeler_config::ini;

    fn build(text: &str) -> Result<Plugin, PluginFileError> {
        let sections = ini::parse(text).unwrap();
        Plugin::from_section(&sections[0], Path::new("x.cfg")).map(|(p, _)| p)
    }

    #[test]
    fn builds_facter() {
        let p = build("[facter]\nname = facter\ndescription = d\ncommand = facter -y\nresult_format = yaml\ncommand_alias = get_facts\ninterval = 3600\ntimeout = 1.5\n").unwrap();
        assert_eq!(p.command, ["facter", "-y"]);
        assert_eq!(p.format, Format::Yaml);
        assert_eq!(p.alias.as_deref(), Some("get_facts"));
        assert_eq!(p.interval, Some(Duration::from_secs(3600)));
        assert_eq!(p.timeout, Some(Duration::from_millis(1500)));
        assert_eq!(p.names().collect::<Vec<_>>(), ["facter", "get_facts"]);
    }

    #[test]
    fn history_is_kept_unless_the_file_says_false() {
        let keep = build("[a]\ncommand = x\nresult_format = output\n").unwrap();
        assert!(keep.history);
        for off in ["false", "no", "0", "off", "False"] {
            let p = build(&format!(
                "[a]\ncommand = x\nresult_format = output\nhistory = {off}\n"
            ))
            .unwrap();
            assert!(!p.history, "history = {off}");
        }
        let on = build("[a]\ncommand = x\nresult_format = output\nhistory = yes\n").unwrap();
        assert!(on.history);
    }

    #[test]
    fn the_bundled_ps_plugin_keeps_no_history() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../etc/plugins/ps.cfg");
        let text = std::fs::read_to_string(&path).unwrap();
        let sections = ini::parse(&text).unwrap();
        let (p, warnings) = Plugin::from_section(&sections[0], &path).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(p.name, "ps");
        assert!(!p.history);
    }

    #[test]
    fn shell_words_split() {
        let p = build(
            "[dpkg]\ncommand = dpkg-query -W -f='${Package}=${Version}\\n'\nresult_format = kv\n",
        )
        .unwrap();
        assert_eq!(
            p.command,
            ["dpkg-query", "-W", "-f=${Package}=${Version}\\n"]
        );
    }

    #[test]
    fn refusals_name_the_line() {
        let cases = [
            ("[a]\nresult_format = output\n", 1, "no `command`"),
            ("[a]\ncommand = x\n", 1, "no `result_format`"),
            (
                "[a]\ncommand = x\nresult_format = broken\n",
                3,
                "unknown result_format `broken`",
            ),
            ("[a]\ncommand = \"\"\nresult_format = output\n", 2, "empty"),
            (
                "[a]\ncommand = x 'open\nresult_format = output\n",
                2,
                "cannot split",
            ),
            (
                "[a]\nname = b\ncommand = x\nresult_format = output\n",
                2,
                "differs",
            ),
            (
                "[_a]\ncommand = x\nresult_format = output\n",
                1,
                "reserved for the store",
            ),
            (
                "[last_seen]\ncommand = x\nresult_format = output\n",
                1,
                "field of the node's record",
            ),
            (
                "[a b]\ncommand = x\nresult_format = output\n",
                1,
                "not allowed",
            ),
            (
                "[a]\ncommand = x\nresult_format = output\ntimeout = 0\n",
                4,
                "greater than 0",
            ),
            (
                "[a]\ncommand = x\nresult_format = output\ncommand_alias = two words\n",
                4,
                "one word",
            ),
            (
                "[a]\ncommand = x\nresult_format = output\nhistory = sometimes\n",
                4,
                "`history = sometimes` is not a boolean",
            ),
        ];
        for (text, line, needle) in cases {
            let e = build(text).unwrap_err();
            assert_eq!(e.line, Some(line), "{text:?}: {e}");
            assert!(e.to_string().contains(needle), "{text:?}: {e}");
            assert!(e.to_string().starts_with("x.cfg:"), "{e}");
        }
    }

    #[test]
    fn unknown_keys_warn() {
        let sections =
            ini::parse("[a]\ncommand = x\nresult_format = output\ncolour = red\n").unwrap();
        let (_, warnings) = Plugin::from_section(&sections[0], Path::new("x.cfg")).unwrap();
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].line, Some(4));
        assert!(warnings[0].to_string().contains("unknown key `colour`"));
    }
}
