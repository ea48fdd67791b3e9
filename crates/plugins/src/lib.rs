//! Vogeler plugins: the `.cfg` plugin files, the compiled registry of authorized plugins,
//! result formats, and running a plugin's command without a shell.
//!
//! A client loads its plugin directory once with [`Registry::compile`] (or
//! [`Registry::load_dir`]), authorizes a request with [`Registry::lookup`], and runs the plugin
//! with [`run_plugin`], which yields the JSON value for the node's record or an error result
//! that keeps the raw output. [`Format::convert`] does no I/O, so the server can convert 2010
//! results (raw output plus format) with the same code.

mod delimited;
mod exec;
mod format;
mod kv;
mod plugin;
mod pyliteral;
mod registry;

pub use exec::{
    execute, resolve_command, run_plugin, ExecLimits, Execution, PluginOutcome, RunAs, RunAsError,
    RunError, DEFAULT_OUTPUT_CAP, DEFAULT_PATH, DEFAULT_TIMEOUT, STDERR_CAP,
};
pub use format::{Format, FormatError, UnknownFormat};
pub use plugin::{
    check_plugin_name, InvalidPluginName, Plugin, PluginFileError, PluginWarning, KNOWN_KEYS,
    RESERVED_NAMES,
};
pub use registry::{PluginError, PluginRow, Registry};
