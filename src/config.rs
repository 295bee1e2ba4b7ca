//! `seedcore.toml`: its schema, `--set` overrides and validation.
//!
//! First stage of the flow: text -> [`RawConfig`] (serde, numbers kept wide so
//! that out-of-range values get our own message) -> [`Config`] (validated,
//! typed, defaults filled). Every error points at the file, line and column of
//! the offending text (or at the `--set` that introduced it) and carries a
//! `hint:` with the fix.

use crate::model::HostName;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Ray's default ports, as documented in the README.
pub mod defaults {
    pub const CLUSTER_NAME: &str = "seedcore";
    pub const IMAGE: &str = "rayproject/ray:2.60.0";
    pub const GCS_PORT: u16 = 6380;
    pub const CLIENT_SERVER_PORT: u16 = 10001;
    pub const DASHBOARD_PORT: u16 = 8265;
    pub const SERVE_PORT: u16 = 8000;
    pub const OBJECT_MANAGER_PORT: u16 = 8076;
    pub const NODE_MANAGER_PORT: u16 = 8077;
    pub const WORKER_PORTS: &str = "11000-11020";
    pub const HEAD_WORKER_PORTS: &str = "10002-10099";
    pub const AGENT_PORTS: &str = "52365-52464";
    pub const SHM_SIZE: &str = "2g";
    pub const SSH_PORT: u16 = 22;
    pub const MAX_PARALLEL: usize = 32;
    pub const CONNECT_TIMEOUT_SECS: u64 = 10;
    pub const HEAD_READY_SECS: u64 = 120;
    pub const NODES_ALIVE_SECS: u64 = 180;
    pub const DRAIN_SECS: u64 = 60;
    pub const STOP_SECS: u64 = 10;
}

/// An inclusive range of ports, written `"11000-11020"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn len(&self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// How unknown SSH host keys are treated. There is deliberately no "off".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KnownHostsPolicy {
    Strict,
    AcceptNew,
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub cluster: ClusterConfig,
    pub ssh: SshConfig,
    pub head: HeadConfig,
    pub workers: BTreeMap<String, WorkerGroup>,
    pub timeouts: Timeouts,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    pub name: String,
    /// Pinned cluster identity (see `ownership`); `None`: derived.
    pub id: Option<String>,
    pub image: String,
    /// Per-host range the agent and metrics ports of every node are carved from.
    pub agent_ports: PortRange,
    pub usage_stats: bool,
    pub oversubscribe_cpus: bool,
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SshConfig {
    pub user: Option<String>,
    /// `None`: ssh's own default (`~/.ssh/config`, else 22).
    pub port: Option<u16>,
    pub identity_file: Option<PathBuf>,
    pub known_hosts: KnownHostsPolicy,
    pub known_hosts_file: Option<PathBuf>,
    pub max_parallel: usize,
    pub connect_timeout_secs: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HeadConfig {
    pub host: HostName,
    pub image: Option<String>,
    pub cpus: u32,
    pub gcs_port: u16,
    pub client_server_port: u16,
    pub dashboard_port: u16,
    pub serve: bool,
    pub serve_port: u16,
    pub shm_size_bytes: u64,
    pub object_manager_port: u16,
    pub node_manager_port: u16,
    pub worker_ports: PortRange,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WorkerGroup {
    pub hosts: Vec<HostName>,
    pub count: u32,
    pub cpus: u32,
    pub image: Option<String>,
    pub shm_size_bytes: u64,
    /// Written in the file: the exact port of the group's first node on each
    /// host. `None`: chosen by seedcore (and kept while the node runs).
    pub object_manager_port: Option<u16>,
    pub node_manager_port: Option<u16>,
    /// Written in the file: split into equal slices between the group's
    /// nodes on each host. `None`: slices chosen by seedcore from 11000 up.
    pub worker_ports: Option<PortRange>,
    /// Fixed slice of `worker_ports` per node: nodes keep their ports when
    /// `count` changes. Without it the range is split evenly.
    pub worker_ports_per_node: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Timeouts {
    pub head_ready_secs: u64,
    pub nodes_alive_secs: u64,
    pub drain_secs: u64,
    pub stop_secs: u64,
}

// ---------------------------------------------------------------------------
// Raw schema (serde)

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    cluster: RawCluster,
    #[serde(default)]
    ssh: RawSsh,
    head: Option<RawHead>,
    #[serde(default)]
    workers: BTreeMap<String, RawGroup>,
    #[serde(default)]
    timeouts: RawTimeouts,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    name: Option<String>,
    id: Option<String>,
    image: Option<String>,
    agent_ports: Option<String>,
    usage_stats: Option<bool>,
    oversubscribe_cpus: Option<bool>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSsh {
    user: Option<String>,
    port: Option<i64>,
    identity_file: Option<String>,
    known_hosts: Option<String>,
    known_hosts_file: Option<String>,
    max_parallel: Option<i64>,
    connect_timeout: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHead {
    host: Option<String>,
    image: Option<String>,
    cpus: Option<i64>,
    gcs_port: Option<i64>,
    client_server_port: Option<i64>,
    dashboard_port: Option<i64>,
    serve: Option<bool>,
    serve_port: Option<i64>,
    shm_size: Option<String>,
    object_manager_port: Option<i64>,
    node_manager_port: Option<i64>,
    worker_ports: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    hosts: Option<Vec<String>>,
    count: Option<i64>,
    cpus: Option<i64>,
    image: Option<String>,
    shm_size: Option<String>,
    object_manager_port: Option<i64>,
    node_manager_port: Option<i64>,
    worker_ports: Option<String>,
    worker_ports_per_node: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    head_ready: Option<i64>,
    nodes_alive: Option<i64>,
    drain: Option<i64>,
    stop: Option<i64>,
}

/// The kind of value a key holds, for unknown-key checks and `--set` typing.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Int,
    Str,
    Bool,
    StrList,
    /// A table of string values with free keys (`env`).
    StrMap,
    Table(&'static [(&'static str, Kind)]),
    /// A table of named tables of the given shape (`workers`).
    Named(&'static [(&'static str, Kind)]),
}

const CLUSTER_KEYS: &[(&str, Kind)] = &[
    ("name", Kind::Str),
    ("id", Kind::Str),
    ("image", Kind::Str),
    ("agent_ports", Kind::Str),
    ("usage_stats", Kind::Bool),
    ("oversubscribe_cpus", Kind::Bool),
    ("env", Kind::StrMap),
];
const SSH_KEYS: &[(&str, Kind)] = &[
    ("user", Kind::Str),
    ("port", Kind::Int),
    ("identity_file", Kind::Str),
    ("known_hosts", Kind::Str),
    ("known_hosts_file", Kind::Str),
    ("max_parallel", Kind::Int),
    ("connect_timeout", Kind::Int),
];
const HEAD_KEYS: &[(&str, Kind)] = &[
    ("host", Kind::Str),
    ("image", Kind::Str),
    ("cpus", Kind::Int),
    ("gcs_port", Kind::Int),
    ("client_server_port", Kind::Int),
    ("dashboard_port", Kind::Int),
    ("serve", Kind::Bool),
    ("serve_port", Kind::Int),
    ("shm_size", Kind::Str),
    ("object_manager_port", Kind::Int),
    ("node_manager_port", Kind::Int),
    ("worker_ports", Kind::Str),
];
const GROUP_KEYS: &[(&str, Kind)] = &[
    ("hosts", Kind::StrList),
    ("count", Kind::Int),
    ("cpus", Kind::Int),
    ("image", Kind::Str),
    ("shm_size", Kind::Str),
    ("object_manager_port", Kind::Int),
    ("node_manager_port", Kind::Int),
    ("worker_ports", Kind::Str),
    ("worker_ports_per_node", Kind::Int),
];
const TIMEOUT_KEYS: &[(&str, Kind)] = &[
    ("head_ready", Kind::Int),
    ("nodes_alive", Kind::Int),
    ("drain", Kind::Int),
    ("stop", Kind::Int),
];
const ROOT_KEYS: &[(&str, Kind)] = &[
    ("cluster", Kind::Table(CLUSTER_KEYS)),
    ("ssh", Kind::Table(SSH_KEYS)),
    ("head", Kind::Table(HEAD_KEYS)),
    ("workers", Kind::Named(GROUP_KEYS)),
    ("timeouts", Kind::Table(TIMEOUT_KEYS)),
];

// ---------------------------------------------------------------------------
// Overrides

/// Where an override came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverrideSource {
    /// `--set key=value`
    Flag,
    /// An environment variable honoured for compatibility (`HEAD_IP_OVERRIDE`).
    Env(&'static str),
}

/// One `--set key=value` (or its environment equivalent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    pub key: String,
    pub value: String,
    pub source: OverrideSource,
}

impl Override {
    /// Parses `key=value` as given to `--set`.
    pub fn parse_flag(text: &str) -> Result<Override, String> {
        let (key, value) = text.split_once('=').ok_or_else(|| {
            format!("`{text}` is not of the form KEY=VALUE (e.g. `head.host=10.0.0.5`)")
        })?;
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("`{text}` has an empty key"));
        }
        Ok(Override {
            key: key.to_string(),
            value: value.to_string(),
            source: OverrideSource::Flag,
        })
    }

    /// How the plan header names this override.
    pub fn describe(&self) -> String {
        match self.source {
            OverrideSource::Flag => format!("{} = {} (--set)", self.key, self.value),
            OverrideSource::Env(var) => format!("{} = {} (from ${var})", self.key, self.value),
        }
    }
}

/// Overrides taken from the environment: `HEAD_IP_OVERRIDE` acts like
/// `--set head.host=...`, for users coming from the shell scripts.
pub fn env_overrides(lookup: impl Fn(&str) -> Option<String>) -> Vec<Override> {
    match lookup("HEAD_IP_OVERRIDE") {
        Some(v) if !v.trim().is_empty() => vec![Override {
            key: "head.host".to_string(),
            value: v.trim().to_string(),
            source: OverrideSource::Env("HEAD_IP_OVERRIDE"),
        }],
        _ => Vec::new(),
    }
}

// ---------------------------------------------------------------------------
// Errors

/// Where an error points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A place in the file.
    File {
        path: String,
        line: usize,
        column: usize,
        line_text: String,
        width: usize,
    },
    /// A value given with `--set` or the environment.
    Override(String),
    /// A default value, not written anywhere; the table it belongs to.
    Default(String),
}

/// One configuration error with its fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub message: String,
    pub location: Option<Location>,
    pub hint: Option<String>,
}

/// All the errors found in a configuration, reported at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::error::Error for ConfigErrors {}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "error: {}", self.message)?;
        match &self.location {
            Some(Location::File {
                path,
                line,
                column,
                line_text,
                width,
            }) => {
                let gutter = line.to_string().len();
                writeln!(f, "{:gutter$}--> {path}:{line}:{column}", "")?;
                writeln!(f, "{:gutter$} |", "")?;
                writeln!(f, "{line} | {line_text}")?;
                writeln!(
                    f,
                    "{:gutter$} | {}{}",
                    "",
                    " ".repeat(column.saturating_sub(1)),
                    "^".repeat((*width).max(1))
                )?;
            }
            Some(Location::Override(text)) => writeln!(f, " --> {text}")?,
            Some(Location::Default(text)) => writeln!(f, " --> {text}")?,
            None => {}
        }
        if let Some(hint) = &self.hint {
            writeln!(f, "hint: {hint}")?;
        }
        Ok(())
    }
}

/// A problem found after parsing (validation, topology), located by key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    /// Dotted key path, e.g. `workers.remote.cpus`.
    pub key: String,
    pub message: String,
    pub hint: Option<String>,
}

// ---------------------------------------------------------------------------
// Source and spans

/// The configuration text with the spans of its keys, to locate errors.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: String,
    pub text: String,
    /// Dotted key path -> (key span, value span).
    spans: BTreeMap<String, (Range<usize>, Range<usize>)>,
    overrides: Vec<Override>,
}

impl Source {
    fn line_col(&self, offset: usize) -> (usize, usize, String) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let line_end = self.text[line_start..]
            .find('\n')
            .map(|i| line_start + i)
            .unwrap_or(self.text.len());
        let column = self.text[line_start..offset].chars().count() + 1;
        (
            line,
            column,
            self.text[line_start..line_end].trim_end().to_string(),
        )
    }

    fn at_span(&self, span: Range<usize>) -> Location {
        let (line, column, line_text) = self.line_col(span.start);
        let width = self.text[span.start..span.end.min(self.text.len())]
            .lines()
            .next()
            .map(|l| l.chars().count())
            .unwrap_or(1);
        Location::File {
            path: self.path.clone(),
            line,
            column,
            line_text,
            width,
        }
    }

    /// Locates a key path: the override that set it, else its value in the
    /// file, else the nearest enclosing table written in the file.
    pub fn locate(&self, key: &str) -> Option<Location> {
        if let Some(o) = self.overrides.iter().rev().find(|o| o.key == key) {
            return Some(Location::Override(match o.source {
                OverrideSource::Flag => format!("--set {}={}", o.key, o.value),
                OverrideSource::Env(var) => format!("${var}={}", o.value),
            }));
        }
        if let Some((_, value)) = self.spans.get(key) {
            return Some(self.at_span(value.clone()));
        }
        let mut parts: Vec<&str> = key.split('.').collect();
        while parts.len() > 1 {
            parts.pop();
            let parent = parts.join(".");
            // A table that only an override brought in: point at the override.
            if !self.spans.contains_key(&parent) {
                if let Some(o) = self
                    .overrides
                    .iter()
                    .rev()
                    .find(|o| o.key.starts_with(&format!("{parent}.")))
                {
                    return Some(Location::Override(match o.source {
                        OverrideSource::Flag => format!("--set {}={}", o.key, o.value),
                        OverrideSource::Env(var) => format!("${var}={}", o.value),
                    }));
                }
            }
            if let Some((k, _)) = self.spans.get(&parent) {
                return Some(self.at_span(k.clone()));
            }
        }
        Some(Location::Default(format!(
            "{}: `{key}` is not set in the file",
            self.path
        )))
    }

    /// Turns key-located errors into located configuration errors.
    pub fn errors(&self, errors: Vec<KeyError>) -> ConfigErrors {
        ConfigErrors(
            errors
                .into_iter()
                .map(|e| ConfigError {
                    location: self.locate(&e.key),
                    message: e.message,
                    hint: e.hint,
                })
                .collect(),
        )
    }

    /// The deepest key whose value holds this byte offset.
    fn key_at(&self, offset: usize) -> Option<String> {
        self.spans
            .iter()
            .filter(|(_, (k, v))| v.contains(&offset) || k.contains(&offset))
            .max_by_key(|(path, _)| path.matches('.').count())
            .map(|(path, _)| path.clone())
    }

    /// The overrides in force, in the order given.
    pub fn overrides(&self) -> &[Override] {
        &self.overrides
    }
}

fn collect_spans(
    table: &toml::de::DeTable<'_>,
    prefix: &str,
    out: &mut BTreeMap<String, (Range<usize>, Range<usize>)>,
) {
    for (k, v) in table.iter() {
        let path = if prefix.is_empty() {
            k.get_ref().to_string()
        } else {
            format!("{prefix}.{}", k.get_ref())
        };
        out.insert(path.clone(), (k.span(), v.span()));
        if let Some(t) = v.get_ref().as_table() {
            collect_spans(t, &path, out);
        }
    }
}

/// Levenshtein distance, for did-you-mean hints.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

fn did_you_mean<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .map(|c| (distance(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min()
        .map(|(_, c)| c)
}

fn check_keys(
    table: &toml::de::DeTable<'_>,
    prefix: &str,
    schema: &[(&str, Kind)],
    source: &Source,
    errors: &mut Vec<ConfigError>,
) {
    for (k, v) in table.iter() {
        let key = k.get_ref().as_ref();
        let path = if prefix.is_empty() {
            key.to_string()
        } else {
            format!("{prefix}.{key}")
        };
        let Some((_, kind)) = schema.iter().find(|(name, _)| *name == key) else {
            let place = if prefix.is_empty() {
                "at the top level".to_string()
            } else {
                format!("in `[{prefix}]`")
            };
            let hint = match did_you_mean(key, schema.iter().map(|(n, _)| *n)) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!(
                    "known keys here: {}",
                    schema
                        .iter()
                        .map(|(n, _)| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            errors.push(ConfigError {
                message: format!("unknown key `{key}` {place}"),
                location: Some(source.at_span(k.span())),
                hint: Some(hint),
            });
            continue;
        };
        match (kind, v.get_ref().as_table()) {
            (Kind::Table(inner), Some(t)) => check_keys(t, &path, inner, source, errors),
            (Kind::Named(inner), Some(t)) => {
                for (name, group) in t.iter() {
                    let gpath = format!("{path}.{}", name.get_ref());
                    match group.get_ref().as_table() {
                        Some(g) => check_keys(g, &gpath, inner, source, errors),
                        None => errors.push(ConfigError {
                            message: format!("`{gpath}` must be a table"),
                            location: Some(source.at_span(group.span())),
                            hint: Some(format!(
                                "declare a worker group as `[{gpath}]` with `hosts = [...]`"
                            )),
                        }),
                    }
                }
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------
// Loading

/// A parsed and validated configuration with its source, for locating later
/// (topology) errors.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub source: Source,
}

/// Reads, parses and validates a configuration file.
pub fn load(path: &Path, overrides: &[Override]) -> Result<Loaded, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            message: format!("cannot read `{}`: {e}", path.display()),
            location: None,
            hint: Some(if e.kind() == std::io::ErrorKind::NotFound {
                "pass the configuration with `-c PATH`, or start from `examples/seedcore.toml`"
                    .to_string()
            } else {
                "check the file's permissions".to_string()
            }),
        }])
    })?;
    parse(&path.display().to_string(), &text, overrides)
}

/// Parses and validates configuration text (`path` is only for messages).
pub fn parse(path: &str, text: &str, overrides: &[Override]) -> Result<Loaded, ConfigErrors> {
    let mut source = Source {
        path: path.to_string(),
        text: text.to_string(),
        spans: BTreeMap::new(),
        overrides: overrides.to_vec(),
    };
    let doc = toml::de::DeTable::parse(text).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            message: format!("invalid TOML: {}", e.message().trim_end()),
            location: e.span().map(|s| source.at_span(s)),
            hint: Some("see `examples/seedcore.toml` for the file's shape".to_string()),
        }])
    })?;
    collect_spans(doc.get_ref(), "", &mut source.spans);
    let mut errors = Vec::new();
    check_keys(doc.get_ref(), "", ROOT_KEYS, &source, &mut errors);
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }

    // Types come from serde on the file alone, so that errors have spans.
    let _: RawConfig = toml::from_str(text).map_err(|e| {
        let key = e.span().and_then(|span| source.key_at(span.start));
        let serde_text = e.message().trim_end().replace('\n', " ");
        let (message, hint) = match &key {
            Some(k) => (
                format!("`{k}` has the wrong type: {serde_text}"),
                type_hint(k),
            ),
            None => (
                serde_text,
                "see `examples/seedcore.toml` for each key's type".to_string(),
            ),
        };
        ConfigErrors(vec![ConfigError {
            message,
            location: e.span().map(|s| source.at_span(s)),
            hint: Some(hint),
        }])
    })?;

    let mut table: toml::Table = toml::from_str(text).expect("parsed above");
    for o in overrides {
        apply_override(&mut table, o).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                message: e.0,
                location: Some(Location::Override(match o.source {
                    OverrideSource::Flag => format!("--set {}={}", o.key, o.value),
                    OverrideSource::Env(var) => format!("${var}={}", o.value),
                })),
                hint: Some(e.1),
            }])
        })?;
    }
    let raw: RawConfig = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| {
            ConfigErrors(vec![ConfigError {
                message: format!("the overrides do not fit the schema: {}", e.message()),
                location: None,
                hint: Some("check the `--set` values".to_string()),
            }])
        })?;
    let config = validate(raw).map_err(|errs| source.errors(errs))?;
    Ok(Loaded { config, source })
}

fn apply_override(table: &mut toml::Table, o: &Override) -> Result<(), (String, String)> {
    let parts: Vec<&str> = o.key.split('.').collect();
    let mut schema = ROOT_KEYS;
    let mut kind = None;
    for (i, part) in parts.iter().enumerate() {
        let Some((_, k)) = schema.iter().find(|(n, _)| n == part) else {
            let hint = match did_you_mean(part, schema.iter().map(|(n, _)| *n)) {
                Some(s) => format!("did you mean `{}`?", replace_at(&parts, i, s)),
                None => format!(
                    "keys here: {}",
                    schema
                        .iter()
                        .map(|(n, _)| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            return Err((format!("`--set {}`: unknown key `{part}`", o.key), hint));
        };
        match k {
            Kind::Table(inner) => schema = inner,
            Kind::Named(inner) => {
                // Skip the group name.
                if parts.len() < i + 3 {
                    return Err((
                        format!("`--set {}` does not name a key", o.key),
                        "write `workers.<group>.<key>=value`, e.g. `workers.local.count=3`"
                            .to_string(),
                    ));
                }
                schema = inner;
                let rest = &parts[i + 2..];
                let Some((_, k)) = schema.iter().find(|(n, _)| *n == rest[0]) else {
                    let hint = match did_you_mean(rest[0], schema.iter().map(|(n, _)| *n)) {
                        Some(s) => format!("did you mean `{}.{}.{s}`?", parts[i], parts[i + 1]),
                        None => "see `examples/seedcore.toml` for a group's keys".to_string(),
                    };
                    return Err((
                        format!("`--set {}`: unknown key `{}`", o.key, rest[0]),
                        hint,
                    ));
                };
                if rest.len() != 1 {
                    return Err((
                        format!("`--set {}` does not name a scalar", o.key),
                        "only single values can be overridden".to_string(),
                    ));
                }
                kind = Some(*k);
                break;
            }
            Kind::StrMap if i + 2 == parts.len() => {
                kind = Some(Kind::Str);
                break;
            }
            other => {
                if i + 1 != parts.len() {
                    return Err((
                        format!("`--set {}`: `{part}` is not a table", o.key),
                        "only single values can be overridden".to_string(),
                    ));
                }
                kind = Some(*other);
            }
        }
    }
    let value = match kind {
        Some(Kind::Int) => toml::Value::Integer(o.value.trim().parse().map_err(|_| {
            (
                format!("`--set {}`: `{}` is not an integer", o.key, o.value),
                format!("write a number, e.g. `--set {}=2`", o.key),
            )
        })?),
        Some(Kind::Bool) => toml::Value::Boolean(match o.value.trim() {
            "true" => true,
            "false" => false,
            _ => {
                return Err((
                    format!("`--set {}`: `{}` is not true or false", o.key, o.value),
                    format!("write `--set {}=true` or `--set {}=false`", o.key, o.key),
                ))
            }
        }),
        Some(Kind::Str) => toml::Value::String(o.value.clone()),
        Some(Kind::StrList) if o.value.trim_start().starts_with('[') => {
            // TOML's own list syntax: `["10.0.0.7", "10.0.0.8"]`.
            let parsed: std::result::Result<toml::Table, _> =
                toml::from_str(&format!("v = {}", o.value.trim()));
            match parsed.ok().and_then(|mut t| t.remove("v")) {
                Some(v @ toml::Value::Array(_)) => v,
                _ => {
                    return Err((
                        format!("`--set {}`: `{}` is not a list of strings", o.key, o.value),
                        format!(
                            "write `--set {}=10.0.0.7,10.0.0.8` or `--set '{}=[\"10.0.0.7\", \"10.0.0.8\"]'`",
                            o.key, o.key
                        ),
                    ))
                }
            }
        }
        Some(Kind::StrList) => toml::Value::Array(
            o.value
                .split(',')
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_string()))
                .collect(),
        ),
        _ => {
            return Err((
                format!("`--set {}` does not name a single value", o.key),
                "override a key such as `head.host` or `workers.local.count`".to_string(),
            ))
        }
    };
    let mut cursor = table;
    for part in &parts[..parts.len() - 1] {
        let entry = cursor
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cursor = entry.as_table_mut().ok_or_else(|| {
            (
                format!("`--set {}`: `{part}` is not a table in the file", o.key),
                "fix the file first".to_string(),
            )
        })?;
    }
    cursor.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

fn replace_at(parts: &[&str], i: usize, with: &str) -> String {
    let mut v: Vec<&str> = parts.to_vec();
    v[i] = with;
    v.join(".")
}

/// The kind of value a dotted key takes, from the schema.
fn kind_of(key: &str) -> Option<Kind> {
    let parts: Vec<&str> = key.split('.').collect();
    let mut schema = ROOT_KEYS;
    let mut i = 0;
    while i < parts.len() {
        let (_, k) = schema.iter().find(|(n, _)| *n == parts[i])?;
        match k {
            Kind::Table(inner) => schema = inner,
            Kind::Named(inner) => {
                if i + 1 == parts.len() {
                    return Some(*k);
                }
                schema = inner;
                i += 1;
            }
            other => return Some(*other),
        }
        i += 1;
    }
    Some(Kind::Table(schema))
}

fn type_hint(key: &str) -> String {
    let name = key.rsplit('.').next().unwrap_or(key);
    match kind_of(key) {
        Some(Kind::Int) => format!("`{name}` takes a whole number, e.g. `{name} = 2`"),
        Some(Kind::Bool) => format!("`{name}` takes `true` or `false`"),
        Some(Kind::Str) => format!("`{name}` takes a quoted string, e.g. `{name} = \"...\"`"),
        Some(Kind::StrList) => {
            format!("`{name}` takes a list of strings, e.g. `{name} = [\"10.0.0.7\"]`")
        }
        Some(Kind::StrMap) => format!("`[{key}]` holds `NAME = \"value\"` lines"),
        Some(Kind::Table(_)) | Some(Kind::Named(_)) => {
            format!("`{key}` is a table: write it as `[{key}]` with its keys below")
        }
        None => "see `examples/seedcore.toml` for each key's type".to_string(),
    }
}

// ---------------------------------------------------------------------------
// Validation

struct Checker {
    errors: Vec<KeyError>,
}

impl Checker {
    fn err(&mut self, key: &str, message: String, hint: impl Into<String>) {
        self.errors.push(KeyError {
            key: key.to_string(),
            message,
            hint: Some(hint.into()),
        });
    }

    fn port(&mut self, key: &str, value: Option<i64>, default: u16) -> u16 {
        match value {
            None => default,
            Some(v) if (1..=65535).contains(&v) => v as u16,
            Some(v) => {
                self.err(
                    key,
                    format!("`{key}` is {v}, which is not a port number"),
                    format!("ports are between 1 and 65535; the default is {default}"),
                );
                default
            }
        }
    }

    fn positive(&mut self, key: &str, value: Option<i64>, default: u32, what: &str) -> u32 {
        match value {
            None => default,
            Some(v) if key.ends_with(".cpus") && v > 1024 => {
                self.err(
                    key,
                    format!("`{key}` is {v}; seedcore allows at most 1024 CPUs per node"),
                    format!("set `{key}` to {what}"),
                );
                default
            }
            Some(v) if v >= 1 && v <= i64::from(u32::MAX) => v as u32,
            Some(v) => {
                self.err(
                    key,
                    format!("`{key}` is {v}; it must be at least 1"),
                    format!("set `{key}` to {what}"),
                );
                default
            }
        }
    }

    fn range(&mut self, key: &str, value: Option<&str>, default: &str) -> PortRange {
        let text = value.unwrap_or(default);
        match parse_range(text) {
            Ok(r) => r,
            Err(why) => {
                self.err(
                    key,
                    format!("`{key}` is `{text}`: {why}"),
                    format!("write an inclusive range such as `\"{default}\"`"),
                );
                parse_range(default).expect("defaults are valid")
            }
        }
    }

    fn host(&mut self, key: &str, text: &str) -> HostName {
        if let Err(why) = check_host(text) {
            self.err(
                key,
                format!("`{text}` is not a valid host: {why}"),
                "write an IP address (`10.0.0.5`), a host name (`node-1.example`), or `local` for this machine",
            );
        }
        HostName(text.to_string())
    }

    fn shm(&mut self, key: &str, value: Option<&str>, default: &str) -> u64 {
        let text = value.unwrap_or(default);
        match parse_size(text) {
            Some(n) if n >= 1024 * 1024 => n,
            _ => {
                self.err(
                    key,
                    format!("`{key}` is `{text}`, which is not a size of at least 1m"),
                    "write a size such as `\"512m\"` or `\"2g\"`",
                );
                parse_size(default).expect("defaults are valid")
            }
        }
    }

    fn image(&mut self, key: &str, value: Option<String>) -> Option<String> {
        match value {
            Some(v) if v.trim().is_empty() || v.chars().any(char::is_whitespace) => {
                self.err(
                    key,
                    if v.trim().is_empty() {
                        format!("`{key}` is empty")
                    } else {
                        format!("`{key}` is `{v}`, which is not an image reference")
                    },
                    "write an image such as `\"rayproject/ray:2.60.0\"`",
                );
                None
            }
            other => other,
        }
    }

    fn secs(&mut self, key: &str, value: Option<i64>, default: u64) -> u64 {
        match value {
            None => default,
            Some(v) if v >= 1 => v as u64,
            Some(v) => {
                self.err(
                    key,
                    format!("`{key}` is {v}; a timeout is a number of seconds of at least 1"),
                    format!(
                        "set it to a number of seconds, e.g. `{} = {default}` (the default)",
                        key.rsplit('.').next().unwrap_or(key)
                    ),
                );
                default
            }
        }
    }
}

/// Parses `"11000-11020"`.
pub fn parse_range(text: &str) -> Result<PortRange, String> {
    let (a, b) = text
        .split_once('-')
        .ok_or_else(|| "expected FIRST-LAST".to_string())?;
    let parse = |s: &str| -> Result<u16, String> {
        let v: i64 = s
            .trim()
            .parse()
            .map_err(|_| format!("`{}` is not a number", s.trim()))?;
        if (1..=65535).contains(&v) {
            Ok(v as u16)
        } else {
            Err(format!("{v} is not a port number (1-65535)"))
        }
    };
    let (first, last) = (parse(a)?, parse(b)?);
    if first > last {
        return Err(format!("the range is reversed ({first} > {last})"));
    }
    Ok(PortRange { first, last })
}

/// Parses a Docker-style size: `2g`, `512m`, `64k` or bytes.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last()? {
        'k' => (&t[..t.len() - 1], 1024u64),
        'm' => (&t[..t.len() - 1], 1024 * 1024),
        'g' => (&t[..t.len() - 1], 1024 * 1024 * 1024),
        _ => (t, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

/// A host is an IPv4/IPv6 address, a DNS name, or `local`.
pub fn check_host(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err("it is empty".to_string());
    }
    match text.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(_)) => {
            return Err(
                "IPv6 addresses are not supported yet (Ray's addresses here are `host:port`)"
                    .to_string(),
            )
        }
        Ok(_) => return Ok(()),
        Err(_) if text == "local" => return Ok(()),
        Err(_) => {}
    }
    if let Some((h, p)) = text.rsplit_once(':') {
        if !h.contains(':') && p.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!(
                "it has a port (`:{p}`); the SSH port belongs in `[ssh] port`"
            ));
        }
    }
    if text.contains("://") {
        return Err("it looks like a URL".to_string());
    }
    if text.len() > 253 {
        return Err("it is longer than 253 characters".to_string());
    }
    let all_digits_and_dots = text.chars().all(|c| c.is_ascii_digit() || c == '.');
    if all_digits_and_dots {
        return Err("it is not a valid IPv4 address".to_string());
    }
    for label in text.split('.') {
        if label.is_empty()
            || label.len() > 63
            || label.starts_with('-')
            || label.ends_with('-')
            || !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(format!("`{label}` is not a valid DNS label"));
        }
    }
    Ok(())
}

fn check_name(c: &mut Checker, key: &str, name: &str, what: &str) {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name
            .chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-' || ch == '_')
        && name
            .chars()
            .next()
            .is_some_and(|ch| ch.is_ascii_alphanumeric());
    if !ok {
        c.err(
            key,
            format!("{what} `{name}` cannot be part of a container name"),
            "use lower-case letters, digits, `-` and `_`, starting with a letter or digit (at most 40)",
        );
    }
}

fn validate(raw: RawConfig) -> Result<Config, Vec<KeyError>> {
    let mut c = Checker { errors: Vec::new() };

    let name = raw
        .cluster
        .name
        .unwrap_or_else(|| defaults::CLUSTER_NAME.to_string());
    check_name(&mut c, "cluster.name", &name, "cluster name");
    let image = c
        .image("cluster.image", raw.cluster.image)
        .unwrap_or_else(|| defaults::IMAGE.to_string());
    let agent_ports = c.range(
        "cluster.agent_ports",
        raw.cluster.agent_ports.as_deref(),
        defaults::AGENT_PORTS,
    );
    for k in raw.cluster.env.keys() {
        if k.is_empty() || k.contains('=') || k.chars().any(char::is_whitespace) {
            c.err(
                &format!("cluster.env.{k}"),
                format!("`{k}` is not an environment variable name"),
                "use letters, digits and `_`",
            );
        }
    }
    let id = raw.cluster.id.filter(|id| {
        let ok = !id.is_empty()
            && id.len() <= 64
            && id
                .chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-');
        if !ok {
            c.err(
                "cluster.id",
                format!("`cluster.id` is `{}`, which is not a cluster identity", crate::model::excerpt(id, 80)),
                "use the id a plan names (lower-case letters, digits and `-`, at most 64), or remove the key",
            );
        }
        ok
    });
    let cluster = ClusterConfig {
        name,
        id,
        image,
        agent_ports,
        usage_stats: raw.cluster.usage_stats.unwrap_or(false),
        oversubscribe_cpus: raw.cluster.oversubscribe_cpus.unwrap_or(false),
        env: raw.cluster.env,
    };

    let known_hosts = match raw.ssh.known_hosts.as_deref() {
        None | Some("strict") => KnownHostsPolicy::Strict,
        Some("accept-new") => KnownHostsPolicy::AcceptNew,
        Some(other) => {
            c.err(
                "ssh.known_hosts",
                format!("`ssh.known_hosts` is `{other}`; it must be `strict` or `accept-new`"),
                if matches!(other, "off" | "no" | "false" | "ignore" | "none") {
                    "host-key checking cannot be turned off; use `accept-new` to trust a host's key on first contact, or add the key with `ssh-keyscan -H HOST >> ~/.ssh/known_hosts`"
                } else {
                    "use `strict` (the default) or `accept-new`"
                },
            );
            KnownHostsPolicy::Strict
        }
    };
    let max_parallel = c.positive(
        "ssh.max_parallel",
        raw.ssh.max_parallel,
        defaults::MAX_PARALLEL as u32,
        "how many hosts seedcore may work on at once, e.g. 32",
    ) as usize;
    let ssh = SshConfig {
        user: raw.ssh.user.filter(|u| !u.is_empty()),
        port: raw
            .ssh
            .port
            .map(|p| c.port("ssh.port", Some(p), defaults::SSH_PORT)),
        identity_file: raw.ssh.identity_file.map(|p| expand_home(&p)),
        known_hosts,
        known_hosts_file: raw.ssh.known_hosts_file.map(|p| expand_home(&p)),
        max_parallel,
        connect_timeout_secs: c.secs(
            "ssh.connect_timeout",
            raw.ssh.connect_timeout,
            defaults::CONNECT_TIMEOUT_SECS,
        ),
    };

    let raw_head = match raw.head {
        Some(h) => Some(h),
        None => {
            c.err(
                "head",
                "there is no `[head]` table".to_string(),
                "add `[head]` with `host = \"ADDRESS\"`: the host that runs the Ray head",
            );
            None
        }
    };
    let head_known = raw_head.as_ref().is_some_and(|h| h.host.is_some());
    let raw_head = raw_head.unwrap_or_default();
    let head_host = match raw_head.host.as_deref() {
        Some(h) => c.host("head.host", h),
        None => {
            if c.errors.iter().all(|e| e.key != "head") {
                c.err(
                    "head.host",
                    "`head.host` is missing".to_string(),
                    "set `host = \"ADDRESS\"` in `[head]`: workers join the head at this address",
                );
            }
            HostName("local".to_string())
        }
    };
    let head = HeadConfig {
        host: head_host,
        image: c.image("head.image", raw_head.image),
        cpus: c.positive(
            "head.cpus",
            raw_head.cpus,
            1,
            "the number of CPUs Ray may use on the head, e.g. `cpus = 2`",
        ),
        gcs_port: c.port("head.gcs_port", raw_head.gcs_port, defaults::GCS_PORT),
        client_server_port: c.port(
            "head.client_server_port",
            raw_head.client_server_port,
            defaults::CLIENT_SERVER_PORT,
        ),
        dashboard_port: c.port(
            "head.dashboard_port",
            raw_head.dashboard_port,
            defaults::DASHBOARD_PORT,
        ),
        serve: raw_head.serve.unwrap_or(true),
        serve_port: c.port("head.serve_port", raw_head.serve_port, defaults::SERVE_PORT),
        shm_size_bytes: c.shm(
            "head.shm_size",
            raw_head.shm_size.as_deref(),
            defaults::SHM_SIZE,
        ),
        object_manager_port: c.port(
            "head.object_manager_port",
            raw_head.object_manager_port,
            defaults::OBJECT_MANAGER_PORT,
        ),
        node_manager_port: c.port(
            "head.node_manager_port",
            raw_head.node_manager_port,
            defaults::NODE_MANAGER_PORT,
        ),
        worker_ports: c.range(
            "head.worker_ports",
            raw_head.worker_ports.as_deref(),
            defaults::HEAD_WORKER_PORTS,
        ),
    };

    let mut workers = BTreeMap::new();
    for (gname, g) in raw.workers {
        let p = format!("workers.{gname}");
        check_name(&mut c, &p, &gname, "worker group name");
        let hosts_key = format!("{p}.hosts");
        let hosts: Vec<HostName> = match g.hosts {
            None => {
                c.err(
                    &hosts_key,
                    format!("`[{p}]` has no `hosts`"),
                    format!("list where this group runs, e.g. `hosts = [\"10.0.0.7\"]` in `[{p}]`"),
                );
                Vec::new()
            }
            Some(list) => {
                let mut seen: Vec<String> = Vec::new();
                let mut hosts = Vec::new();
                for h in list {
                    if seen.contains(&h) {
                        c.err(
                            &hosts_key,
                            format!("`{h}` is listed twice in `{hosts_key}`"),
                            format!(
                                "list each host once; to run more workers on it, raise `{p}.count`"
                            ),
                        );
                        continue;
                    }
                    seen.push(h.clone());
                    hosts.push(c.host(&hosts_key, &h));
                }
                if hosts.is_empty() && seen.is_empty() {
                    c.err(
                        &hosts_key,
                        format!("`{hosts_key}` is empty"),
                        format!("list at least one host, or remove `[{p}]`"),
                    );
                }
                hosts
            }
        };
        let count = match g.count {
            None => 1,
            Some(v) if (0..=256).contains(&v) => v as u32,
            Some(v) => {
                c.err(
                    &format!("{p}.count"),
                    format!("`{p}.count` is {v}; it must be between 0 and 256"),
                    "count is the number of workers on each of the group's hosts",
                );
                1
            }
        };
        let group = WorkerGroup {
            hosts,
            count,
            cpus: c.positive(
                &format!("{p}.cpus"),
                g.cpus,
                1,
                "the number of CPUs Ray may use on each worker, e.g. `cpus = 1`",
            ),
            image: c.image(&format!("{p}.image"), g.image),
            shm_size_bytes: c.shm(
                &format!("{p}.shm_size"),
                g.shm_size.as_deref(),
                defaults::SHM_SIZE,
            ),
            object_manager_port: g.object_manager_port.map(|v| {
                c.port(
                    &format!("{p}.object_manager_port"),
                    Some(v),
                    defaults::OBJECT_MANAGER_PORT,
                )
            }),
            node_manager_port: g.node_manager_port.map(|v| {
                c.port(
                    &format!("{p}.node_manager_port"),
                    Some(v),
                    defaults::NODE_MANAGER_PORT,
                )
            }),
            worker_ports: g.worker_ports.as_deref().map(|v| {
                c.range(
                    &format!("{p}.worker_ports"),
                    Some(v),
                    defaults::WORKER_PORTS,
                )
            }),
            worker_ports_per_node: g.worker_ports_per_node.map(|v| {
                let v = if v > 65535 {
                    c.err(
                        &format!("{p}.worker_ports_per_node"),
                        format!("`{p}.worker_ports_per_node` is {v}, more ports than exist"),
                        "each node needs a few ports per CPU, e.g. `worker_ports_per_node = 8`",
                    );
                    4
                } else {
                    v
                };
                c.positive(
                    &format!("{p}.worker_ports_per_node"),
                    Some(v),
                    4,
                    "the number of worker ports each node gets, e.g. 8",
                )
            }),
        };
        if head_known && head.host.is_local() && group.hosts.iter().any(|h| !h.is_local()) {
            c.err(
                &hosts_key,
                format!(
                    "`[{p}]` runs on other hosts, but the head is `local`, which they cannot reach"
                ),
                "write the head's address in `head.host` so remote workers can join it",
            );
        }
        workers.insert(gname, group);
    }

    let timeouts = Timeouts {
        head_ready_secs: c.secs(
            "timeouts.head_ready",
            raw.timeouts.head_ready,
            defaults::HEAD_READY_SECS,
        ),
        nodes_alive_secs: c.secs(
            "timeouts.nodes_alive",
            raw.timeouts.nodes_alive,
            defaults::NODES_ALIVE_SECS,
        ),
        drain_secs: c.secs("timeouts.drain", raw.timeouts.drain, defaults::DRAIN_SECS),
        stop_secs: c.secs("timeouts.stop", raw.timeouts.stop, defaults::STOP_SECS),
    };

    if c.errors.is_empty() {
        Ok(Config {
            cluster,
            ssh,
            head,
            workers,
            timeouts,
        })
    } else {
        Err(c.errors)
    }
}

fn expand_home(p: &str) -> PathBuf {
    match (p.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_reject() {
        assert_eq!(
            parse_range("11000-11020").unwrap(),
            PortRange {
                first: 11000,
                last: 11020
            }
        );
        assert!(parse_range("11020-11000").unwrap_err().contains("reversed"));
        assert!(parse_range("11000").is_err());
        assert!(parse_range("0-5").is_err());
        assert!(parse_range("1-70000").is_err());
    }

    #[test]
    fn hosts_are_checked() {
        for ok in ["10.0.0.1", "node-1.example", "local", "labhost1"] {
            assert!(check_host(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "10.0.0.1:22",
            "ssh://x",
            "300.1.1.1",
            "a b",
            "-x",
            "::1",
        ] {
            assert!(check_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("2g"), Some(2 << 30));
        assert_eq!(parse_size("512m"), Some(512 << 20));
        assert_eq!(parse_size("512MB"), Some(512 << 20));
        assert_eq!(parse_size("x"), None);
    }

    #[test]
    fn did_you_mean_finds_near_keys() {
        assert_eq!(
            did_you_mean("hots", ["hosts", "count"].into_iter()),
            Some("hosts")
        );
        assert_eq!(did_you_mean("zzzzzz", ["hosts", "count"].into_iter()), None);
    }

    #[test]
    fn overrides_are_typed_by_the_schema() {
        let text = "[head]\nhost = \"10.0.0.1\"\n[workers.local]\nhosts = [\"10.0.0.1\"]\n";
        let o = vec![
            Override::parse_flag("workers.local.count=5").unwrap(),
            Override::parse_flag("head.host=10.0.0.9").unwrap(),
        ];
        let loaded = parse("t.toml", text, &o).unwrap();
        assert_eq!(loaded.config.workers["local"].count, 5);
        assert_eq!(loaded.config.head.host.0, "10.0.0.9");
        let lists = [
            "workers.local.hosts=10.0.0.1,10.0.0.2",
            "workers.local.hosts=[\"10.0.0.1\", \"10.0.0.2\"]",
        ];
        for l in lists {
            let loaded = parse("t.toml", text, &[Override::parse_flag(l).unwrap()]).unwrap();
            assert_eq!(loaded.config.workers["local"].hosts.len(), 2, "{l}");
        }
        let bad = parse(
            "t.toml",
            text,
            &[Override::parse_flag("workers.local.count=lots").unwrap()],
        )
        .unwrap_err();
        assert!(bad.to_string().contains("not an integer"), "{bad}");
    }

    #[test]
    fn head_ip_override_env_is_honoured() {
        let o = env_overrides(|k| (k == "HEAD_IP_OVERRIDE").then(|| "10.1.1.1".to_string()));
        assert_eq!(o[0].key, "head.host");
        assert!(env_overrides(|_| None).is_empty());
    }
}
