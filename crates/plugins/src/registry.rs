//! The registry of authorized plugins, compiled from a directory of `.cfg` files into one file.
//!
//! As the 2010 client did, the plugin directory is "compiled" once into a single file and the
//! running client reads only that, so edits to the directory never disturb it: a half-written
//! `.cfg` is picked up at the next (re)compile, not mid-run. A broken file or plugin is
//! reported with its file and line and skipped; the others still load.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::exec::{resolve_command, DEFAULT_PATH};
use crate::plugin::{Plugin, PluginFileError, PluginWarning};
use vogeler_config::ini::{self, render_value, SOURCE_MARKER};

/// A failure that stops the registry from loading at all (as opposed to a [`PluginFileError`],
/// which skips one file or plugin).
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The plugin directory cannot be listed.
    #[error("cannot read plugin directory {}: {source}", dir.display())]
    ReadDir {
        /// The directory.
        dir: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The compiled file cannot be written.
    #[error("cannot write compiled plugins to {}: {source}", path.display())]
    WriteCompiled {
        /// The compiled file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The compiled file cannot be read.
    #[error("cannot read compiled plugins {}: {source}", path.display())]
    ReadCompiled {
        /// The compiled file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The compiled file is not what [`Registry::compile`] writes (edited by hand?).
    #[error("compiled plugins {}:{line}: {message}; recompile it from the plugin directory", path.display())]
    Compiled {
        /// The compiled file.
        path: PathBuf,
        /// The 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// The plugins a client may run, looked up by name or alias.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    plugins: Vec<Plugin>,
    index: HashMap<String, usize>,
    warnings: Vec<PluginWarning>,
}

/// One row of the client's `list` output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PluginRow {
    /// The plugin's name.
    pub name: String,
    /// Its alias, or empty.
    pub alias: String,
    /// Its `result_format`.
    pub format: String,
    /// Whether its command was found.
    pub available: bool,
    /// Why not, or empty.
    pub reason: String,
    /// The command as written.
    pub command: String,
    /// `file:line` of its definition.
    pub source: String,
    /// Its description.
    pub description: String,
}

/// What phase one (reading the directory) produced.
struct Compiled {
    text: String,
    errors: Vec<PluginFileError>,
    warnings: Vec<PluginWarning>,
}

impl Registry {
    /// Read every `*.cfg` in `dir` (sorted by file name, not recursive) into a registry,
    /// compiling them in memory. Returns the refused files and plugins beside it.
    pub fn load_dir(dir: &Path) -> Result<(Registry, Vec<PluginFileError>), PluginError> {
        let compiled = compile_dir(dir)?;
        let mut registry = Registry::from_compiled_text(&compiled.text, &dir.join("<compiled>"))?;
        registry.warnings.splice(0..0, compiled.warnings);
        Ok((registry, compiled.errors))
    }

    /// Compile `dir` into the single file `compiled_path` (written atomically; its directory
    /// is created) and load the registry from that file, as the running client does.
    pub fn compile(
        dir: &Path,
        compiled_path: &Path,
    ) -> Result<(Registry, Vec<PluginFileError>), PluginError> {
        let compiled = compile_dir(dir)?;
        let write_err = |source| PluginError::WriteCompiled {
            path: compiled_path.to_path_buf(),
            source,
        };
        if let Some(parent) = compiled_path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(write_err)?;
        }
        let mut tmp = compiled_path.as_os_str().to_owned();
        tmp.push(format!(".tmp.{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        fs::write(&tmp, &compiled.text).map_err(write_err)?;
        fs::rename(&tmp, compiled_path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            write_err(e)
        })?;
        let mut registry = Registry::load_compiled(compiled_path)?;
        registry.warnings.splice(0..0, compiled.warnings);
        Ok((registry, compiled.errors))
    }

    /// Load a file written by [`Registry::compile`]; each plugin keeps its original file and line.
    pub fn load_compiled(compiled_path: &Path) -> Result<Registry, PluginError> {
        let text =
            fs::read_to_string(compiled_path).map_err(|source| PluginError::ReadCompiled {
                path: compiled_path.to_path_buf(),
                source,
            })?;
        Registry::from_compiled_text(&text, compiled_path)
    }

    fn from_compiled_text(text: &str, compiled_path: &Path) -> Result<Registry, PluginError> {
        let broken = |line: usize, message: String| PluginError::Compiled {
            path: compiled_path.to_path_buf(),
            line,
            message,
        };
        let sections = ini::parse(text).map_err(|e| broken(e.line, e.message))?;
        let mut registry = Registry::default();
        for section in &sections {
            let (mut plugin, _) = Plugin::from_section(section, compiled_path)
                .map_err(|e| broken(e.line.unwrap_or(section.line), e.message))?;
            if let Some((source, line)) = &section.origin {
                plugin.source = source.clone();
                plugin.line = *line;
            }
            if let Some(taken) = plugin.names().find(|n| registry.index.contains_key(*n)) {
                return Err(broken(
                    section.line,
                    format!("name `{taken}` is defined twice"),
                ));
            }
            if let Some(program) = plugin.command.first() {
                if resolve_command(program, DEFAULT_PATH).is_none() {
                    let reason =
                        format!("command not found: `{program}` is not in PATH ({DEFAULT_PATH})");
                    registry.warnings.push(PluginFileError::new(
                        &plugin.source,
                        Some(plugin.line),
                        Some(&plugin.name),
                        format!("{reason}; listed as unavailable"),
                    ));
                    plugin.available = false;
                    plugin.unavailable_reason = Some(reason);
                }
            }
            let at = registry.plugins.len();
            for name in plugin.names() {
                registry.index.insert(name.to_string(), at);
            }
            registry.plugins.push(plugin);
        }
        Ok(registry)
    }

    /// The plugin a request names, by name or alias.
    pub fn lookup(&self, name_or_alias: &str) -> Option<&Plugin> {
        self.index.get(name_or_alias).map(|&i| &self.plugins[i])
    }

    /// Every plugin, in file-name then file order.
    pub fn plugins(&self) -> impl Iterator<Item = &Plugin> {
        self.plugins.iter()
    }

    /// Whether a request may run `cmd`: it names a registered plugin (by name or alias).
    /// An unavailable plugin is still authorized; running it yields a "command not found" result.
    pub fn is_authorized(&self, cmd: &str) -> bool {
        self.lookup(cmd).is_some()
    }

    /// Problems that did not stop a plugin from loading (unknown keys, missing commands…).
    pub fn warnings(&self) -> &[PluginWarning] {
        &self.warnings
    }

    /// How many plugins are registered.
    pub fn len(&self) -> usize {
        self.plugins.len()
    }

    /// Whether no plugin is registered.
    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    /// One row per plugin for the client's `list` (also serializable for `--json`).
    pub fn rows(&self) -> Vec<PluginRow> {
        self.plugins
            .iter()
            .map(|p| PluginRow {
                name: p.name.clone(),
                alias: p.alias.clone().unwrap_or_default(),
                format: p.format.to_string(),
                available: p.available,
                reason: p.unavailable_reason.clone().unwrap_or_default(),
                command: p.command_line.clone(),
                source: format!("{}:{}", p.source.display(), p.line),
                description: p.description.clone(),
            })
            .collect()
    }

    /// The `list` table: NAME, ALIAS, FORMAT, AVAILABLE, COMMAND, SOURCE, aligned.
    pub fn describe(&self) -> String {
        let rows = self.rows();
        let header = ["NAME", "ALIAS", "FORMAT", "AVAILABLE", "COMMAND", "SOURCE"];
        let cells: Vec<[String; 6]> = rows
            .iter()
            .map(|r| {
                [
                    r.name.clone(),
                    if r.alias.is_empty() {
                        "-".into()
                    } else {
                        r.alias.clone()
                    },
                    r.format.clone(),
                    if r.available {
                        "yes".into()
                    } else {
                        "no (command not found)".into()
                    },
                    r.command.clone(),
                    r.source.clone(),
                ]
            })
            .collect();
        let mut widths = header.map(str::len);
        for row in &cells {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let mut line = |cols: &[&str]| {
            let mut text = String::new();
            for (i, (cell, w)) in cols.iter().zip(widths).enumerate() {
                if i + 1 == cols.len() {
                    text.push_str(cell);
                } else {
                    let _ = write!(text, "{cell:<w$}  ");
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        };
        line(&header);
        for row in &cells {
            line(&row.each_ref().map(String::as_str));
        }
        out
    }
}

/// Phase one: read and check every file, render the accepted plugins into the compiled text.
fn compile_dir(dir: &Path) -> Result<Compiled, PluginError> {
    let read_dir_err = |source| PluginError::ReadDir {
        dir: dir.to_path_buf(),
        source,
    };
    let mut files: Vec<PathBuf> = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_dir_err)? {
        let path = entry.map_err(read_dir_err)?.path();
        if path.extension().is_some_and(|e| e == "cfg") && path.is_file() {
            files.push(path);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));

    let mut out = Compiled {
        text: format!(
            "# Plugins compiled by vogeler from {}; do not edit.\n# Edit the .cfg files there and restart the client to recompile.\n",
            dir.display()
        ),
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    // name or alias -> (file, line, plugin) that took it
    let mut taken: HashMap<String, (PathBuf, usize, String)> = HashMap::new();
    for path in files {
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) => {
                out.errors.push(PluginFileError::new(
                    &path,
                    None,
                    None,
                    format!("cannot read: {e}"),
                ));
                continue;
            }
        };
        let path_text = path.display().to_string();
        if path_text.contains(['\n', '\r']) {
            out.errors.push(PluginFileError::new(
                &path,
                None,
                None,
                "the file name contains a line break; rename it",
            ));
            continue;
        }
        let sections = match ini::parse(&text) {
            Ok(sections) => sections,
            Err(e) => {
                out.errors.push(PluginFileError::new(
                    &path,
                    Some(e.line),
                    None,
                    format!("{}; the whole file is skipped", e.message),
                ));
                continue;
            }
        };
        if sections.is_empty() {
            out.warnings.push(PluginFileError::new(
                &path,
                None,
                None,
                "defines no plugin; a plugin starts with a `[name]` line",
            ));
        }
        let mut seen_sections: HashMap<&str, usize> = HashMap::new();
        for section in &sections {
            if let Some(first) = seen_sections.insert(&section.name, section.line) {
                seen_sections.insert(&section.name, first);
                out.errors.push(PluginFileError::new(
                    &path,
                    Some(section.line),
                    Some(&section.name),
                    format!("section `[{}]` appears twice in this file (first at line {first}); this one is skipped", section.name),
                ));
                continue;
            }
            let (plugin, warnings) = match Plugin::from_section(section, &path) {
                Ok(ok) => ok,
                Err(e) => {
                    out.errors.push(e);
                    continue;
                }
            };
            if let Some((name, (other_path, other_line, other))) =
                plugin.names().find_map(|n| taken.get(n).map(|t| (n, t)))
            {
                out.errors.push(PluginFileError::new(
                    &path,
                    Some(section.line),
                    Some(&plugin.name),
                    format!(
                        "`{name}` is already used by plugin `{other}` ({}:{other_line}); this one is skipped",
                        other_path.display()
                    ),
                ));
                continue;
            }
            let rendered = match render(&plugin, &path_text) {
                Ok(rendered) => rendered,
                Err(message) => {
                    out.errors.push(PluginFileError::new(
                        &path,
                        Some(section.line),
                        Some(&plugin.name),
                        message,
                    ));
                    continue;
                }
            };
            for name in plugin.names() {
                taken.insert(
                    name.to_string(),
                    (path.clone(), section.line, plugin.name.clone()),
                );
            }
            out.warnings.extend(warnings);
            out.text.push_str(&rendered);
        }
    }
    Ok(out)
}

/// One plugin as a normalized section of the compiled file.
fn render(plugin: &Plugin, path_text: &str) -> Result<String, String> {
    let mut fields: Vec<(&str, String)> = vec![
        ("name", plugin.name.clone()),
        ("description", plugin.description.clone()),
        ("command", plugin.command_line.clone()),
        ("result_format", plugin.format.to_string()),
    ];
    if let Some(alias) = &plugin.alias {
        fields.push(("command_alias", alias.clone()));
    }
    if let Some(interval) = plugin.interval {
        fields.push(("interval", interval.as_secs_f64().to_string()));
    }
    if let Some(timeout) = plugin.timeout {
        fields.push(("timeout", timeout.as_secs_f64().to_string()));
    }
    // Only the non-default is written, so files compiled before the option read the same.
    if !plugin.history {
        fields.push(("history", "false".into()));
    }
    let mut text = format!(
        "\n{SOURCE_MARKER}{} {path_text}\n[{}]\n",
        plugin.line, plugin.name
    );
    for (key, value) in fields {
        let value = render_value(&value)
            .ok_or_else(|| format!("`{key}` mixes both quote characters at its ends and cannot be compiled; simplify it"))?;
        let _ = writeln!(text, "{key} = {value}");
    }
    Ok(text)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::format::Format;

    fn repo(path: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(path)
    }

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    const GOOD: &str = "[echo]\nname = echo\ndescription = says hi\ncommand = echo hi\nresult_format = output\ncommand_alias = say\n";

    #[test]
    fn loads_shipped_plugins() {
        let (registry, errors) = Registry::load_dir(&repo("etc/plugins")).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        let names: Vec<_> = registry.plugins().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["dpkg", "facter", "ohai", "os_release", "ps", "rpm"]);
        let lookups = [
            ("get_facts", "facter", Format::Yaml),
            ("ohai", "ohai", Format::Json),
            ("get_procs", "ps", Format::Output),
            ("get_rpms", "rpm", Format::Kv),
            ("get_packages", "dpkg", Format::Kv),
            ("os_release", "os_release", Format::Kv),
        ];
        for (query, name, format) in lookups {
            let p = registry.lookup(query).unwrap();
            assert_eq!((p.name.as_str(), p.format), (name, format), "{query}");
            assert!(registry.is_authorized(query));
        }
        assert!(!registry.is_authorized("rm"));
        let ps = registry.lookup("ps").unwrap();
        assert!(ps.available);
        // The file's `history = false` survives compiling (the client reads the
        // compiled file, so losing it there stored ps's history after all).
        assert!(!ps.history);
        assert!(registry.lookup("facter").unwrap().history);
        assert!(ps.source.ends_with("ps.cfg"));
        assert!(ps.line >= 1);
    }

    #[test]
    fn loads_2010_plugins() {
        let (registry, errors) =
            Registry::load_dir(&repo("fixtures/vogeler-2010/plugins")).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(registry.len(), 4);
        let facter = registry.lookup("get_facts").unwrap();
        assert_eq!(facter.command, ["facter", "-y"]);
        assert_eq!(facter.line, 1);
        assert!(facter.source.ends_with("facter.cfg"));
        assert_eq!(registry.lookup("get_rpms").unwrap().name, "rpm");
    }

    #[test]
    fn broken_2010_plugin_is_skipped() {
        let broken = fs::read_to_string(repo("fixtures/vogeler-2010/plugins-broken.cfg")).unwrap();
        let dir = dir_with(&[("broken.cfg", &broken), ("echo.cfg", GOOD)]);
        let (registry, errors) = Registry::load_dir(dir.path()).unwrap();
        assert_eq!(errors.len(), 1, "{errors:?}");
        let e = &errors[0];
        assert!(e.path.ends_with("broken.cfg"));
        assert_eq!(e.line, Some(5));
        assert!(
            e.to_string().contains("unknown result_format `broken`"),
            "{e}"
        );
        assert!(registry.lookup("broken").is_none());
        assert!(registry.lookup("say").is_some());
    }

    #[test]
    fn refused_files_and_plugins() {
        let cases: &[(&str, &str, Option<usize>, &str)] = &[
            ("nosection.cfg", "command = ls\nresult_format = output\n", Some(1), "before any section"),
            ("nocommand.cfg", "[a]\nresult_format = output\n", Some(1), "no `command`"),
            ("reserved.cfg", "[doc_type]\ncommand = ls\nresult_format = output\n", Some(1), "doc_type"),
            ("underscore.cfg", "[_id]\ncommand = ls\nresult_format = output\n", Some(1), "`_`"),
            ("twice.cfg", "[b]\ncommand = ls\nresult_format = output\n[b]\ncommand = ls\nresult_format = output\n", Some(4), "appears twice"),
            ("zdup.cfg", "[other]\ncommand = ls\nresult_format = output\ncommand_alias = say\n", Some(1), "already used by plugin `echo`"),
        ];
        for (file, text, line, needle) in cases {
            let dir = dir_with(&[("echo.cfg", GOOD), (file, text)]);
            let (registry, errors) = Registry::load_dir(dir.path()).unwrap();
            assert_eq!(errors.len(), 1, "{file}: {errors:?}");
            assert!(errors[0].path.ends_with(file), "{}", errors[0]);
            assert_eq!(errors[0].line, *line, "{}", errors[0]);
            assert!(errors[0].to_string().contains(needle), "{}", errors[0]);
            assert!(registry.lookup("echo").is_some(), "{file}");
        }
    }

    #[test]
    fn later_file_loses_duplicate_name() {
        let dir = dir_with(&[
            ("a.cfg", GOOD),
            ("b.cfg", "[say]\ncommand = ls\nresult_format = output\n"),
        ]);
        let (registry, errors) = Registry::load_dir(dir.path()).unwrap();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].path.ends_with("b.cfg"));
        assert_eq!(registry.lookup("say").unwrap().name, "echo");
    }

    #[test]
    fn compile_writes_one_file_and_keeps_origins() {
        let dir = dir_with(&[
            (
                "b.cfg",
                "# comment\n\n[two]\ncommand = 'echo two'\nresult_format = string\ninterval = 60\n",
            ),
            ("a.cfg", GOOD),
            ("ignored.txt", "[x]\n"),
        ]);
        let out = tempfile::tempdir().unwrap();
        let compiled = out.path().join("run/plugins.compiled");
        let (registry, errors) = Registry::compile(dir.path(), &compiled).unwrap();
        assert!(errors.is_empty());
        assert_eq!(registry.len(), 2);
        let two = registry.lookup("two").unwrap();
        assert_eq!(two.command, ["echo", "two"]);
        assert_eq!(two.line, 3);
        assert!(two.source.ends_with("b.cfg"));
        assert_eq!(two.interval, Some(std::time::Duration::from_secs(60)));

        // The running client keeps its registry when the directory changes.
        fs::write(dir.path().join("a.cfg"), "garbage").unwrap();
        let again = Registry::load_compiled(&compiled).unwrap();
        assert_eq!(
            again.plugins().collect::<Vec<_>>(),
            registry.plugins().collect::<Vec<_>>()
        );
    }

    #[test]
    fn missing_command_is_unavailable_not_refused() {
        let dir = dir_with(&[(
            "x.cfg",
            "[x]\ncommand = no-such-command-vogeler\nresult_format = output\n",
        )]);
        let (registry, errors) = Registry::load_dir(dir.path()).unwrap();
        assert!(errors.is_empty());
        let x = registry.lookup("x").unwrap();
        assert!(!x.available);
        assert!(x
            .unavailable_reason
            .as_deref()
            .unwrap()
            .contains("command not found"));
        assert!(registry.is_authorized("x"));
        assert_eq!(registry.warnings().len(), 1);
        assert!(registry.describe().contains("no (command not found)"));
    }

    #[test]
    fn describe_table() {
        let dir = dir_with(&[("a.cfg", GOOD)]);
        let (registry, _) = Registry::load_dir(dir.path()).unwrap();
        let table = registry.describe();
        let lines: Vec<_> = table.lines().collect();
        assert!(
            lines[0].starts_with("NAME  ALIAS  FORMAT  AVAILABLE  COMMAND  SOURCE"),
            "{table}"
        );
        assert!(
            lines[1].starts_with("echo  say    output  yes        echo hi"),
            "{table}"
        );
        assert!(lines[1].ends_with("a.cfg:1"), "{table}");
    }

    #[test]
    fn missing_dir_is_fatal() {
        let err = Registry::load_dir(Path::new("/nonexistent/vogeler")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/vogeler"));
    }

    #[test]
    fn hand_edited_compiled_file_is_refused() {
        let out = tempfile::tempdir().unwrap();
        let path = out.path().join("c");
        fs::write(&path, "[a]\ncommand = ls\nresult_format = nope\n").unwrap();
        let err = Registry::load_compiled(&path).unwrap_err();
        assert!(err.to_string().contains("recompile"), "{err}");
    }
}
