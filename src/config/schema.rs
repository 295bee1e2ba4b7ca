//! The file's schema as serde reads it (`Raw*`: every key optional, wide integers
//! so out-of-range values get our own message), and the table of keys with their
//! kinds, for unknown-key checks and `--set` typing.

use super::*;
use serde::Deserialize;

// ---------------------------------------------------------------------------
// Raw schema (serde)

/// `seedcore.toml`: a Ray cluster of Docker containers across hosts (see the README's "The configuration").
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    /// The cluster as a whole: its name and identity, image, ports for agents, token authentication, environment.
    #[serde(default)]
    pub(crate) cluster: RawCluster,
    /// How seedcore reaches every host (the system `ssh`, so `~/.ssh/config` applies).
    #[serde(default)]
    pub(crate) ssh: RawSsh,
    /// The head node (required): its host and its ports.
    pub(crate) head: Option<RawHead>,
    /// Worker groups by name (`[workers.NAME]`); the name is part of container names.
    #[serde(default)]
    pub(crate) workers: BTreeMap<String, RawGroup>,
    /// How long apply waits, in seconds.
    #[serde(default)]
    pub(crate) timeouts: RawTimeouts,
    /// How replacements of running workers roll out (`max_unavailable`).
    #[serde(default)]
    pub(crate) rollout: RawRollout,
    /// Environments (`[env.NAME]`, selected with `--env NAME` or `SEEDCORE_ENV`): each a cluster of its own, its tables deep-merged over the rest of the file (tables key by key; values, lists and inline tables replace). Without its own `cluster.name`, an environment's cluster is named `BASE-NAME`. Names: lower-case letters, digits and `-`, at most 32.
    // Read for its types and its schema; the selected overlay is merged as
    // a table (`environments::select`) before the file is read as this.
    #[serde(default)]
    #[schemars(extend("propertyNames" = { "pattern": "^[a-z0-9-]{1,32}$" }))]
    #[allow(dead_code)]
    pub(crate) env: BTreeMap<String, RawOverlay>,
}

/// One environment's overlay (`[env.NAME]`): any of the file's own tables, merged over the base.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // types and schema only: see `RawConfig::env`
pub(crate) struct RawOverlay {
    /// Over `[cluster]`; without `name`, the environment's cluster is named `BASE-NAME`.
    pub(crate) cluster: Option<RawCluster>,
    /// Over `[ssh]`.
    pub(crate) ssh: Option<RawSsh>,
    /// Over `[head]`.
    pub(crate) head: Option<RawHead>,
    /// Over `[workers]`: a group's keys merge into the base's group of that name, or declare a new group.
    #[serde(default)]
    pub(crate) workers: BTreeMap<String, RawGroup>,
    /// Over `[timeouts]`.
    pub(crate) timeouts: Option<RawTimeouts>,
    /// Over `[rollout]`.
    pub(crate) rollout: Option<RawRollout>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCluster {
    /// Container-name prefix and `io.seedcore.cluster` label (default `seedcore`).
    pub(crate) name: Option<String>,
    /// Pins the cluster's identity: lower-case letters, digits and `-`, at most 64 (default: derived).
    pub(crate) id: Option<String>,
    /// Image of every node unless a node overrides it (default `rayproject/ray:2.60.0`).
    pub(crate) image: Option<String>,
    /// Per host, every node takes a block of 4 agent/metrics ports from this range (default `52365-52464`).
    pub(crate) agent_ports: Option<String>,
    /// Ray's usage reporting (default `false`).
    pub(crate) usage_stats: Option<bool>,
    /// Allow more declared CPUs on a host than it has (default `false`).
    pub(crate) oversubscribe_cpus: Option<bool>,
    /// Where hosts get images: `pull` (each engine pulls from a registry) or `push` (seedcore moves the image from this machine's Docker). Default `pull` (`push` with `build`).
    #[schemars(extend("enum" = ["pull", "push"]))]
    pub(crate) image_source: Option<String>,
    /// Build the image on this machine: `{ context = "PATH", dockerfile = "Dockerfile", args = { K = "V" } }`.
    pub(crate) build: Option<RawBuild>,
    /// Ray token authentication: `token` (on, the default) or `none` (off; the plan warns).
    #[schemars(extend("enum" = ["token", "none"]))]
    pub(crate) auth: Option<String>,
    /// The Ray token from a file of the machine seedcore runs on (default: generated on the first apply).
    pub(crate) token_file: Option<String>,
    /// The Ray token from an environment variable of the machine seedcore runs on.
    pub(crate) token_env: Option<String>,
    /// Extra environment for every node: `KEY = "value"`, or a secret: `{ value = "...", secret = true }`, `{ env = "NAME" }`, `{ file = "PATH" }`.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, super::json_schema::EnvValue>")]
    pub(crate) env: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBuild {
    /// The build context, relative to the configuration file.
    pub(crate) context: Option<String>,
    /// The Dockerfile inside the context (default `Dockerfile`).
    pub(crate) dockerfile: Option<String>,
    /// Build arguments.
    #[serde(default)]
    pub(crate) args: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSsh {
    /// Login user (default: ssh's).
    pub(crate) user: Option<String>,
    /// SSH port (default: `~/.ssh/config`, else 22).
    pub(crate) port: Option<i64>,
    /// Private key (default: ssh's).
    pub(crate) identity_file: Option<String>,
    /// Host-key checking: `strict` (default) or `accept-new`; it cannot be turned off.
    #[schemars(extend("enum" = ["strict", "accept-new"]))]
    pub(crate) known_hosts: Option<String>,
    /// Default `~/.ssh/known_hosts`.
    pub(crate) known_hosts_file: Option<String>,
    /// Hosts and steps worked on at once (default 32).
    pub(crate) max_parallel: Option<i64>,
    /// Seconds (default 10).
    pub(crate) connect_timeout: Option<i64>,
    /// Seconds an idle SSH connection is kept open for the next seedcore command on this machine (ssh's ControlPersist); 0 (default): closed when seedcore exits.
    pub(crate) persist: Option<i64>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHead {
    /// The head's host (required): an address or a name every host resolves; workers join it at `host:gcs_port`.
    pub(crate) host: Option<String>,
    /// Default: `cluster.image`.
    pub(crate) image: Option<String>,
    /// Overrides `cluster.image_source` for the head: `pull` or `push`.
    #[schemars(extend("enum" = ["pull", "push"]))]
    pub(crate) image_source: Option<String>,
    /// Ray's `--num-cpus` and the container's CPU limit (default 1).
    pub(crate) cpus: Option<i64>,
    /// Workers join here (default 6380).
    pub(crate) gcs_port: Option<i64>,
    /// `ray://head:10001` for client-mode scripts (default 10001).
    pub(crate) client_server_port: Option<i64>,
    /// Default 8265.
    pub(crate) dashboard_port: Option<i64>,
    /// Ray Serve's HTTP proxy (default `true`).
    pub(crate) serve: Option<bool>,
    /// Ray Serve's HTTP port (default 8000).
    pub(crate) serve_port: Option<i64>,
    /// The dashboard and the Ray client are meant to be reachable from beyond the cluster (silences the plan's warning; default `false`).
    pub(crate) public: Option<bool>,
    /// `/dev/shm` for the object store, e.g. `2g` (the default).
    pub(crate) shm_size: Option<String>,
    /// Default 8076.
    pub(crate) object_manager_port: Option<i64>,
    /// Default 8077.
    pub(crate) node_manager_port: Option<i64>,
    /// The head's own worker processes (default `10002-10099`).
    pub(crate) worker_ports: Option<String>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGroup {
    /// Where the group runs (required).
    pub(crate) hosts: Option<Vec<String>>,
    /// Workers per host (default 1).
    pub(crate) count: Option<i64>,
    /// CPUs per worker (default 1).
    pub(crate) cpus: Option<i64>,
    /// Default: `cluster.image`.
    pub(crate) image: Option<String>,
    /// Overrides `cluster.image_source` for this group: `pull` or `push`.
    #[schemars(extend("enum" = ["pull", "push"]))]
    pub(crate) image_source: Option<String>,
    /// `/dev/shm` per worker (default `2g`).
    pub(crate) shm_size: Option<String>,
    /// Exactly the port of the group's first node on each host; further nodes +2, +4... (default: chosen).
    pub(crate) object_manager_port: Option<i64>,
    /// Exactly the port of the group's first node on each host; further nodes +2, +4... (default: chosen).
    pub(crate) node_manager_port: Option<i64>,
    /// A range split between the group's nodes on a host, e.g. `11000-11020` (default: chosen).
    pub(crate) worker_ports: Option<String>,
    /// A fixed slice per node, so scaling never moves ports (default: an even split; max(21, 2 x cpus) if `worker_ports` is unset).
    pub(crate) worker_ports_per_node: Option<i64>,
    /// GPUs per worker: a count, `"all"`, or device IDs such as `["0", "1"]` (a Docker device request and Ray's `--num-gpus`).
    #[schemars(with = "serde_json::Value")]
    pub(crate) gpus: Option<toml::Value>,
    /// Ray custom resources per worker, e.g. `{ accelerator_x = 1, ssd = 0.5 }` (Ray's `--resources`).
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, f64>")]
    pub(crate) resources: BTreeMap<String, toml::Value>,
    /// Ray node labels, e.g. `{ zone = "rack-2" }` (Ray's `--labels`; Kubernetes label syntax).
    #[serde(default)]
    pub(crate) labels: BTreeMap<String, String>,
    /// Memory limit of each worker's container and Ray's `--memory`, e.g. `"8g"` (default: none).
    pub(crate) memory: Option<String>,
    /// Ray's object store per worker, e.g. `"1g"`; at most `shm_size` (default: Ray's, 30% of memory capped by `/dev/shm`).
    pub(crate) object_store_memory: Option<String>,
}

/// How replacements of running workers roll out.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRollout {
    /// Workers of a group replaced at once: a count (`1`) or a percentage of the group (`"25%"`); default 1.
    #[schemars(with = "serde_json::Value")]
    pub(crate) max_unavailable: Option<toml::Value>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTimeouts {
    /// Seconds until the head's GCS (and Serve) answer (default 120).
    pub(crate) head_ready: Option<i64>,
    /// Seconds until Ray lists every node ALIVE (default 180).
    pub(crate) nodes_alive: Option<i64>,
    /// Seconds for `ray drain-node` before a worker is removed (default 60).
    pub(crate) drain: Option<i64>,
    /// `docker stop` grace period in seconds (default 10).
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
    ("persist", Kind::Int),
];
pub(crate) const HEAD_KEYS: &[(&str, Kind)] = &[
    ("host", Kind::Str),
    ("image", Kind::Str),
    ("image_source", Kind::Str),
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
    ("image_source", Kind::Str),
    ("shm_size", Kind::Str),
    ("object_manager_port", Kind::Int),
    ("node_manager_port", Kind::Int),
    ("worker_ports", Kind::Str),
    ("worker_ports_per_node", Kind::Int),
    ("gpus", Kind::Str),
    ("resources", Kind::StrMap),
    ("labels", Kind::StrMap),
    ("memory", Kind::Str),
    ("object_store_memory", Kind::Str),
];
pub(crate) const ROLLOUT_KEYS: &[(&str, Kind)] = &[("max_unavailable", Kind::Str)];
pub(crate) const TIMEOUT_KEYS: &[(&str, Kind)] = &[
    ("head_ready", Kind::Int),
    ("nodes_alive", Kind::Int),
    ("drain", Kind::Int),
    ("stop", Kind::Int),
];
/// The keys an environment's overlay (`[env.NAME]`) takes: the root's,
/// except `env` itself.
pub(crate) const OVERLAY_KEYS: &[(&str, Kind)] = &[
    ("cluster", Kind::Table(CLUSTER_KEYS)),
    ("ssh", Kind::Table(SSH_KEYS)),
    ("head", Kind::Table(HEAD_KEYS)),
    ("workers", Kind::Named(GROUP_KEYS)),
    ("timeouts", Kind::Table(TIMEOUT_KEYS)),
    ("rollout", Kind::Table(ROLLOUT_KEYS)),
];
pub(crate) const ROOT_KEYS: &[(&str, Kind)] = &[
    ("cluster", Kind::Table(CLUSTER_KEYS)),
    ("ssh", Kind::Table(SSH_KEYS)),
    ("head", Kind::Table(HEAD_KEYS)),
    ("workers", Kind::Named(GROUP_KEYS)),
    ("timeouts", Kind::Table(TIMEOUT_KEYS)),
    ("rollout", Kind::Table(ROLLOUT_KEYS)),
    ("env", Kind::Named(OVERLAY_KEYS)),
];
