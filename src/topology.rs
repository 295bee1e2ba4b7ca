//! Lowering a validated [`Config`] into the nodes it describes: the head and
//! each worker group's nodes, each with a stable identity and every port it
//! binds pinned.
//!
//! Identity (documented in the README): a worker is (group, host, index on
//! that host), `1..=count`; its container and Ray node name is
//! `CLUSTER-ray-GROUP-HOST-INDEX` (the head: `CLUSTER-ray-head`). Adding or
//! removing a host or a group touches no other node; changing `count` adds or
//! removes the highest indexes on each host.
//!
//! Ports:
//! - every node uses host networking, so nodes on one host share its ports;
//! - a port written in the file is exactly the port of the group's first node
//!   on each host; its further nodes there take `+2`, `+4`... (manager ports)
//!   or the next slices of a written `worker_ports` range;
//! - a port left unset is chosen by seedcore: the lowest free candidate
//!   (object manager 8076, 8078...; node manager 8077, 8079...; worker slices
//!   from 11000; agent blocks of four from `cluster.agent_ports`), and it is
//!   sticky: a node that runs keeps the ports its labels record while they
//!   stay free of conflict, so another group's edit never re-ports it;
//! - two written ports claiming one port of a host are an error naming both
//!   claimants and a free alternative.
//!
//! Same inputs, same bytes: nodes are allocated in topology order, written
//! ports first, then kept ones, then new ones.

use crate::config::{defaults, Auth, Config, EnvValue, KeyError, PortRange};
use crate::model::{
    ClusterIdentity, DesiredState, HeadPorts, HostName, NodeName, NodePorts, NodeSpec, Role,
};
use std::collections::BTreeMap;

/// Fewest worker ports a node may get: Ray needs one per worker process.
pub fn min_worker_ports(cpus: u32) -> u32 {
    (2 * cpus).max(4)
}

/// Worker ports a node gets when neither `worker_ports` nor
/// `worker_ports_per_node` is written: the seed's 11000-11020 for one node.
pub fn default_slice(cpus: u32) -> u32 {
    min_worker_ports(cpus).max(21)
}

/// First worker port seedcore hands out when a group writes no range.
pub const WORKER_PORTS_BASE: u16 = 11000;

/// Container (and Ray node) name of the head.
pub fn head_name(cluster: &str) -> NodeName {
    NodeName(format!("{cluster}-ray-head"))
}

/// Container (and Ray node) name of a worker: its identity spelled out.
pub fn worker_name(cluster: &str, group: &str, host: &HostName, index: u32) -> NodeName {
    NodeName(format!("{cluster}-ray-{group}-{host}-{index}"))
}

/// What already runs: the ports of this cluster's nodes (by host and node
/// name: what a plan keeps), and every port something listens on per host
/// (which new nodes never get).
#[derive(Debug, Clone, Default)]
pub struct KeptPorts {
    pub nodes: BTreeMap<(HostName, NodeName), NodePorts>,
    pub busy: BTreeMap<HostName, std::collections::BTreeSet<u16>>,
}

/// One claimed port range on a host.
#[derive(Debug, Clone)]
struct Claim {
    first: u16,
    last: u16,
    node: NodeName,
    what: &'static str,
    /// The configuration key that chose it; `None` when seedcore did.
    key: Option<String>,
}

/// The claims on every host.
#[derive(Default)]
struct Ledger {
    hosts: BTreeMap<HostName, Vec<Claim>>,
}

impl Ledger {
    fn is_free(&self, host: &HostName, first: u32, last: u32) -> bool {
        last <= 65535
            && self.hosts.get(host).is_none_or(|claims| {
                claims
                    .iter()
                    .all(|c| last < u32::from(c.first) || first > u32::from(c.last))
            })
    }

    fn claim(&mut self, host: &HostName, claim: Claim) {
        self.hosts.entry(host.clone()).or_default().push(claim);
    }

    /// The first of `candidates` (first ports) whose `width` ports are free.
    fn first_free(
        &self,
        host: &HostName,
        candidates: impl Iterator<Item = u32>,
        width: u32,
    ) -> Option<u16> {
        candidates
            .take_while(|p| p + width - 1 <= 65535)
            .find(|p| self.is_free(host, *p, p + width - 1))
            .map(|p| p as u16)
    }
}

/// Which part of a node's ports seedcore chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Auto {
    ObjectManager,
    NodeManager,
    WorkerSlice(u32),
    Agents,
}

impl Auto {
    fn what(self) -> &'static str {
        match self {
            Auto::ObjectManager => "object manager",
            Auto::NodeManager => "node manager",
            Auto::WorkerSlice(_) => "worker ports",
            Auto::Agents => "agents and metrics",
        }
    }

    fn width(self) -> u32 {
        match self {
            Auto::WorkerSlice(w) => w,
            Auto::Agents => 4,
            _ => 1,
        }
    }

    /// Candidate first ports, lowest first.
    fn candidates(self, agents: PortRange) -> Box<dyn Iterator<Item = u32>> {
        match self {
            Auto::ObjectManager => {
                Box::new((u32::from(defaults::OBJECT_MANAGER_PORT)..).step_by(2))
            }
            Auto::NodeManager => Box::new((u32::from(defaults::NODE_MANAGER_PORT)..).step_by(2)),
            Auto::WorkerSlice(w) => Box::new((u32::from(WORKER_PORTS_BASE)..).step_by(w as usize)),
            Auto::Agents => Box::new(
                (u32::from(agents.first)..=u32::from(agents.last).saturating_sub(3)).step_by(4),
            ),
        }
    }

    /// The kept value of this part, if the recorded ports still fit it.
    fn kept(self, ports: &NodePorts, agents: PortRange) -> Option<u16> {
        match self {
            Auto::ObjectManager => Some(ports.object_manager),
            Auto::NodeManager => Some(ports.node_manager),
            Auto::WorkerSlice(w) => (u32::from(ports.max_worker) + 1
                == u32::from(ports.min_worker) + w)
                .then_some(ports.min_worker),
            Auto::Agents => {
                let a = ports.dashboard_agent_listen;
                let fits = u32::from(a) >= u32::from(agents.first)
                    && u32::from(a) + 3 <= u32::from(agents.last)
                    && ports.dashboard_agent_grpc == a + 1
                    && ports.runtime_env_agent == a + 2
                    && ports.metrics_export == a + 3;
                fits.then_some(a)
            }
        }
    }
}

/// A node before its seedcore-chosen ports are known.
struct Draft {
    spec: NodeSpec,
    /// Parts still to choose.
    auto: Vec<Auto>,
    /// The group's key prefix (`head` or `workers.G`), for error messages.
    prefix: String,
}

/// Lowers the configuration into nodes with a fresh identity and no kept
/// ports (for `validate`, and before the hosts are observed).
pub fn lower_fresh(config: &Config) -> Result<DesiredState, Vec<KeyError>> {
    let identity = crate::ownership::configured(config);
    lower(config, &identity, &KeptPorts::default())
}

/// Lowers the configuration into nodes, keeping the ports of nodes that run
/// (`kept`) where they are still free, or explains every port problem.
pub fn lower(
    config: &Config,
    identity: &ClusterIdentity,
    kept: &KeptPorts,
) -> Result<DesiredState, Vec<KeyError>> {
    let cluster = config.cluster.name.as_str();
    let agents = config.cluster.agent_ports;
    let mut errors = Vec::new();
    let mut ledger = Ledger::default();
    let mut drafts: Vec<Draft> = Vec::new();

    let mut env = BTreeMap::new();
    if !config.cluster.usage_stats {
        env.insert("RAY_USAGE_STATS_ENABLED".to_string(), "0".to_string());
    }
    let mut secret_env = Vec::new();
    for (k, v) in &config.cluster.env {
        match v {
            EnvValue::Plain(v) => {
                env.insert(k.clone(), v.clone());
            }
            EnvValue::Secret(_) => secret_env.push(k.clone()),
        }
    }
    // Set on every node either way: Ray's default changes between releases.
    match &config.cluster.auth {
        Auth::None => {
            env.insert("RAY_AUTH_MODE".to_string(), "disabled".to_string());
        }
        Auth::Token(_) => {
            env.insert("RAY_AUTH_MODE".to_string(), "token".to_string());
            env.insert(
                "RAY_AUTH_TOKEN_PATH".to_string(),
                crate::model::NODE_TOKEN_PATH.to_string(),
            );
        }
    }

    // The head: every port but its agents is written (or a documented default).
    let h = &config.head;
    let head_name = head_name(cluster);
    let head_ports = NodePorts {
        object_manager: h.object_manager_port,
        node_manager: h.node_manager_port,
        min_worker: h.worker_ports.first,
        max_worker: h.worker_ports.last,
        dashboard_agent_listen: 0,
        dashboard_agent_grpc: 0,
        runtime_env_agent: 0,
        metrics_export: 0,
        head: Some(HeadPorts {
            gcs: h.gcs_port,
            client_server: h.client_server_port,
            dashboard: h.dashboard_port,
            serve: h.serve.then_some(h.serve_port),
        }),
    };
    if h.worker_ports.len() < min_worker_ports(h.cpus) {
        errors.push(KeyError {
            key: "head.worker_ports".to_string(),
            message: format!(
                "`head.worker_ports` ({}) has {} ports; the head needs at least {}",
                h.worker_ports,
                h.worker_ports.len(),
                min_worker_ports(h.cpus)
            ),
            hint: Some(format!(
                "widen the range, e.g. `worker_ports = \"{}-{}\"`",
                h.worker_ports.first,
                (u32::from(h.worker_ports.first) + 4 * min_worker_ports(h.cpus)).min(65535)
            )),
        });
    }
    let head_keys: [(u16, u16, &str, &str); 7] = [
        (h.gcs_port, h.gcs_port, "GCS", "head.gcs_port"),
        (
            h.client_server_port,
            h.client_server_port,
            "Ray client server",
            "head.client_server_port",
        ),
        (
            h.dashboard_port,
            h.dashboard_port,
            "dashboard",
            "head.dashboard_port",
        ),
        (h.serve_port, h.serve_port, "Serve HTTP", "head.serve_port"),
        (
            h.object_manager_port,
            h.object_manager_port,
            "object manager",
            "head.object_manager_port",
        ),
        (
            h.node_manager_port,
            h.node_manager_port,
            "node manager",
            "head.node_manager_port",
        ),
        (
            h.worker_ports.first,
            h.worker_ports.last,
            "worker ports",
            "head.worker_ports",
        ),
    ];
    for (first, last, what, key) in head_keys {
        if what == "Serve HTTP" && !h.serve {
            continue;
        }
        ledger.claim(
            &h.host,
            Claim {
                first,
                last,
                node: head_name.clone(),
                what,
                key: Some(key.to_string()),
            },
        );
    }
    drafts.push(Draft {
        spec: NodeSpec {
            name: head_name.clone(),
            host: h.host.clone(),
            role: Role::Head,
            group: None,
            index: 0,
            image: h
                .image
                .clone()
                .unwrap_or_else(|| config.cluster.image.clone()),
            node_ip: node_ip(&h.host),
            cpus: h.cpus,
            shm_size_bytes: h.shm_size_bytes,
            ray_start: Vec::new(),
            command: Vec::new(),
            env: env.clone(),
            secret_env: secret_env.clone(),
            ports: head_ports,
            network_mode: "host".to_string(),
            restart_policy: "unless-stopped".to_string(),
            init: true,
            gpus: None,
            memory_bytes: None,
        },
        auto: vec![Auto::Agents],
        prefix: "head".to_string(),
    });

    // Workers: groups by name, hosts in declared order, index 1..=count.
    for (gname, g) in &config.workers {
        let p = format!("workers.{gname}");
        let Some(slice) = slice_width(&p, g, &mut errors) else {
            continue;
        };
        for host in &g.hosts {
            for index in 1..=g.count {
                let name = worker_name(cluster, gname, host, index);
                let step = index - 1;
                let mut auto = Vec::new();
                let mut ports = NodePorts {
                    object_manager: 0,
                    node_manager: 0,
                    min_worker: 0,
                    max_worker: 0,
                    dashboard_agent_listen: 0,
                    dashboard_agent_grpc: 0,
                    runtime_env_agent: 0,
                    metrics_export: 0,
                    head: None,
                };
                for (written, part, key, what) in [
                    (
                        g.object_manager_port,
                        Auto::ObjectManager,
                        "object_manager_port",
                        "object manager",
                    ),
                    (
                        g.node_manager_port,
                        Auto::NodeManager,
                        "node_manager_port",
                        "node manager",
                    ),
                ] {
                    let Some(base) = written else {
                        auto.push(part);
                        continue;
                    };
                    let port = u32::from(base) + 2 * step;
                    let key = format!("{p}.{key}");
                    if port > 65535 {
                        if !errors.iter().any(|e| e.key == key) {
                            errors.push(KeyError {
                                message: format!(
                                    "`{key}` is {base}, and node {index} of the group on `{host}` would need port {port} (further nodes on a host take +2, +4...), past 65535"
                                ),
                                hint: Some(format!(
                                    "choose a lower port, e.g. `{} = {}`",
                                    key.rsplit('.').next().unwrap_or(&key),
                                    65535u32.saturating_sub(2 * step + 100).max(1024)
                                )),
                                key,
                            });
                        }
                        continue;
                    }
                    let port = port as u16;
                    match part {
                        Auto::ObjectManager => ports.object_manager = port,
                        _ => ports.node_manager = port,
                    }
                    ledger.claim(
                        host,
                        Claim {
                            first: port,
                            last: port,
                            node: name.clone(),
                            what,
                            key: Some(key),
                        },
                    );
                }
                match g.worker_ports {
                    Some(range) => {
                        let first = u32::from(range.first) + step * slice;
                        let last = first + slice - 1;
                        ports.min_worker = first as u16;
                        ports.max_worker = last.min(65535) as u16;
                        ledger.claim(
                            host,
                            Claim {
                                first: ports.min_worker,
                                last: ports.max_worker,
                                node: name.clone(),
                                what: "worker ports",
                                key: Some(format!("{p}.worker_ports")),
                            },
                        );
                    }
                    None => auto.push(Auto::WorkerSlice(slice)),
                }
                auto.push(Auto::Agents);
                drafts.push(Draft {
                    spec: NodeSpec {
                        name,
                        host: host.clone(),
                        role: Role::Worker,
                        group: Some(gname.clone()),
                        index,
                        image: g
                            .image
                            .clone()
                            .unwrap_or_else(|| config.cluster.image.clone()),
                        node_ip: node_ip(host),
                        cpus: g.cpus,
                        shm_size_bytes: g.shm_size_bytes,
                        ray_start: Vec::new(),
                        command: Vec::new(),
                        env: env.clone(),
                        secret_env: secret_env.clone(),
                        ports,
                        network_mode: "host".to_string(),
                        restart_policy: "unless-stopped".to_string(),
                        init: true,
                        gpus: g.gpus.clone(),
                        memory_bytes: g.memory_bytes,
                    },
                    auto,
                    prefix: p.clone(),
                });
            }
        }
    }

    // Written ports claimed once per host.
    report_overlaps(&ledger, config, &mut errors);

    let mut no_room_seen: Vec<((String, Auto), (KeyError, usize))> = Vec::new();
    let mut per_host: BTreeMap<HostName, u32> = BTreeMap::new();
    for d in &drafts {
        *per_host.entry(d.spec.host.clone()).or_default() += 1;
    }
    // Ports seedcore chooses: kept ones first, then new ones, topology order.
    for keep in [true, false] {
        for d in &mut drafts {
            let host = d.spec.host.clone();
            let recorded = kept.nodes.get(&(host.clone(), d.spec.name.clone()));
            let busy = kept.busy.get(&host);
            let mut still = Vec::new();
            for part in std::mem::take(&mut d.auto) {
                let width = part.width();
                let chosen = if keep {
                    recorded
                        .and_then(|r| part.kept(r, agents))
                        .filter(|p| ledger.is_free(&host, u32::from(*p), u32::from(*p) + width - 1))
                } else {
                    // New ports: free of every claim, and of whatever listens.
                    let candidates = part.candidates(agents).filter(|p| {
                        busy.is_none_or(|b| {
                            b.range(*p as u16..=(*p + width - 1).min(65535) as u16)
                                .next()
                                .is_none()
                        })
                    });
                    ledger.first_free(&host, candidates, width)
                };
                let Some(first) = chosen else {
                    if keep {
                        still.push(part);
                    } else {
                        let nodes = per_host.get(&host).copied().unwrap_or(1);
                        let blocker = ledger.hosts.get(&host).and_then(|claims| {
                            let range = config.cluster.agent_ports;
                            claims
                                .iter()
                                .find(|c| {
                                    c.key.is_some()
                                        && part == Auto::Agents
                                        && c.first <= range.last
                                        && c.last >= range.first
                                })
                                .and_then(|c| c.key.clone())
                        });
                        // The same shortage on many hosts is one error.
                        let e = no_room(part, &d.spec, &d.prefix, config, nodes, blocker);
                        match no_room_seen
                            .iter_mut()
                            .find(|(k, _)| *k == (e.key.clone(), part))
                        {
                            Some((_, (_, more))) => *more += 1,
                            None => no_room_seen.push(((e.key.clone(), part), (e, 0))),
                        }
                    }
                    continue;
                };
                set_part(&mut d.spec.ports, part, first);
                ledger.claim(
                    &host,
                    Claim {
                        first,
                        last: (u32::from(first) + width - 1) as u16,
                        node: d.spec.name.clone(),
                        what: part.what(),
                        key: None,
                    },
                );
            }
            d.auto = still;
        }
    }

    for (_, (mut e, more)) in no_room_seen {
        if more > 0 {
            e.message
                .push_str(&format!(" (and {more} more node(s) like it)"));
        }
        errors.push(e);
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let gcs_address = format!("{}:{}", node_ip(&h.host), h.gcs_port);
    let nodes = drafts
        .into_iter()
        .map(|d| {
            let mut spec = d.spec;
            match spec.role {
                Role::Head => {
                    spec.ray_start = head_ray_start(config, &spec.ports);
                    spec.command = head_command(config, &spec.ray_start, !secret_env.is_empty());
                }
                Role::Worker => {
                    spec.ray_start = worker_ray_start(
                        &gcs_address,
                        &spec.name,
                        &spec.host,
                        spec.cpus,
                        &spec.ports,
                    );
                    if let Some(g) = spec.group.as_ref().and_then(|g| config.workers.get(g)) {
                        ray_resources(&mut spec.ray_start, g);
                    }
                    let mut blocking = spec.ray_start.clone();
                    blocking.push("--block".to_string());
                    spec.command = if secret_env.is_empty() {
                        blocking
                    } else {
                        node_script(true, "exec \"$@\"", &[], &blocking)
                    };
                }
            }
            spec
        })
        .collect::<Vec<NodeSpec>>();
    let pushed = nodes
        .iter()
        .filter(|n| image_source_of(config, n) == crate::config::ImageSource::Push)
        .map(|n| n.name.clone())
        .collect();
    Ok(DesiredState {
        cluster: identity.clone(),
        nodes,
        pushed,
    })
}

/// Where a node's host gets its image: its group's (or the head's)
/// `image_source`, else the cluster's.
fn image_source_of(config: &Config, node: &NodeSpec) -> crate::config::ImageSource {
    let own = match &node.group {
        None => config.head.image_source,
        Some(g) => config.workers.get(g).and_then(|w| w.image_source),
    };
    own.unwrap_or(config.cluster.image_source)
}

/// Worker ports per node of a group, or `None` after reporting why not.
fn slice_width(p: &str, g: &crate::config::WorkerGroup, errors: &mut Vec<KeyError>) -> Option<u32> {
    if g.count == 0 {
        return Some(1);
    }
    let min = min_worker_ports(g.cpus);
    let Some(range) = g.worker_ports else {
        let slice = g
            .worker_ports_per_node
            .unwrap_or_else(|| default_slice(g.cpus));
        if slice < min {
            errors.push(KeyError {
                key: format!("{p}.worker_ports_per_node"),
                message: format!(
                    "`{p}.worker_ports_per_node` is {slice}; a worker with {} CPU(s) needs at least {min}",
                    g.cpus
                ),
                hint: Some(format!("set `worker_ports_per_node = {min}` or more")),
            });
            return None;
        }
        return Some(slice);
    };
    let slice = g.worker_ports_per_node.unwrap_or(range.len() / g.count);
    if g.worker_ports_per_node.is_some()
        && u64::from(slice) * u64::from(g.count) > u64::from(range.len())
    {
        errors.push(KeyError {
            key: format!("{p}.worker_ports_per_node"),
            message: format!(
                "`{p}` needs {} worker ports per host ({} nodes x {slice}), but `worker_ports` ({range}) has {}",
                u64::from(slice) * u64::from(g.count),
                g.count,
                range.len()
            ),
            hint: Some(format!(
                "widen the range, e.g. `worker_ports = \"{}-{}\"`, or lower `count`",
                range.first,
                (u64::from(range.first) + u64::from(slice) * u64::from(g.count) - 1).min(65535)
            )),
        });
        return None;
    }
    if slice < min {
        let need = u64::from(min) * u64::from(g.count);
        let last = u64::from(range.first) + need - 1;
        let workers = if g.count == 1 {
            "its worker".to_string()
        } else {
            format!("each of its {} workers per host", g.count)
        };
        errors.push(if g.worker_ports_per_node.is_some() {
            KeyError {
                key: format!("{p}.worker_ports_per_node"),
                message: format!(
                    "`{p}.worker_ports_per_node` is {slice}; a worker with {} CPU(s) needs at least {min}",
                    g.cpus
                ),
                hint: Some(format!("set `worker_ports_per_node = {min}` or more")),
            }
        } else {
            KeyError {
                key: format!("{p}.worker_ports"),
                message: format!(
                    "`{p}.worker_ports` ({range}) gives {workers} {slice} ports; each needs at least {min}"
                ),
                hint: Some(if last <= 65535 {
                    format!(
                        "widen the range to {need} ports, e.g. `worker_ports = \"{}-{last}\"`, or lower `count`",
                        range.first
                    )
                } else {
                    format!("use a range of {need} ports below 65536, or lower `count`")
                }),
            }
        });
        return None;
    }
    Some(slice)
}

fn set_part(ports: &mut NodePorts, part: Auto, first: u16) {
    match part {
        Auto::ObjectManager => ports.object_manager = first,
        Auto::NodeManager => ports.node_manager = first,
        Auto::WorkerSlice(w) => {
            ports.min_worker = first;
            ports.max_worker = (u32::from(first) + w - 1) as u16;
        }
        Auto::Agents => {
            ports.dashboard_agent_listen = first;
            ports.dashboard_agent_grpc = first + 1;
            ports.runtime_env_agent = first + 2;
            ports.metrics_export = first + 3;
        }
    }
}

/// No free candidate left for a part seedcore chooses.
fn no_room(
    part: Auto,
    spec: &NodeSpec,
    prefix: &str,
    config: &Config,
    nodes: u32,
    blocker: Option<String>,
) -> KeyError {
    let host = &spec.host;
    match part {
        Auto::Agents if blocker.is_some() => {
            let range = config.cluster.agent_ports;
            let blocker = blocker.unwrap_or_default();
            KeyError {
                key: blocker.clone(),
                message: format!(
                    "`{blocker}` overlaps `cluster.agent_ports` ({range}) on `{host}`, so `{}` has no free block of 4 agent ports there",
                    spec.name
                ),
                hint: Some(format!(
                    "keep `{blocker}` clear of {range}, or move `cluster.agent_ports` to a free range"
                )),
            }
        }
        Auto::Agents => {
            let range = config.cluster.agent_ports;
            KeyError {
                key: "cluster.agent_ports".to_string(),
                message: format!(
                    "`cluster.agent_ports` ({range}) has room for {} nodes per host, and no free block of 4 is left for `{}` on `{host}`",
                    range.len() / 4,
                    spec.name
                ),
                hint: Some({
                    let need = 4 * nodes;
                    let first = u32::from(range.first).min(65536 - need);
                    format!(
                        "`{host}` runs {nodes} node(s): widen it to at least {need} ports, e.g. `agent_ports = \"{first}-{}\"`",
                        first + need - 1
                    )
                }),
            }
        }
        other => {
            let key = match other {
                Auto::ObjectManager => "object_manager_port",
                Auto::NodeManager => "node_manager_port",
                _ => "worker_ports",
            };
            KeyError {
                key: format!("{prefix}.{key}"),
                message: format!(
                    "no free {} port is left on `{host}` for `{}`",
                    other.what(),
                    spec.name
                ),
                hint: Some(format!(
                    "write `{prefix}.{key}` with free ports, or run fewer nodes on `{host}`"
                )),
            }
        }
    }
}

/// Reports each pair of written claims that share a port on a host (once per
/// pair of keys), with a free alternative for the second.
fn report_overlaps(ledger: &Ledger, config: &Config, errors: &mut Vec<KeyError>) {
    for (host, claims) in &ledger.hosts {
        let mut reported: Vec<(String, String)> = Vec::new();
        for (i, b) in claims.iter().enumerate() {
            for a in &claims[..i] {
                let overlap = !(b.last < a.first || b.first > a.last);
                let (Some(ka), Some(kb)) = (&a.key, &b.key) else {
                    continue;
                };
                if !overlap || reported.contains(&(ka.clone(), kb.clone())) {
                    continue;
                }
                reported.push((ka.clone(), kb.clone()));
                let port = a.first.max(b.first);
                let width = key_width(kb, config).unwrap_or(u32::from(b.last - b.first) + 1);
                let stride_nodes = if b.what.ends_with("manager") {
                    group_of(kb)
                        .and_then(|g| config.workers.get(g))
                        .map_or(1, |g| g.count.max(1))
                } else {
                    1
                };
                let free = free_alternative(claims, kb, b.first, width, stride_nodes);
                errors.push(KeyError {
                    key: kb.clone(),
                    message: format!(
                        "port {port} on `{host}` is claimed twice: by `{}` ({}, `{ka}`) and by `{}` ({}, `{kb}`)",
                        a.node, a.what, b.node, b.what
                    ),
                    hint: Some(match free {
                        Some(f) if width > 1 => format!(
                            "ports {f}-{} are free on `{host}`: set `{kb}` to a free range such as `\"{f}-{}\"`",
                            u32::from(f) + width - 1,
                            u32::from(f) + width - 1
                        ),
                        Some(f) => format!(
                            "port {f} is free on `{host}`: set `{kb}` to a free port such as {f}"
                        ),
                        None => format!("move `{kb}` to a free port on `{host}`"),
                    }),
                });
            }
        }
    }
}

/// The width of a written range key.
fn key_width(key: &str, config: &Config) -> Option<u32> {
    if key == "head.worker_ports" {
        return Some(config.head.worker_ports.len());
    }
    let range = group_of(key)
        .and_then(|g| config.workers.get(g))
        .and_then(|g| g.worker_ports)?;
    key.ends_with(".worker_ports").then(|| range.len())
}

fn group_of(key: &str) -> Option<&str> {
    key.strip_prefix("workers.")
        .and_then(|k| k.split('.').next())
}

/// A first port for `key` at or after `from` whose claims (one node, or
/// `nodes` nodes 2 apart for manager ports) touch no other key's claims.
fn free_alternative(claims: &[Claim], key: &str, from: u16, width: u32, nodes: u32) -> Option<u16> {
    let others: Vec<&Claim> = claims
        .iter()
        .filter(|c| c.key.as_deref() != Some(key))
        .collect();
    let free = |first: u32, last: u32| {
        last <= 65535
            && others
                .iter()
                .all(|c| last < u32::from(c.first) || first > u32::from(c.last))
    };
    let (stride, count) = if width == 1 { (2, nodes) } else { (width, 1) };
    let fits =
        |base: u32| (0..count).all(|i| free(base + stride * i, base + stride * i + width - 1));
    // Past the other claims around `from`, then from 10000, then 1024.
    (u32::from(from)..=65535)
        .chain(10000..u32::from(from).min(65535))
        .chain(1024..10000)
        .find(|b| fits(*b))
        .map(|b| b as u16)
}

/// The address Ray advertises for a node on `host`.
fn node_ip(host: &HostName) -> String {
    if host.is_local() {
        "127.0.0.1".to_string()
    } else {
        host.0.clone()
    }
}

fn common_ports(args: &mut Vec<String>, ports: &NodePorts) {
    args.push(format!("--object-manager-port={}", ports.object_manager));
    args.push(format!("--node-manager-port={}", ports.node_manager));
    args.push(format!("--min-worker-port={}", ports.min_worker));
    args.push(format!("--max-worker-port={}", ports.max_worker));
    args.push(format!(
        "--dashboard-agent-listen-port={}",
        ports.dashboard_agent_listen
    ));
    args.push(format!(
        "--dashboard-agent-grpc-port={}",
        ports.dashboard_agent_grpc
    ));
    args.push(format!(
        "--runtime-env-agent-port={}",
        ports.runtime_env_agent
    ));
    args.push(format!("--metrics-export-port={}", ports.metrics_export));
}

fn head_ray_start(config: &Config, ports: &NodePorts) -> Vec<String> {
    let h = &config.head;
    let mut args: Vec<String> = vec![
        "ray".into(),
        "start".into(),
        "--head".into(),
        format!("--node-ip-address={}", node_ip(&h.host)),
        format!("--node-name={}", head_name(&config.cluster.name)),
        format!("--port={}", h.gcs_port),
        format!("--ray-client-server-port={}", h.client_server_port),
        "--dashboard-host=0.0.0.0".into(),
        format!("--dashboard-port={}", h.dashboard_port),
        format!("--num-cpus={}", h.cpus),
    ];
    common_ports(&mut args, ports);
    args
}

fn worker_ray_start(
    gcs: &str,
    name: &NodeName,
    host: &HostName,
    cpus: u32,
    ports: &NodePorts,
) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "ray".into(),
        "start".into(),
        format!("--address={gcs}"),
        format!("--node-ip-address={}", node_ip(host)),
        format!("--node-name={name}"),
        format!("--num-cpus={cpus}"),
    ];
    common_ports(&mut args, ports);
    args
}

/// A group's GPUs, custom resources, labels and memory as `ray start` flags.
fn ray_resources(args: &mut Vec<String>, g: &crate::config::WorkerGroup) {
    match &g.gpus {
        Some(crate::config::Gpus::Count(n)) => args.push(format!("--num-gpus={n}")),
        Some(crate::config::Gpus::Devices(ids)) => args.push(format!("--num-gpus={}", ids.len())),
        // Ray counts the GPUs the container sees.
        Some(crate::config::Gpus::All) | None => {}
    }
    if !g.resources.is_empty() {
        // Validated names and finite amounts: JSON as Ray reads it.
        let json = serde_json::to_string(&g.resources).expect("resources serialize");
        args.push(format!("--resources={json}"));
    }
    if !g.labels.is_empty() {
        let pairs: Vec<String> = g.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        args.push(format!("--labels={}", pairs.join(",")));
    }
    if let Some(m) = g.memory_bytes {
        args.push(format!("--memory={m}"));
    }
    if let Some(m) = g.object_store_memory_bytes {
        args.push(format!("--object-store-memory={m}"));
    }
}

/// The head's container command. With Serve on, a small supervisor: Ray runs
/// with `--block` in the background, Serve's HTTP proxy is started once the
/// GCS answers, and the container lives exactly as long as Ray does.
fn head_command(config: &Config, ray_start: &[String], secrets: bool) -> Vec<String> {
    let mut blocking: Vec<String> = ray_start.to_vec();
    blocking.push("--block".to_string());
    if !config.head.serve {
        return if secrets {
            node_script(secrets, "exec \"$@\"", &[], &blocking)
        } else {
            blocking
        };
    }
    let params = [
        node_ip(&config.head.host),
        config.head.gcs_port.to_string(),
        config.head.serve_port.to_string(),
    ];
    node_script(secrets, SERVE_SUPERVISOR, &params, &blocking)
}

/// Exports the node's secret environment from its file (NUL-separated
/// `KEY=value` records; keys were validated), without evaluating anything.
const LOAD_SECRETS: &str = "if [ -f /run/seedcore/secrets ]; then while IFS= read -r -d '' kv; do export \"$kv\"; done < /run/seedcore/secrets; fi; ";

/// Runs `ray start --block` (the arguments) in the background, starts Serve
/// once the GCS answers and lives as long as Ray does. Its parameters come
/// as arguments, never pasted into the script.
const SERVE_SUPERVISOR: &str = "gcs_host=$1 gcs_port=$2 serve_port=$3; shift 3; \
     \"$@\" & ray_pid=$!; \
     until (exec 3<>\"/dev/tcp/$gcs_host/$gcs_port\") 2>/dev/null; do kill -0 $ray_pid 2>/dev/null || exit 1; sleep 0.5; done; \
     n=0; until serve start --address=\"$gcs_host:$gcs_port\" --http-host 0.0.0.0 --http-port \"$serve_port\"; do \
     kill -0 $ray_pid 2>/dev/null || exit 1; \
     n=$((n+1)); if [ $n -ge 5 ]; then kill $ray_pid; exit 1; fi; sleep 2; done; \
     wait $ray_pid";

/// `bash -c SCRIPT seedcore PARAMS... COMMAND...`: a fixed script (the secret
/// loader when asked, then `body`); every value comes as an argument, never
/// pasted into the script.
fn node_script(secrets: bool, body: &str, params: &[String], command: &[String]) -> Vec<String> {
    let loader = if secrets { LOAD_SECRETS } else { "" };
    let mut argv = vec![
        "bash".to_string(),
        "-c".to_string(),
        format!("{loader}{body}"),
        "seedcore".to_string(),
    ];
    argv.extend(params.iter().cloned());
    argv.extend(command.iter().cloned());
    argv
}

/// A port range a host must accept from the other cluster hosts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Opening {
    pub first: u16,
    pub last: u16,
    pub what: String,
}

/// What one host's firewall must open.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostFirewall {
    pub host: HostName,
    pub openings: Vec<Opening>,
}

/// Ports each host must accept from the other cluster hosts, for the plan's
/// firewall section.
pub fn firewall(desired: &DesiredState) -> Vec<HostFirewall> {
    let mut out = Vec::new();
    for host in desired.hosts() {
        let mut ranges: Vec<Opening> = Vec::new();
        let mut open = |first: u16, last: u16, what: &str| {
            ranges.push(Opening {
                first,
                last,
                what: what.to_string(),
            })
        };
        for node in desired.nodes.iter().filter(|n| n.host == host) {
            let p = &node.ports;
            if let Some(h) = &p.head {
                open(h.gcs, h.gcs, "GCS, workers join here");
                open(h.client_server, h.client_server, "Ray client");
                open(h.dashboard, h.dashboard, "dashboard");
                if let Some(s) = h.serve {
                    open(s, s, "Serve HTTP");
                }
            }
            open(p.object_manager, p.object_manager, "object/node manager");
            open(p.node_manager, p.node_manager, "object/node manager");
            open(p.min_worker, p.max_worker, "worker processes");
            for port in [
                p.dashboard_agent_listen,
                p.dashboard_agent_grpc,
                p.runtime_env_agent,
                p.metrics_export,
            ] {
                open(port, port, "agents and metrics");
            }
        }
        ranges.sort();
        // Merge adjacent ranges with the same purpose.
        let mut merged: Vec<Opening> = Vec::new();
        for r in ranges {
            match merged.last_mut() {
                Some(last)
                    if last.what == r.what && u32::from(last.last) + 1 >= u32::from(r.first) =>
                {
                    last.last = last.last.max(r.last)
                }
                _ => merged.push(r),
            }
        }
        out.push(HostFirewall {
            host,
            openings: merged,
        });
    }
    out
}
