//! Lowering a validated [`Config`] into the nodes it describes: the head,
//! workers on the head's host and workers on other hosts, each with every port
//! it binds pinned.
//!
//! Port rules (documented in the README):
//! - every node uses host networking, so nodes on one host share its ports;
//! - the nodes of a host are numbered in topology order (head first, then
//!   groups by name, then ordinal): node `i` takes `object_manager_port + 2i`
//!   and `node_manager_port + 2i`, and four agent/metrics ports
//!   `agent_ports.first + 4i ..= +3`;
//! - a group's `worker_ports` range is split into equal slices between the
//!   group's nodes on one host;
//! - any port claimed twice on one host is an error naming both claimants.

use crate::config::{Config, KeyError, PortRange};
use crate::model::{DesiredState, HeadPorts, HostName, NodeName, NodePorts, NodeSpec, Role};
use std::collections::BTreeMap;

/// Fewest worker ports a node may get: Ray needs one per worker process.
pub fn min_worker_ports(cpus: u32) -> u32 {
    (2 * cpus).max(4)
}

/// Container name of the head.
pub fn head_name(cluster: &str) -> NodeName {
    NodeName(format!("{cluster}-ray-head"))
}

/// Container name of worker `n` (1-based) of a group.
pub fn worker_name(cluster: &str, group: &str, n: u32) -> NodeName {
    NodeName(format!("{cluster}-ray-worker-{group}-{n}"))
}

/// One port claim, for overlap checks and firewall listings.
#[derive(Debug, Clone)]
struct Claim {
    node: NodeName,
    what: String,
    key: String,
}

/// Lowers the configuration into nodes, or explains every port problem.
pub fn lower(config: &Config) -> Result<DesiredState, Vec<KeyError>> {
    let cluster = &config.cluster.name;
    let mut errors = Vec::new();
    let mut nodes = Vec::new();
    // Next free node slot on each host.
    let mut slots: BTreeMap<HostName, u32> = BTreeMap::new();
    let mut claims: BTreeMap<HostName, BTreeMap<u16, Vec<Claim>>> = BTreeMap::new();

    let mut env = BTreeMap::new();
    if !config.cluster.usage_stats {
        env.insert("RAY_USAGE_STATS_ENABLED".to_string(), "0".to_string());
    }
    for (k, v) in &config.cluster.env {
        env.insert(k.clone(), v.clone());
    }

    // The head.
    let h = &config.head;
    let head_slot = next_slot(&mut slots, &h.host);
    let agent = agent_ports(config.cluster.agent_ports, head_slot);
    let head_ports = NodePorts {
        object_manager: offset(h.object_manager_port, 2 * head_slot),
        node_manager: offset(h.node_manager_port, 2 * head_slot),
        min_worker: h.worker_ports.first,
        max_worker: h.worker_ports.last,
        dashboard_agent_listen: agent[0],
        dashboard_agent_grpc: agent[1],
        runtime_env_agent: agent[2],
        metrics_export: agent[3],
        head: Some(HeadPorts {
            gcs: h.gcs_port,
            client_server: h.client_server_port,
            dashboard: h.dashboard_port,
            serve: h.serve.then_some(h.serve_port),
        }),
    };
    for (key, base) in [
        ("head.object_manager_port", h.object_manager_port),
        ("head.node_manager_port", h.node_manager_port),
    ] {
        overflow(&mut errors, key, base, 2 * head_slot, &h.host);
    }
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
                u32::from(h.worker_ports.first) + 4 * min_worker_ports(h.cpus)
            )),
        });
    }
    let head_name = head_name(cluster);
    let head_keys = [
        ("head.gcs_port", "GCS"),
        ("head.client_server_port", "Ray client server"),
        ("head.dashboard_port", "dashboard"),
        ("head.serve_port", "Serve HTTP"),
        ("head.object_manager_port", "object manager"),
        ("head.node_manager_port", "node manager"),
        ("head.worker_ports", "worker ports"),
    ];
    claim_all(&mut claims, &h.host, &head_name, &head_ports, |what| {
        head_keys
            .iter()
            .find(|(_, w)| *w == what)
            .map(|(k, _)| k.to_string())
            .unwrap_or_else(|| "cluster.agent_ports".to_string())
    });
    let head_ray = head_ray_start(config, &head_ports);
    nodes.push(NodeSpec {
        name: head_name.clone(),
        host: h.host.clone(),
        role: Role::Head,
        group: None,
        ordinal: 0,
        image: h
            .image
            .clone()
            .unwrap_or_else(|| config.cluster.image.clone()),
        node_ip: node_ip(&h.host),
        cpus: h.cpus,
        shm_size_bytes: h.shm_size_bytes,
        command: head_command(config, &head_ray),
        ray_start: head_ray,
        env: env.clone(),
        ports: head_ports,
        network_mode: "host".to_string(),
        restart_policy: "unless-stopped".to_string(),
        init: true,
    });

    // Workers: groups by name, hosts in declared order.
    let gcs_address = format!("{}:{}", node_ip(&h.host), h.gcs_port);
    for (gname, g) in &config.workers {
        let p = format!("workers.{gname}");
        let mut n = 0;
        let slice = match g.worker_ports_per_node {
            Some(k) => k,
            None if g.count == 0 => 0,
            None => g.worker_ports.len() / g.count,
        };
        if g.count > 0
            && g.worker_ports_per_node.is_some()
            && slice * g.count > g.worker_ports.len()
        {
            errors.push(KeyError {
                key: format!("{p}.worker_ports_per_node"),
                message: format!(
                    "`{p}` needs {} worker ports per host ({} nodes x {slice}), but `worker_ports` ({}) has {}",
                    slice * g.count,
                    g.count,
                    g.worker_ports,
                    g.worker_ports.len()
                ),
                hint: Some(format!(
                    "widen the range, e.g. `worker_ports = \"{}-{}\"`, or lower `count`",
                    g.worker_ports.first,
                    (u32::from(g.worker_ports.first) + slice * g.count - 1).min(65535)
                )),
            });
            continue;
        }
        if g.count > 0 && slice < min_worker_ports(g.cpus) {
            let min = min_worker_ports(g.cpus);
            let need = min * g.count;
            let last = u32::from(g.worker_ports.first) + need - 1;
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
                        "`{p}.worker_ports` ({}) gives {workers} {slice} ports; each needs at least {min}",
                        g.worker_ports
                    ),
                    hint: Some(if last <= 65535 {
                        format!(
                            "widen the range to {need} ports, e.g. `worker_ports = \"{}-{last}\"`, or lower `count`",
                            g.worker_ports.first
                        )
                    } else {
                        format!("use a range of {need} ports below 65536, or lower `count`")
                    }),
                }
            });
            continue;
        }
        // Numbered round-robin over the hosts, so that changing `count` adds or
        // removes the highest-numbered nodes and leaves the others alone.
        for i in 0..g.count {
            for host in &g.hosts {
                n += 1;
                let slot = next_slot(&mut slots, host);
                for (key, base) in [
                    ("object_manager_port", g.object_manager_port),
                    ("node_manager_port", g.node_manager_port),
                ] {
                    overflow(&mut errors, &format!("{p}.{key}"), base, 2 * slot, host);
                }
                let agent = agent_ports(config.cluster.agent_ports, slot);
                let first = u32::from(g.worker_ports.first) + i * slice;
                let ports = NodePorts {
                    object_manager: offset(g.object_manager_port, 2 * slot),
                    node_manager: offset(g.node_manager_port, 2 * slot),
                    min_worker: first as u16,
                    max_worker: (first + slice - 1) as u16,
                    dashboard_agent_listen: agent[0],
                    dashboard_agent_grpc: agent[1],
                    runtime_env_agent: agent[2],
                    metrics_export: agent[3],
                    head: None,
                };
                let name = worker_name(cluster, gname, n);
                claim_all(&mut claims, host, &name, &ports, |what| match what {
                    "object manager" => format!("{p}.object_manager_port"),
                    "node manager" => format!("{p}.node_manager_port"),
                    "worker ports" => format!("{p}.worker_ports"),
                    _ => "cluster.agent_ports".to_string(),
                });
                let ray_start = worker_ray_start(&gcs_address, &name, host, g.cpus, &ports);
                let mut command = ray_start.clone();
                command.push("--block".to_string());
                nodes.push(NodeSpec {
                    name,
                    host: host.clone(),
                    role: Role::Worker,
                    group: Some(gname.clone()),
                    ordinal: n,
                    image: g
                        .image
                        .clone()
                        .unwrap_or_else(|| config.cluster.image.clone()),
                    node_ip: node_ip(host),
                    cpus: g.cpus,
                    shm_size_bytes: g.shm_size_bytes,
                    ray_start,
                    command,
                    env: env.clone(),
                    ports,
                    network_mode: "host".to_string(),
                    restart_policy: "unless-stopped".to_string(),
                    init: true,
                });
            }
        }
    }

    // Agent range large enough for every node on each host.
    for (host, used) in &slots {
        let need = 4 * used;
        if need > config.cluster.agent_ports.len() {
            errors.push(KeyError {
                key: "cluster.agent_ports".to_string(),
                message: format!(
                    "`cluster.agent_ports` ({}) has room for {} nodes per host, but `{host}` runs {used}",
                    config.cluster.agent_ports,
                    config.cluster.agent_ports.len() / 4
                ),
                hint: Some({
                    let mut first = u32::from(config.cluster.agent_ports.first);
                    if first + need - 1 > 65535 {
                        first = 65536 - need;
                    }
                    format!(
                        "widen it to at least {need} ports, e.g. `agent_ports = \"{first}-{}\"`",
                        first + need - 1
                    )
                }),
            });
        }
    }

    // Every port claimed once per host.
    for (host, ports) in &claims {
        let mut reported: Vec<(String, String)> = Vec::new();
        for (port, who) in ports {
            if who.len() < 2 {
                continue;
            }
            let (a, b) = (&who[0], &who[1]);
            let pair = (a.key.clone(), b.key.clone());
            if reported.contains(&pair) {
                continue;
            }
            reported.push(pair);
            let width = claim_width(b, config);
            let free = if b.what.ends_with("manager") {
                // Node i on the host takes base + 2i: every one must be free.
                let nodes = slots.get(host).copied().unwrap_or(1);
                find_free_stride(ports, nodes, *port).map(|p| PortRange { first: p, last: p })
            } else {
                find_free(ports, width, *port)
            };
            errors.push(KeyError {
                key: b.key.clone(),
                message: format!(
                    "port {port} on `{host}` is claimed twice: by `{}` ({}, `{}`) and by `{}` ({}, `{}`)",
                    a.node, a.what, a.key, b.node, b.what, b.key
                ),
                hint: Some(match free {
                    Some(r) if width > 1 => format!(
                        "ports {r} are free on `{host}`: set `{}` to a free range such as `\"{r}\"`",
                        b.key
                    ),
                    Some(r) => format!(
                        "port {} is free on `{host}`: set `{}` to a free port such as {}",
                        r.first, b.key, r.first
                    ),
                    None => format!("move `{}` to a free port on `{host}`", b.key),
                }),
            });
        }
    }

    if errors.is_empty() {
        Ok(DesiredState {
            cluster: cluster.clone(),
            nodes,
        })
    } else {
        Err(errors)
    }
}

fn next_slot(slots: &mut BTreeMap<HostName, u32>, host: &HostName) -> u32 {
    let s = slots.entry(host.clone()).or_insert(0);
    let slot = *s;
    *s += 1;
    slot
}

/// Reports a node's port that would run past 65535 (once per key).
fn overflow(errors: &mut Vec<KeyError>, key: &str, base: u16, by: u32, host: &HostName) {
    let port = u32::from(base) + by;
    if port > 65535 && !errors.iter().any(|e| e.key == key) {
        errors.push(KeyError {
            key: key.to_string(),
            message: format!(
                "`{key}` is {base}, and a node on `{host}` would need port {port} (nodes on a host take base, base+2, base+4...), past 65535"
            ),
            hint: Some(format!("choose a lower base, e.g. `{} = {}`", key.rsplit('.').next().unwrap_or(key), 65535u32.saturating_sub(by + 100).max(1024))),
        });
    }
}

fn offset(base: u16, by: u32) -> u16 {
    (u32::from(base) + by).min(65535) as u16
}

fn agent_ports(range: PortRange, slot: u32) -> [u16; 4] {
    let base = u32::from(range.first) + 4 * slot;
    [0, 1, 2, 3].map(|i| (base + i).min(65535) as u16)
}

fn claim_all(
    claims: &mut BTreeMap<HostName, BTreeMap<u16, Vec<Claim>>>,
    host: &HostName,
    node: &NodeName,
    ports: &NodePorts,
    key_of: impl Fn(&str) -> String,
) {
    let host_claims = claims.entry(host.clone()).or_default();
    for (port, what) in ports.all() {
        let list = host_claims.entry(port).or_default();
        // A range is one claim, not one per port, for the messages.
        if list.iter().any(|c| c.node == *node && c.what == what) {
            continue;
        }
        list.push(Claim {
            node: node.clone(),
            key: key_of(&what),
            what,
        });
    }
}

fn claim_width(claim: &Claim, config: &Config) -> u32 {
    if claim.what == "worker ports" {
        if claim.key == "head.worker_ports" {
            return config.head.worker_ports.len();
        }
        let group = claim
            .key
            .strip_prefix("workers.")
            .and_then(|k| k.strip_suffix(".worker_ports"));
        if let Some(g) = group.and_then(|g| config.workers.get(g)) {
            return g.worker_ports.len();
        }
    }
    if claim.key == "cluster.agent_ports" {
        return config.cluster.agent_ports.len();
    }
    1
}

/// First base at or after `from` with `base + 2i` unclaimed for every node i.
fn find_free_stride(claimed: &BTreeMap<u16, Vec<Claim>>, nodes: u32, from: u16) -> Option<u16> {
    (u32::from(from)..=65535)
        .chain(1024..u32::from(from))
        .find(|base| {
            (0..nodes).all(|i| {
                let p = base + 2 * i;
                p <= 65535 && !claimed.contains_key(&(p as u16))
            })
        })
        .map(|b| b as u16)
}

/// First run of `width` unclaimed ports at or after `from` (wrapping to 10000).
fn find_free(claimed: &BTreeMap<u16, Vec<Claim>>, width: u32, from: u16) -> Option<PortRange> {
    let starts = [u32::from(from), 10000, 1024];
    for start in starts {
        let mut first = start;
        let mut p = start;
        while p <= 65535 {
            if claimed.contains_key(&(p as u16)) {
                first = p + 1;
            } else if p + 1 - first >= width {
                return Some(PortRange {
                    first: first as u16,
                    last: p as u16,
                });
            }
            p += 1;
        }
    }
    None
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

/// The head's container command. With Serve on, a small supervisor: Ray runs
/// with `--block` in the background, Serve's HTTP proxy is started once the
/// GCS answers, and the container lives exactly as long as Ray does.
fn head_command(config: &Config, ray_start: &[String]) -> Vec<String> {
    let mut blocking: Vec<String> = ray_start.to_vec();
    blocking.push("--block".to_string());
    if !config.head.serve {
        return blocking;
    }
    let gcs = format!("{}:{}", node_ip(&config.head.host), config.head.gcs_port);
    let script = format!(
        "{} & ray_pid=$!; \
         until (exec 3<>/dev/tcp/{}) 2>/dev/null; do kill -0 $ray_pid 2>/dev/null || exit 1; sleep 0.5; done; \
         n=0; until serve start --address={gcs} --http-host 0.0.0.0 --http-port {}; do \
         n=$((n+1)); if [ $n -ge 5 ]; then kill $ray_pid; exit 1; fi; sleep 2; done; \
         wait $ray_pid",
        blocking.join(" "),
        gcs.replace(':', "/"),
        config.head.serve_port
    );
    vec!["bash".to_string(), "-c".to_string(), script]
}

/// A port range a host must accept from the other cluster hosts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Opening {
    pub first: u16,
    pub last: u16,
    pub what: String,
}

/// What one host's firewall must open.
#[derive(Debug, Clone, PartialEq, Eq)]
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
