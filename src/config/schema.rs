//! The file's schema as serde reads it (`Raw*`: every key optional, wide integers
//! so out-of-range values get our own message), and the table of keys with their
//! kinds, for unknown-key checks and `--set` typing.

use super::*;
use serde::Deserialize;

// ---------------------------------------------------------------------------
// Raw schema (serde)

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub(crate) cluster: RawCluster,
    #[serde(default)]
    pub(crate) ssh: RawSsh,
    pub(crate) head: Option<RawHead>,
    #[serde(default)]
    pub(crate) workers: BTreeMap<String, RawGroup>,
    #[serde(default)]
    pub(crate) timeouts: RawTimeouts,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCluster {
    pub(crate) name: Option<String>,
    pub(crate) id: Option<String>,
    pub(crate) image: Option<String>,
    pub(crate) agent_ports: Option<String>,
    pub(crate) usage_stats: Option<bool>,
    pub(crate) oversubscribe_cpus: Option<bool>,
    pub(crate) image_source: Option<String>,
    pub(crate) build: Option<RawBuild>,
    pub(crate) auth: Option<String>,
    pub(crate) token_file: Option<String>,
    pub(crate) token_env: Option<String>,
    #[serde(default)]
    pub(crate) env: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBuild {
    pub(crate) context: Option<String>,
    pub(crate) dockerfile: Option<String>,
    #[serde(default)]
    pub(crate) args: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSsh {
    pub(crate) user: Option<String>,
    pub(crate) port: Option<i64>,
    pub(crate) identity_file: Option<String>,
    pub(crate) known_hosts: Option<String>,
    pub(crate) known_hosts_file: Option<String>,
    pub(crate) max_parallel: Option<i64>,
    pub(crate) connect_timeout: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHead {
    pub(crate) host: Option<String>,
    pub(crate) image: Option<String>,
    pub(crate) cpus: Option<i64>,
    pub(crate) gcs_port: Option<i64>,
    pub(crate) client_server_port: Option<i64>,
    pub(crate) dashboard_port: Option<i64>,
    pub(crate) serve: Option<bool>,
    pub(crate) serve_port: Option<i64>,
    pub(crate) public: Option<bool>,
    pub(crate) shm_size: Option<String>,
    pub(crate) object_manager_port: Option<i64>,
    pub(crate) node_manager_port: Option<i64>,
    pub(crate) worker_ports: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGroup {
    pub(crate) hosts: Option<Vec<String>>,
    pub(crate) count: Option<i64>,
    pub(crate) cpus: Option<i64>,
    pub(crate) image: Option<String>,
    pub(crate) shm_size: Option<String>,
    pub(crate) object_manager_port: Option<i64>,
    pub(crate) node_manager_port: Option<i64>,
    pub(crate) worker_ports: Option<String>,
    pub(crate) worker_ports_per_node: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTimeouts {
    pub(crate) head_ready: Option<i64>,
    pub(crate) nodes_alive: Option<i64>,
    pub(crate) drain: Option<i64>,
    pub(crate) stop: Option<i64>,
}

/// The kind of value a key holds, for unknown-key checks and `--set` typing.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
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

pub(crate) const CLUSTER_KEYS: &[(&str, Kind)] = &[
    ("name", Kind::Str),
    ("id", Kind::Str),
    ("image", Kind::Str),
    ("agent_ports", Kind::Str),
    ("usage_stats", Kind::Bool),
    ("oversubscribe_cpus", Kind::Bool),
    ("image_source", Kind::Str),
    ("build", Kind::Table(BUILD_KEYS)),
    ("auth", Kind::Str),
    ("token_file", Kind::Str),
    ("token_env", Kind::Str),
    ("env", Kind::StrMap),
];
pub(crate) const BUILD_KEYS: &[(&str, Kind)] = &[
    ("context", Kind::Str),
    ("dockerfile", Kind::Str),
    ("args", Kind::StrMap),
];
pub(crate) const SSH_KEYS: &[(&str, Kind)] = &[
    ("user", Kind::Str),
    ("port", Kind::Int),
    ("identity_file", Kind::Str),
    ("known_hosts", Kind::Str),
    ("known_hosts_file", Kind::Str),
    ("max_parallel", Kind::Int),
    ("connect_timeout", Kind::Int),
];
pub(crate) const HEAD_KEYS: &[(&str, Kind)] = &[
    ("host", Kind::Str),
    ("image", Kind::Str),
    ("cpus", Kind::Int),
    ("gcs_port", Kind::Int),
    ("client_server_port", Kind::Int),
    ("dashboard_port", Kind::Int),
    ("serve", Kind::Bool),
    ("serve_port", Kind::Int),
    ("public", Kind::Bool),
    ("shm_size", Kind::Str),
    ("object_manager_port", Kind::Int),
    ("node_manager_port", Kind::Int),
    ("worker_ports", Kind::Str),
];
pub(crate) const GROUP_KEYS: &[(&str, Kind)] = &[
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
pub(crate) const TIMEOUT_KEYS: &[(&str, Kind)] = &[
    ("head_ready", Kind::Int),
    ("nodes_alive", Kind::Int),
    ("drain", Kind::Int),
    ("stop", Kind::Int),
];
pub(crate) const ROOT_KEYS: &[(&str, Kind)] = &[
    ("cluster", Kind::Table(CLUSTER_KEYS)),
    ("ssh", Kind::Table(SSH_KEYS)),
    ("head", Kind::Table(HEAD_KEYS)),
    ("workers", Kind::Named(GROUP_KEYS)),
    ("timeouts", Kind::Table(TIMEOUT_KEYS)),
];
