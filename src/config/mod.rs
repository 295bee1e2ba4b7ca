//! `seedcore.toml`: its schema, `--set` overrides and validation.
//!
//! First stage of the flow: text -> [`RawConfig`] (serde, numbers kept wide so
//! that out-of-range values get our own message) -> [`Config`] (validated,
//! typed, defaults filled). Every error points at the file, line and column of
//! the offending text (or at the `--set` that introduced it) and carries a
//! `hint:` with the fix.

mod environments;
mod errors;
mod json_schema;
mod overrides;
mod schema;
mod secrets;
mod source;
mod starter;
mod validate;
mod values;

pub use environments::{valid_env_name, Selection, ENV_VAR, MAX_ENV_NAME};
pub use errors::*;
pub use json_schema::{json_schema, json_schema_text};
pub use overrides::*;
#[allow(unused_imports)]
pub(crate) use schema::*;
pub use secrets::{Auth, EnvValue, Secret, SecretOrigin, TokenSource, MAX_ENV_VALUE_BYTES};
pub use source::*;
pub use starter::{starter, Starter};
#[allow(unused_imports)]
pub(crate) use validate::*;
pub use values::*;

use crate::model::HostName;
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
    /// Longer than Ray's own grace period for its processes (`ray stop`'s
    /// 16 s), so a stopped node finishes leaving the cluster.
    pub const STOP_SECS: u64 = 20;
    /// Ray's grace period: a shorter container stop cuts Ray's shutdown.
    pub const RAY_GRACE_SECS: u64 = 16;
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

/// An image built by this machine's engine from a context directory,
/// tagged with a digest of the context (`IMAGE:ctx-<12 hex>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildConfig {
    /// The context directory (relative ones are relative to the file).
    pub context: PathBuf,
    pub dockerfile: String,
    pub args: BTreeMap<String, String>,
    /// sha256 of the Dockerfile's name, the args and every file of the
    /// context (path, mode, content); filled when the file is loaded.
    pub digest: String,
}

/// Where hosts get their images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImageSource {
    /// From a registry, by the host's engine (`docker pull`).
    #[default]
    Pull,
    /// From the engine of the machine running seedcore, only the layers a
    /// host lacks (see `transfer`).
    Push,
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub cluster: ClusterConfig,
    pub ssh: SshConfig,
    pub head: HeadConfig,
    pub workers: BTreeMap<String, WorkerGroup>,
    pub timeouts: Timeouts,
    /// Workers of a group replaced at once (`[rollout] max_unavailable`).
    pub max_unavailable: MaxUnavailable,
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
    /// Where hosts get the images: their registry (`pull`) or the engine of
    /// the machine running seedcore (`push`).
    pub image_source: ImageSource,
    /// Build the cluster's image on this machine (`[cluster.build]`).
    pub build: Option<BuildConfig>,
    /// How Ray authenticates (`auth`, `token_file`, `token_env`).
    pub auth: Auth,
    pub env: BTreeMap<String, EnvValue>,
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
    /// Seconds an idle connection outlives the command that opened it, for
    /// the next one to use (ssh's `ControlPersist`); 0: closed at exit.
    pub persist_secs: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HeadConfig {
    pub host: HostName,
    pub image: Option<String>,
    /// Overrides `cluster.image_source` for the head.
    pub image_source: Option<ImageSource>,
    pub cpus: u32,
    pub gcs_port: u16,
    pub client_server_port: u16,
    pub dashboard_port: u16,
    pub serve: bool,
    pub serve_port: u16,
    /// The dashboard and the Ray client server are meant to be reachable
    /// from beyond the cluster's hosts (no warning then).
    pub public: bool,
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
    /// Overrides `cluster.image_source` for this group's nodes.
    pub image_source: Option<ImageSource>,
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
    /// GPUs each worker gets (a Docker device request, Ray's `--num-gpus`).
    pub gpus: Option<Gpus>,
    /// Ray custom resources per worker (`--resources`), amounts as written.
    pub resources: BTreeMap<String, f64>,
    /// Ray node labels (`--labels`).
    pub labels: BTreeMap<String, String>,
    /// Container memory limit and Ray's `--memory`.
    pub memory_bytes: Option<u64>,
    /// Ray's `--object-store-memory`.
    pub object_store_memory_bytes: Option<u64>,
}

/// GPUs a worker gets.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Gpus {
    /// That many, chosen by the runtime.
    Count(u32),
    /// Every GPU of the host.
    All,
    /// These devices (IDs or UUIDs as `nvidia-smi` lists them).
    Devices(Vec<String>),
}

/// How many workers of a group may be replaced at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxUnavailable {
    Count(u32),
    Percent(u32),
}

impl Default for MaxUnavailable {
    fn default() -> Self {
        MaxUnavailable::Count(1)
    }
}

impl MaxUnavailable {
    /// Workers of a group of `size` replaced at once: at least 1.
    pub fn of(self, size: usize) -> usize {
        match self {
            MaxUnavailable::Count(n) => (n as usize).max(1),
            MaxUnavailable::Percent(p) => (size * p as usize / 100).max(1),
        }
    }

    /// `1`, `25%`.
    pub fn parse(text: &str) -> Option<MaxUnavailable> {
        let t = text.trim();
        match t.strip_suffix('%') {
            Some(p) => p
                .parse::<u32>()
                .ok()
                .filter(|p| (1..=100).contains(p))
                .map(MaxUnavailable::Percent),
            None => t
                .parse::<u32>()
                .ok()
                .filter(|n| *n >= 1)
                .map(MaxUnavailable::Count),
        }
    }
}

impl std::fmt::Display for MaxUnavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MaxUnavailable::Count(n) => write!(f, "{n}"),
            MaxUnavailable::Percent(p) => write!(f, "{p}%"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Timeouts {
    pub head_ready_secs: u64,
    pub nodes_alive_secs: u64,
    pub drain_secs: u64,
    pub stop_secs: u64,
}

// ---------------------------------------------------------------------------
// Loading

/// A parsed and validated configuration with its source, for locating later
/// (topology) errors.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub source: Source,
    /// The environment selected (`--env NAME`), whose overlay was merged.
    pub environment: Option<String>,
}

/// Reads, parses and validates a configuration file.
pub fn load(path: &Path, overrides: &[Override]) -> Result<Loaded, ConfigErrors> {
    load_in(path, None, overrides)
}

/// Reads, parses and validates a configuration file in an environment
/// (`[env.NAME]` merged over the rest of the file), if one is selected.
pub fn load_in(
    path: &Path,
    env: Option<&Selection>,
    overrides: &[Override],
) -> Result<Loaded, ConfigErrors> {
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
    parse_in(&path.display().to_string(), &text, env, overrides)
}

/// Parses and validates configuration text (`path` is only for messages).
pub fn parse(path: &str, text: &str, overrides: &[Override]) -> Result<Loaded, ConfigErrors> {
    parse_in(path, text, None, overrides)
}

/// [`parse`] in an environment, if one is selected.
pub fn parse_in(
    path: &str,
    text: &str,
    env: Option<&Selection>,
    overrides: &[Override],
) -> Result<Loaded, ConfigErrors> {
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
    environments::check_names(doc.get_ref(), &source, &mut errors);
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
    environments::select(&mut table, env, &mut source)?;
    for o in overrides {
        apply_override(&mut table, o).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                message: e.0,
                location: Some(Location::Override(o.location())),
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
    let mut config = validate(raw).map_err(|errs| source.errors(errs))?;
    if let Some(build) = config.cluster.build.as_mut() {
        let dir = Path::new(path)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if build.context.is_relative() {
            build.context = dir.join(&build.context);
        }
        build.digest = build_digest(build).map_err(|e| {
            source.errors(vec![KeyError {
                key: "cluster.build.context".to_string(),
                message: e,
                hint: Some("point `context` at a directory this machine can read, with the Dockerfile in it".to_string()),
            }])
        })?;
        let repo = config
            .cluster
            .image
            .rsplit_once(':')
            .filter(|(_, tag)| !tag.contains('/'))
            .map(|(r, _)| r.to_string())
            .unwrap_or_else(|| config.cluster.image.clone());
        config.cluster.image = format!("{repo}:ctx-{}", &build.digest[..12]);
    }
    for o in &mut source.overrides {
        if let Some(k) = o.key.strip_prefix("cluster.env.") {
            o.sensitive = config.cluster.env.get(k).is_some_and(EnvValue::is_secret);
        }
    }
    Ok(Loaded {
        config,
        source,
        environment: env.map(|e| e.name.clone()),
    })
}

/// The digest of a build: the Dockerfile's name, the args, and every file
/// of the context (relative path, executable bit, content), in path order.
fn build_digest(build: &BuildConfig) -> Result<String, String> {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::PermissionsExt;
    let root = &build.context;
    let shown = crate::model::excerpt(&root.display().to_string(), 200);
    if !root.is_dir() {
        return Err(format!("the build context `{shown}` is not a directory"));
    }
    if !root.join(&build.dockerfile).is_file() {
        return Err(format!(
            "the build context `{shown}` has no `{}`",
            crate::model::excerpt(&build.dockerfile, 80)
        ));
    }
    let mut files = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("cannot read `{shown}`: {e}"))?;
        for e in entries.flatten() {
            let p = e.path();
            let meta =
                std::fs::symlink_metadata(&p).map_err(|e| format!("cannot read `{shown}`: {e}"))?;
            if meta.is_dir() {
                stack.push(p);
            } else {
                files.push((p, meta));
            }
            if files.len() > 100_000 {
                return Err(format!(
                    "the build context `{shown}` holds more than 100000 files"
                ));
            }
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h = Sha256::new();
    h.update(build.dockerfile.as_bytes());
    h.update([0]);
    for (k, v) in &build.args {
        h.update(format!("{k}={v}").as_bytes());
        h.update([0]);
    }
    for (p, meta) in files {
        let rel = p
            .strip_prefix(root)
            .unwrap_or(&p)
            .to_string_lossy()
            .to_string();
        h.update(rel.as_bytes());
        h.update([0, u8::from(meta.permissions().mode() & 0o111 != 0)]);
        if meta.is_file() {
            let bytes = std::fs::read(&p)
                .map_err(|e| format!("cannot read `{}`: {e}", crate::model::excerpt(&rel, 200)))?;
            h.update(Sha256::digest(&bytes));
        } else if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&p)
                .map(|t| t.to_string_lossy().to_string())
                .unwrap_or_default();
            h.update(target.as_bytes());
        }
    }
    Ok(crate::model::hex(&h.finalize()))
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
    fn image_references_follow_dockers_grammar() {
        for ok in [
            "rayproject/ray:2.60.0",
            "ray",
            "localhost:5000/team/ray:latest",
            "registry.example/ray@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "seedcore-ray:lab",
        ] {
            assert!(check_image(ok).is_ok(), "{ok}");
        }
        for bad in [
            "--privileged",
            "ray:`id`",
            "Ray/Ray",
            "ray:",
            "ray@sha256:xyz",
            "a b",
            "",
            "ray;rm",
        ] {
            assert!(check_image(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hosts_that_are_not_one_machine_are_refused() {
        for bad in ["0.0.0.0", "255.255.255.255", "224.0.0.1"] {
            assert!(check_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_keys_timeouts_and_known_hosts_are_bounded() {
        let parse = |text: &str| parse("t.toml", text, &[]);
        let head = "[head]\nhost = \"10.0.0.1\"\n";
        for key in ["\"-e\"", "\"A;B\"", "\"A\\u001bB\"", "\"1X\""] {
            let text = format!("[cluster.env]\n{key} = \"v\"\n{head}");
            assert!(parse(&text).is_err(), "{key}");
        }
        assert!(parse(&format!("[cluster.env]\nHF_HOME = \"/x\"\n{head}")).is_ok());
        for t in ["head_ready = 9223372036854775807", "stop = 4294967297"] {
            let e = parse(&format!("{head}[timeouts]\n{t}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("at most 86400"), "{e}");
        }
        let e = parse(&format!(
            "[ssh]\nknown_hosts_file = \"/dev/null\"\nknown_hosts = \"accept-new\"\n{head}"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("host-key checking cannot be turned off"), "{e}");
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
