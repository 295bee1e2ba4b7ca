//! The domain model shared by every stage: what the configuration asks for
//! ([`DesiredState`], made of [`NodeSpec`]s) and what the hosts hold
//! ([`ObservedState`], the same shape as a recorded observation file).
//!
//! Everything here is plain data with deterministic ordering (`BTreeMap`,
//! `Vec` in topology order) so that plans computed from it are byte-for-byte
//! reproducible.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Label namespace carried by every container seedcore creates.
pub const LABEL_PREFIX: &str = "io.seedcore.";
/// `io.seedcore.cluster`: the cluster name.
pub const LABEL_CLUSTER: &str = "io.seedcore.cluster";
/// `io.seedcore.role`: `head` or `worker`.
pub const LABEL_ROLE: &str = "io.seedcore.role";
/// `io.seedcore.node`: the node (container) name.
pub const LABEL_NODE: &str = "io.seedcore.node";
/// `io.seedcore.group`: the worker group.
pub const LABEL_GROUP: &str = "io.seedcore.group";
/// `io.seedcore.cluster-id`: the cluster's identity beyond its name (see
/// `ownership`): two clusters of one name with different heads differ here.
pub const LABEL_CLUSTER_ID: &str = "io.seedcore.cluster-id";
/// `io.seedcore.head`: the host of the cluster's head, to name a foreign cluster.
pub const LABEL_HEAD: &str = "io.seedcore.head";
/// `io.seedcore.host`: the host the node was declared on.
pub const LABEL_HOST: &str = "io.seedcore.host";
/// `io.seedcore.index`: the node's index within its group on its host (0: head).
pub const LABEL_INDEX: &str = "io.seedcore.index";
/// `io.seedcore.ports`: the ports the node binds (JSON), kept by later plans.
pub const LABEL_PORTS: &str = "io.seedcore.ports";
/// `io.seedcore.schema`: version of the label schema.
pub const LABEL_SCHEMA: &str = "io.seedcore.schema";
/// `io.seedcore.spec-hash`: sha256 of the canonical spec.
pub const LABEL_SPEC_HASH: &str = "io.seedcore.spec-hash";
/// `io.seedcore.spec`: the canonical spec itself, when it fits.
pub const LABEL_SPEC: &str = "io.seedcore.spec";
/// Keyed digests of the node's secrets (`NAME=digest,...`; the Ray token as
/// `RAY_AUTH_TOKEN`), never their values; outside the spec and its hash.
pub const LABEL_SECRETS: &str = "io.seedcore.secrets";
/// Who applied the container (`user@machine`) and when (RFC 3339, UTC);
/// outside the spec and its hash.
pub const LABEL_APPLIED_BY: &str = "io.seedcore.applied-by";
pub const LABEL_APPLIED_AT: &str = "io.seedcore.applied-at";

/// Where a node finds the Ray token (a file handed to its container, 0400).
pub const NODE_TOKEN_PATH: &str = "/run/seedcore/auth_token";
/// Where a node finds its secret environment (NUL-separated `KEY=value`).
pub const NODE_SECRETS_PATH: &str = "/run/seedcore/secrets";
/// Where the head keeps the key of the cluster's secret digests.
pub const NODE_DIGEST_KEY_PATH: &str = "/run/seedcore/digest_key";
/// The name under which the Ray token's digest is kept with the secrets'.
pub const TOKEN_SECRET_NAME: &str = "RAY_AUTH_TOKEN";
/// Version of the label schema written by this seedcore.
pub const SCHEMA_VERSION: &str = "2";
/// Canonical specs longer than this are not stored in a label (the hash still is).
pub const SPEC_LABEL_LIMIT: usize = 16 * 1024;

/// The address seedcore uses to reach a host over SSH (or `local`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HostName(pub String);

impl HostName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// `local` means the machine seedcore runs on, reached without SSH.
    pub fn is_local(&self) -> bool {
        self.0 == "local"
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A Ray node's name; it is also its container's name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeName(pub String);

impl NodeName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Head or worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Head,
    Worker,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Head => "head",
            Role::Worker => "worker",
        }
    }
}

/// Every port one Ray node binds, pinned so nodes sharing a host never collide
/// and so the plan can list what each host's firewall must open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePorts {
    pub object_manager: u16,
    pub node_manager: u16,
    pub min_worker: u16,
    pub max_worker: u16,
    pub dashboard_agent_listen: u16,
    pub dashboard_agent_grpc: u16,
    pub runtime_env_agent: u16,
    pub metrics_export: u16,
    /// Head only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<HeadPorts>,
}

/// Ports only the head binds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadPorts {
    pub gcs: u16,
    pub client_server: u16,
    pub dashboard: u16,
    /// Ray Serve's HTTP port, when Serve is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serve: Option<u16>,
}

impl NodePorts {
    /// Every port range this node binds with what it is for, in a stable
    /// order. Ranges stay ranges: a wide worker range is one entry.
    pub fn all(&self) -> Vec<(u16, u16, &'static str)> {
        let mut out = Vec::new();
        if let Some(h) = &self.head {
            out.push((h.gcs, h.gcs, "GCS"));
            out.push((h.client_server, h.client_server, "Ray client server"));
            out.push((h.dashboard, h.dashboard, "dashboard"));
            if let Some(s) = h.serve {
                out.push((s, s, "Serve HTTP"));
            }
        }
        out.push((self.object_manager, self.object_manager, "object manager"));
        out.push((self.node_manager, self.node_manager, "node manager"));
        out.push((self.min_worker, self.max_worker, "worker ports"));
        out.push((
            self.dashboard_agent_listen,
            self.dashboard_agent_grpc,
            "dashboard agent",
        ));
        out.push((
            self.runtime_env_agent,
            self.metrics_export,
            "agents and metrics",
        ));
        out
    }
}

/// One Ray node as the configuration wants it: a container on a host.
///
/// The canonical JSON of this struct is what `io.seedcore.spec` stores and
/// what `io.seedcore.spec-hash` hashes: any difference in it means the
/// container must be replaced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeSpec {
    pub name: NodeName,
    pub host: HostName,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// 1-based index within its group on its host (0 for the head): with the
    /// group and the host, the node's identity.
    pub index: u32,
    pub image: String,
    /// The address Ray advertises for this node.
    pub node_ip: String,
    pub cpus: u32,
    pub shm_size_bytes: u64,
    /// `ray start` argv (without `--block`), as reviewed in the plan.
    pub ray_start: Vec<String>,
    /// The container's full command.
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Names of the secret environment variables (their values are handed
    /// to the container as a file, never put in its configuration).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_env: Vec<String>,
    pub ports: NodePorts,
    pub network_mode: String,
    pub restart_policy: String,
    pub init: bool,
    /// GPUs handed to the container (a Docker device request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<crate::config::Gpus>,
    /// The container's memory limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
}

impl NodeSpec {
    /// Canonical JSON: serde field order, sorted maps, no whitespace.
    pub fn canonical_json(&self) -> String {
        serde_json::to_string(self).expect("a NodeSpec always serializes")
    }

    /// sha256 of the canonical JSON, lower-case hex.
    pub fn spec_hash(&self) -> String {
        let digest = Sha256::digest(self.canonical_json().as_bytes());
        hex(&digest)
    }

    /// The labels the container carries.
    pub fn labels(&self, cluster: &ClusterIdentity) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::new();
        labels.insert(LABEL_CLUSTER.to_string(), cluster.name.clone());
        labels.insert(LABEL_CLUSTER_ID.to_string(), cluster.id.clone());
        labels.insert(LABEL_HEAD.to_string(), cluster.head.0.clone());
        labels.insert(LABEL_HOST.to_string(), self.host.0.clone());
        labels.insert(LABEL_INDEX.to_string(), self.index.to_string());
        labels.insert(
            LABEL_PORTS.to_string(),
            serde_json::to_string(&self.ports).expect("ports serialize"),
        );
        labels.insert(LABEL_ROLE.to_string(), self.role.as_str().to_string());
        labels.insert(LABEL_NODE.to_string(), self.name.0.clone());
        if let Some(group) = &self.group {
            labels.insert(LABEL_GROUP.to_string(), group.clone());
        }
        labels.insert(LABEL_SCHEMA.to_string(), SCHEMA_VERSION.to_string());
        labels.insert(LABEL_SPEC_HASH.to_string(), self.spec_hash());
        let canonical = self.canonical_json();
        if canonical.len() <= SPEC_LABEL_LIMIT {
            labels.insert(LABEL_SPEC.to_string(), canonical);
        }
        labels
    }

    /// The spec as `key = value` lines, one per reviewable field, for field
    /// diffs: the container's settings, then each `ray start` flag on a line
    /// of its own (keyed by the flag), so a diff names exactly what changed.
    pub fn review_lines(&self) -> Vec<(String, String)> {
        let mut lines = vec![
            ("host".to_string(), self.host.0.clone()),
            ("image".to_string(), self.image.clone()),
            ("cpus".to_string(), self.cpus.to_string()),
            ("shm_size".to_string(), human_bytes(self.shm_size_bytes)),
            ("network".to_string(), self.network_mode.clone()),
            ("restart".to_string(), self.restart_policy.clone()),
        ];
        if let Some(g) = &self.gpus {
            let text = match g {
                crate::config::Gpus::Count(n) => n.to_string(),
                crate::config::Gpus::All => "all".to_string(),
                crate::config::Gpus::Devices(ids) => ids.join(","),
            };
            lines.push(("gpus".to_string(), text));
        }
        if let Some(m) = self.memory_bytes {
            lines.push(("memory".to_string(), human_bytes(m)));
        }
        let mut env: Vec<(String, String)> = self
            .env
            .iter()
            .map(|(k, v)| (format!("env.{k}"), v.clone()))
            .chain(
                self.secret_env
                    .iter()
                    .map(|k| (format!("env.{k}"), SENSITIVE.to_string())),
            )
            .collect();
        env.sort();
        lines.extend(env);
        if let Some(serve) = self.ports.head.as_ref().and_then(|h| h.serve) {
            lines.push(("serve_port".to_string(), serve.to_string()));
        }
        for arg in self.ray_start.iter().skip(2) {
            match arg.split_once('=') {
                Some((flag, value)) => lines.push((flag.to_string(), value.to_string())),
                None => lines.push((arg.clone(), "on".to_string())),
            }
        }
        lines
    }
}

/// Who a cluster is: its name, and an identity that tells it apart from
/// another cluster of the same name (see `ownership`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterIdentity {
    pub name: String,
    pub id: String,
    /// The head's host, as declared.
    pub head: HostName,
}

/// A bounded, printable excerpt of an untrusted string: control characters
/// escaped (`\u{1b}`), backticks turned into quotes (so that a value cannot
/// close a code span around it), at most `max` characters, an ellipsis when
/// cut.
pub fn excerpt(text: &str, max: usize) -> String {
    bounded(text, max).replace('`', "'")
}

/// A message of ours, bounded for the terminal: control characters escaped,
/// at most `max` characters (its values were excerpted when it was made).
pub fn bounded(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (n, ch) in text.chars().enumerate() {
        if n >= max {
            out.push('…');
            break;
        }
        if ch.is_control() {
            out.extend(ch.escape_default());
        } else {
            out.push(ch);
        }
    }
    out
}

/// What is shown in place of a secret.
pub const SENSITIVE: &str = "(sensitive)";

/// Whether a review key is a `ray start` flag.
pub fn is_ray_flag(key: &str) -> bool {
    key.starts_with("--")
}

/// Unix seconds of a Docker timestamp (`2026-12-06T02:31:00.123456789Z`,
/// UTC as Docker writes it); `None` for anything else.
pub fn unix_seconds(text: &str) -> Option<i64> {
    let (date, time) = text.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let time = time.strip_suffix('Z')?;
    let whole = time.split('.').next()?;
    let mut t = whole.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (h, min, sec) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 23 || min > 59 || sec > 60 {
        return None;
    }
    // Days from 1970-01-01 to the civil date (proleptic Gregorian).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + min * 60 + sec)
}

/// Milliseconds since the epoch as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = (secs / 86400, secs % 86400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        (rest % 3600) / 60,
        rest % 60
    )
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A byte count for people: `512 B`, `3.4 KiB`, `1.07 GiB`.
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    let digits = if v < 10.0 {
        2
    } else if v < 100.0 {
        1
    } else {
        0
    };
    format!("{v:.digits$} {}", UNITS[unit])
}

/// `2147483648` -> `2g`, for display.
pub fn human_bytes(n: u64) -> String {
    const K: u64 = 1024;
    for (unit, size) in [("g", K * K * K), ("m", K * K), ("k", K)] {
        if n >= size && n.is_multiple_of(size) {
            return format!("{}{unit}", n / size);
        }
    }
    n.to_string()
}

/// What the configuration wants, in topology order: the head first, then
/// workers by group name, host (declared order) and index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredState {
    pub cluster: ClusterIdentity,
    pub nodes: Vec<NodeSpec>,
    /// The nodes whose image seedcore moves to their host (`image_source =
    /// "push"`); the others' hosts pull it.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub pushed: BTreeSet<NodeName>,
}

impl DesiredState {
    pub fn head(&self) -> &NodeSpec {
        self.nodes
            .iter()
            .find(|n| n.role == Role::Head)
            .expect("a desired state always has a head")
    }

    pub fn workers(&self) -> impl Iterator<Item = &NodeSpec> {
        self.nodes.iter().filter(|n| n.role == Role::Worker)
    }

    /// Every host that runs a node, deduplicated, in topology order.
    pub fn hosts(&self) -> Vec<HostName> {
        let mut hosts: Vec<HostName> = Vec::new();
        for n in &self.nodes {
            if !hosts.contains(&n.host) {
                hosts.push(n.host.clone());
            }
        }
        hosts
    }

    /// Images needed on each host.
    pub fn images_by_host(&self) -> BTreeMap<HostName, Vec<String>> {
        self.images_by_host_of(|_| true)
    }

    /// The images seedcore moves to each host (`image_source = "push"`).
    pub fn pushed_images_by_host(&self) -> BTreeMap<HostName, Vec<String>> {
        self.images_by_host_of(|n| self.pushed.contains(&n.name))
    }

    fn images_by_host_of(
        &self,
        keep: impl Fn(&NodeSpec) -> bool,
    ) -> BTreeMap<HostName, Vec<String>> {
        let mut out: BTreeMap<HostName, Vec<String>> = BTreeMap::new();
        for n in self.nodes.iter().filter(|n| keep(n)) {
            let images = out.entry(n.host.clone()).or_default();
            if !images.contains(&n.image) {
                images.push(n.image.clone());
            }
        }
        out
    }
}

/// Work Ray runs: the running jobs that have something there (by name,
/// bounded), and counts of live actors and placement groups.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NodeWork {
    #[serde(default)]
    pub jobs: Vec<String>,
    #[serde(default)]
    pub actors: u32,
    #[serde(default)]
    pub placement_groups: u32,
}

impl NodeWork {
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty() && self.actors == 0 && self.placement_groups == 0
    }

    /// `2 running jobs (`train-7`, `eval`), 5 actors, 1 placement group`.
    pub fn describe(&self) -> String {
        if self.is_empty() {
            return "nothing running".to_string();
        }
        let plural =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let mut parts = Vec::new();
        if !self.jobs.is_empty() {
            let mut names: Vec<String> =
                self.jobs.iter().take(5).map(|j| format!("`{j}`")).collect();
            if self.jobs.len() > 5 {
                names.push(format!("{} more", self.jobs.len() - 5));
            }
            parts.push(format!(
                "{} ({})",
                plural(self.jobs.len(), "running job", "running jobs"),
                names.join(", ")
            ));
        }
        if self.actors > 0 {
            parts.push(plural(self.actors as usize, "actor", "actors"));
        }
        if self.placement_groups > 0 {
            parts.push(plural(
                self.placement_groups as usize,
                "placement group",
                "placement groups",
            ));
        }
        parts.join(", ")
    }
}

/// Ray's work, per node ID and in all.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ClusterWork {
    #[serde(default)]
    pub nodes: BTreeMap<String, NodeWork>,
    #[serde(default)]
    pub all: NodeWork,
}

/// Version of the recorded-observation format.
pub const OBSERVATION_FORMAT: &str = "1";

/// What every host holds, as observed live or read from a recorded file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObservedState {
    pub format_version: String,
    pub hosts: BTreeMap<HostName, HostObservation>,
    /// Ray's node list, asked of the cluster's head when it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ray: Option<Vec<RayNode>>,
    /// What runs on the cluster (jobs, actors, placement groups), per Ray
    /// node ID and in all, asked of the head's state API; `None`: unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work: Option<ClusterWork>,
    /// The Ray version in each node image, where it could be learnt.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ray_versions: BTreeMap<String, String>,
    /// When it was observed (seconds since the epoch), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_at: Option<i64>,
    /// What the cluster's head keeps (digest key, generated token): held in
    /// memory only, never written with the observation.
    #[serde(skip)]
    pub head_secrets: crate::secrets::HeadSecrets,
    /// Images to push, as this machine's engine lays them out (`push`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sources: BTreeMap<String, crate::transfer::SourceImage>,
    /// Images this machine's engine has yet to build (`[cluster.build]`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub to_build: std::collections::BTreeSet<String>,
}

/// A Ray node as `ray list nodes --format json` reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RayNode {
    #[serde(default)]
    pub node_id: String,
    #[serde(default)]
    pub node_ip: String,
    #[serde(default)]
    pub node_name: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub is_head_node: bool,
    /// When Ray saw it start (milliseconds since the epoch), when reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time_ms: Option<u64>,
    /// When Ray saw it die (milliseconds since the epoch; `null` while alive).
    #[serde(default)]
    pub end_time_ms: Option<u64>,
    /// Numbers for CPUs, strings such as `"7.036 GiB"` for memory.
    #[serde(default)]
    pub resources_total: BTreeMap<String, serde_json::Value>,
}

impl RayNode {
    pub fn cpus(&self) -> f64 {
        self.resources_total
            .get("CPU")
            .and_then(|v| v.as_f64())
            .unwrap_or(0.0)
    }
    pub fn is_alive(&self) -> bool {
        self.state == "ALIVE"
    }
}

/// One host's observation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostObservation {
    pub reachable: bool,
    /// Why the host could not be observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineInfo>,
    /// Presence of each image the configuration needs on this host
    /// (reference -> image ID, or `null` when missing). Absent when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<BTreeMap<String, Option<String>>>,
    /// The chain IDs of every layer stack the host's engine has, when an
    /// image is to be pushed there (what it need not be sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<std::collections::BTreeSet<String>>,
    #[serde(default)]
    pub containers: Vec<ObservedContainer>,
    /// TCP ports something listens on (`ss -ltn`), when known: seedcore
    /// never hands one of them to a new node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listening: Vec<u16>,
}

/// The host's Docker engine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineInfo {
    /// Docker's engine ID: two host names with the same ID are one machine.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    pub version: String,
    pub api_version: String,
    pub cpus: u32,
    #[serde(default)]
    pub memory_bytes: u64,
}

/// A container as the engine reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObservedContainer {
    pub name: String,
    pub id: String,
    pub image: String,
    /// Docker's state: `running`, `exited`, `created`, `restarting`, `paused`, `dead`...
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// When it was created (seconds since the epoch), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<i64>,
    /// The ID of the image it runs, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl ObservedContainer {
    /// The cluster this container belongs to, by its labels.
    pub fn cluster(&self) -> Option<&str> {
        self.labels.get(LABEL_CLUSTER).map(String::as_str)
    }

    pub fn spec_hash(&self) -> Option<&str> {
        self.labels.get(LABEL_SPEC_HASH).map(String::as_str)
    }

    /// The cluster identity label (absent on containers of seedcore before 0.2).
    pub fn cluster_id(&self) -> Option<&str> {
        self.labels.get(LABEL_CLUSTER_ID).map(String::as_str)
    }

    /// The node name its labels claim.
    pub fn node_label(&self) -> Option<&str> {
        self.labels.get(LABEL_NODE).map(String::as_str)
    }

    /// The ports its labels record (what a later plan keeps).
    pub fn recorded_ports(&self) -> Option<NodePorts> {
        self.labels
            .get(LABEL_PORTS)
            .and_then(|s| serde_json::from_str(s).ok())
            .or_else(|| self.recorded_spec().map(|s| s.ports))
    }

    pub fn role(&self) -> Role {
        match self.labels.get(LABEL_ROLE).map(String::as_str) {
            Some("head") => Role::Head,
            _ => Role::Worker,
        }
    }

    /// The spec recorded in the container's labels, if present and readable.
    pub fn recorded_spec(&self) -> Option<NodeSpec> {
        self.labels
            .get(LABEL_SPEC)
            .and_then(|s| serde_json::from_str(s).ok())
    }

    pub fn is_running(&self) -> bool {
        matches!(self.state.as_str(), "running" | "restarting")
    }
}

impl ObservedState {
    pub fn new() -> Self {
        ObservedState {
            format_version: OBSERVATION_FORMAT.to_string(),
            hosts: BTreeMap::new(),
            ray: None,
            work: None,
            ray_versions: BTreeMap::new(),
            observed_at: None,
            head_secrets: Default::default(),
            sources: BTreeMap::new(),
            to_build: Default::default(),
        }
    }
}

impl Default for ObservedState {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_epoch_milliseconds() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_795_791_601_000), "2026-11-27 15:00:01 UTC");
    }

    #[test]
    fn docker_timestamps_read_as_unix_seconds() {
        assert_eq!(unix_seconds("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            unix_seconds("2026-12-06T02:15:24.639015064Z"),
            Some(1_796_523_324)
        );
        assert_eq!(unix_seconds("2024-02-29T23:59:59Z"), Some(1_709_251_199));
        assert_eq!(unix_seconds("0001-01-01T00:00:00Z"), Some(-62_135_596_800));
        for bad in [
            "",
            "2026-12-06",
            "2026-13-01T00:00:00Z",
            "2026-12-06T02:15:24+01:00",
            "x-y-zT1:2:3Z",
        ] {
            assert_eq!(unix_seconds(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn human_bytes_picks_the_largest_exact_unit() {
        assert_eq!(human_bytes(2 * 1024 * 1024 * 1024), "2g");
        assert_eq!(human_bytes(512 * 1024 * 1024), "512m");
        assert_eq!(human_bytes(1536), "1536");
    }
}
