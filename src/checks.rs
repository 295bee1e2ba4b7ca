//! Preflight checks as data: what each host reported (its listening sockets
//! and their holders, probe results), judged against the plan, and rendered
//! as a table of hosts by checks. Pure: gathering is `preflight`'s job.
//!
//! A check fails when something would stop a node from coming up: a port it
//! binds held by anything but the container of ours that keeps it (or one the
//! plan removes first), or a connection Ray needs between hosts that does not
//! go through. Each failure names the fix.

use crate::model::{excerpt, DesiredState, HostName, NodeName, ObservedContainer, Role};
use crate::ownership::{self, Owner};
use crate::plan::{Action, Change};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The script that lists a host's listening TCP sockets with their
/// processes, then the cgroup of each process (to find its container).
/// Constant: nothing from the configuration is pasted into it.
pub const LISTENERS_SCRIPT: &str = concat!(
    // One `ss`; the holders' cgroups read with shell builtins only (each
    // process started on a host costs every plan).
    "set -f; out=$(ss -ltnpH 2>/dev/null) || exit 3; printf '%s\\n' \"$out\"; echo '== cgroups'; ",
    "seen=' '; for w in $out; do r=$w; while :; do ",
    "case $r in *pid=*) ;; *) break ;; esac; r=${r#*pid=}; p=${r%%[!0-9]*}; ",
    "case $seen in *\" $p \"*) continue ;; esac; seen=\"$seen$p \"; printf '%s ' \"$p\"; ",
    "while IFS= read -r l; do printf '%s ' \"$l\"; done 2>/dev/null < \"/proc/$p/cgroup\"; echo; ",
    "done; done; exit 0"
);

/// One listening socket on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub port: u16,
    pub process: String,
    pub pid: u32,
    /// The container the process runs in (its ID), when the cgroup says.
    pub container: Option<String>,
}

/// Parses [`LISTENERS_SCRIPT`]'s output.
pub fn parse_listeners(text: &str) -> Vec<Listener> {
    let (sockets, cgroups) = text.split_once("== cgroups").unwrap_or((text, ""));
    let mut container_of: BTreeMap<u32, String> = BTreeMap::new();
    for line in cgroups.lines() {
        let mut words = line.split_whitespace();
        let Some(pid) = words.next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        // The last 64-hex token of any cgroup path is the container's ID.
        let id = line
            .split(|c: char| !c.is_ascii_hexdigit())
            .rfind(|t| t.len() == 64);
        if let Some(id) = id {
            container_of.insert(pid, id.to_string());
        }
    }
    let mut out = Vec::new();
    for line in sockets.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 4 || fields[0] != "LISTEN" {
            continue;
        }
        let Some(port) = fields[3]
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
        else {
            continue;
        };
        let users = line.split_once("users:((").map(|(_, u)| u).unwrap_or("");
        let process = users
            .split('"')
            .nth(1)
            .unwrap_or("unknown process")
            .to_string();
        let pid = users
            .split("pid=")
            .nth(1)
            .and_then(|p| p.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        out.push(Listener {
            port,
            process,
            pid,
            container: container_of.get(&pid).cloned(),
        });
    }
    out
}

/// A column of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Every port a node on the host binds is free (or ours).
    Ports,
    /// The engine answers, its API, the image.
    Engine,
    /// CPUs and memory for what is declared.
    Capacity,
    /// The host reaches the head's GCS.
    ToHead,
    /// The head's host reaches the host's node and object managers and worker ports.
    FromHead,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Ports,
        Kind::Engine,
        Kind::Capacity,
        Kind::ToHead,
        Kind::FromHead,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Kind::Ports => "ports free",
            Kind::Engine => "engine",
            Kind::Capacity => "capacity",
            Kind::ToHead => "reaches head GCS",
            Kind::FromHead => "reached by head",
        }
    }
}

/// One check on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub host: HostName,
    pub kind: Kind,
    pub ok: bool,
    /// What was checked, and what was found when it failed.
    pub detail: String,
    /// How to fix a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// Every check of a plan, and the warnings that do not stop it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Report {
    pub hosts: Vec<HostName>,
    pub checks: Vec<Check>,
    pub warnings: Vec<String>,
    /// Skipped with `--skip-preflight`.
    pub skipped: bool,
    /// Routes not tried: the plan keeps the nodes on both ends and Ray lists
    /// them ALIVE, so Ray's own traffic shows them open (`seedcore check`
    /// tries them all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alive_in_ray: Vec<Check>,
}

impl Report {
    pub fn skipped() -> Report {
        Report {
            skipped: true,
            ..Report::default()
        }
    }

    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !c.ok)
    }

    pub fn failed(&self) -> bool {
        self.failures().next().is_some()
    }

    /// The table of hosts by checks, then each failure with its fix, then
    /// the warnings.
    pub fn render(&self) -> String {
        if self.skipped {
            return "Preflight: skipped (--skip-preflight): ports and connections were not checked.\n".to_string();
        }
        let mut out = String::from("Preflight:\n");
        let width = self
            .hosts
            .iter()
            .map(|h| h.0.len())
            .max()
            .unwrap_or(4)
            .max(4);
        let mut header = format!("  {:width$}", "HOST");
        for k in Kind::ALL {
            header.push_str(&format!("  {:<16}", k.title()));
        }
        out.push_str(header.trim_end());
        out.push('\n');
        let mut shown_by_ray = false;
        for h in &self.hosts {
            let mut row = format!("  {:width$}", h.0);
            for k in Kind::ALL {
                let cell: Vec<&Check> = self
                    .checks
                    .iter()
                    .filter(|c| c.host == *h && c.kind == k)
                    .collect();
                let text = if cell.is_empty() {
                    if self
                        .alive_in_ray
                        .iter()
                        .any(|c| c.host == *h && c.kind == k)
                    {
                        shown_by_ray = true;
                        ALIVE_IN_RAY
                    } else {
                        "-"
                    }
                } else if cell.iter().all(|c| c.ok) {
                    "pass"
                } else {
                    "FAIL"
                };
                row.push_str(&format!("  {text:<16}"));
            }
            out.push_str(row.trim_end());
            out.push('\n');
        }
        if shown_by_ray {
            out.push_str(&format!(
                "  {ALIVE_IN_RAY}: not tried; the plan keeps the nodes on both ends and Ray lists them ALIVE (`seedcore check` tries every route)\n"
            ));
        }
        for c in self.failures() {
            out.push_str(&format!(
                "  FAIL `{}` {}: {}\n",
                c.host,
                c.kind.title(),
                crate::model::bounded(&c.detail, 600)
            ));
            if let Some(fix) = &c.fix {
                out.push_str(&format!("    fix: {}\n", crate::model::bounded(fix, 600)));
            }
        }
        for w in &self.warnings {
            out.push_str(&format!("  warning: {}\n", crate::model::bounded(w, 600)));
        }
        out
    }
}

/// A route cell whose every route was shown open by Ray rather than tried.
const ALIVE_IN_RAY: &str = "ALIVE";

/// A port a node on the host will bind, and what it is for.
#[derive(Debug, Clone)]
pub struct Claim {
    pub first: u16,
    pub last: u16,
    pub node: String,
    pub what: &'static str,
}

/// Every port range each node of the plan binds, by host.
pub fn claims(desired: &DesiredState) -> BTreeMap<HostName, Vec<Claim>> {
    let mut out: BTreeMap<HostName, Vec<Claim>> = BTreeMap::new();
    for n in &desired.nodes {
        for (first, last, what) in n.ports.all() {
            out.entry(n.host.clone()).or_default().push(Claim {
                first,
                last,
                node: n.name.0.clone(),
                what,
            });
        }
    }
    out
}

/// Judges one host's listening sockets: each port a node binds is free, or
/// held by the container of ours that keeps it, or by one of ours that the
/// plan removes before it creates anything there.
pub fn port_checks(
    host: &HostName,
    desired: &DesiredState,
    changes: &[Change],
    listeners: &[Listener],
    containers: &[ObservedContainer],
) -> Vec<Check> {
    let all = claims(desired);
    let Some(claims) = all.get(host) else {
        return Vec::new();
    };
    let by_id: BTreeMap<&str, &ObservedContainer> =
        containers.iter().map(|c| (c.id.as_str(), c)).collect();
    let mut failures = Vec::new();
    let mut seen: Vec<u16> = Vec::new();
    for l in listeners {
        if seen.contains(&l.port) {
            continue;
        }
        let Some(claim) = claims.iter().find(|c| (c.first..=c.last).contains(&l.port)) else {
            continue;
        };
        seen.push(l.port);
        let holder = l.container.as_deref().and_then(|id| by_id.get(id).copied());
        if let Some(c) = holder {
            if ownership::owner(&desired.cluster, c) == Owner::Ours {
                let change = changes
                    .iter()
                    .find(|ch| ch.container() == Some(c.id.as_str()));
                let fine = match change {
                    // It keeps its own port.
                    Some(ch) if ch.action == Action::NoOp => ch.node.0 == claim.node,
                    // Removed (or replaced) before anything is created here.
                    Some(ch) => matches!(ch.action, Action::Remove | Action::Replace),
                    None => false,
                };
                if fine {
                    continue;
                }
            }
        }
        let who = match holder {
            Some(c) => match (ownership::owner(&desired.cluster, c), c.cluster()) {
                (Owner::Ours, _) => {
                    format!("container `{}` of this cluster", excerpt(&c.name, 120))
                }
                (Owner::OtherCluster(id), _) => format!(
                    "container `{}` of another cluster `{}` (id `{}`)",
                    excerpt(&c.name, 120),
                    desired.cluster.name,
                    excerpt(&id, 64)
                ),
                (_, Some(cluster)) => format!(
                    "container `{}` of seedcore cluster `{}`",
                    excerpt(&c.name, 120),
                    excerpt(cluster, 80)
                ),
                (_, None) => format!(
                    "container `{}` (process `{}`, PID {})",
                    excerpt(&c.name, 120),
                    excerpt(&l.process, 60),
                    l.pid
                ),
            },
            None => format!("process `{}` (PID {})", excerpt(&l.process, 60), l.pid),
        };
        failures.push(Check {
            host: host.clone(),
            kind: Kind::Ports,
            ok: false,
            detail: format!(
                "port {} ({} of `{}`) is held by {who}",
                l.port, claim.what, claim.node
            ),
            fix: Some(format!(
                "stop what holds port {} on `{host}`, or give this cluster other ports (the README's \"Nodes, names and ports\")",
                l.port
            )),
        });
    }
    if failures.is_empty() {
        let count: u32 = claims
            .iter()
            .map(|c| u32::from(c.last) - u32::from(c.first) + 1)
            .sum();
        vec![Check {
            host: host.clone(),
            kind: Kind::Ports,
            ok: true,
            detail: format!("{count} port(s) free or held by the nodes that keep them"),
            fix: None,
        }]
    } else {
        failures
    }
}

/// One connection Ray needs between two hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The host that connects.
    pub from: HostName,
    /// The address and port it connects to.
    pub to: HostName,
    pub to_address: String,
    pub port: u16,
    pub what: String,
    /// The workers whose joining needs it (the head's needs every route).
    pub nodes: Vec<NodeName>,
}

/// Every connection Ray needs: each worker host to the head's GCS, and the
/// head's host to each worker host's node and object managers and both ends
/// of each worker's port slice.
pub fn routes(desired: &DesiredState) -> Vec<Route> {
    let head = desired.head();
    let Some(gcs) = head.ports.head.as_ref().map(|h| h.gcs) else {
        return Vec::new();
    };
    let mut out: Vec<Route> = Vec::new();
    let mut hosts: Vec<&HostName> = Vec::new();
    for n in desired.nodes.iter().filter(|n| n.role == Role::Worker) {
        if n.host == head.host {
            continue;
        }
        if !hosts.contains(&&n.host) {
            hosts.push(&n.host);
            out.push(Route {
                from: n.host.clone(),
                to: head.host.clone(),
                to_address: head.node_ip.clone(),
                port: gcs,
                what: "the head's GCS".to_string(),
                nodes: Vec::new(),
            });
        }
        if let Some(gcs_route) = out
            .iter_mut()
            .find(|r| r.from == n.host && r.what == "the head's GCS")
        {
            gcs_route.nodes.push(n.name.clone());
        }
        for (port, what) in [
            (n.ports.node_manager, "node manager"),
            (n.ports.object_manager, "object manager"),
            (n.ports.min_worker, "first worker port"),
            (n.ports.max_worker, "last worker port"),
        ] {
            out.push(Route {
                from: head.host.clone(),
                to: n.host.clone(),
                to_address: n.node_ip.clone(),
                port,
                what: format!("{what} of `{}`", n.name),
                nodes: vec![n.name.clone()],
            });
        }
    }
    out
}

/// Whether preflight must try `route`: unless the head and every worker
/// that needs it stay as they are and Ray lists them all ALIVE (Ray's own
/// traffic then already shows the way is open). `unchanged(node)` tells a
/// node the plan leaves alone; `up(node)` one that Ray lists ALIVE.
pub fn needs_probe(
    route: &Route,
    head: &NodeName,
    unchanged: impl Fn(&NodeName) -> bool,
    up: impl Fn(&NodeName) -> bool,
) -> bool {
    !(unchanged(head)
        && up(head)
        && !route.nodes.is_empty()
        && route.nodes.iter().all(|n| unchanged(n) && up(n)))
}

/// The entry for a route that was not tried (see [`Report::alive_in_ray`]).
pub fn route_shown_by_ray(route: &Route) -> Check {
    let mut check = route_check(route, Ok(()));
    check
        .detail
        .push_str(": not tried, Ray lists the nodes on both ends ALIVE and the plan keeps them");
    check
}

/// The check for one route's outcome.
pub fn route_check(route: &Route, result: Result<(), String>) -> Check {
    let (host, kind) = if route.what == "the head's GCS" {
        (route.from.clone(), Kind::ToHead)
    } else {
        (route.to.clone(), Kind::FromHead)
    };
    let detail = format!(
        "`{}` -> {}:{} ({})",
        route.from, route.to_address, route.port, route.what
    );
    match result {
        Ok(()) => Check {
            host,
            kind,
            ok: true,
            detail,
            fix: None,
        },
        Err(why) => Check {
            host,
            kind,
            ok: false,
            detail: format!("{detail}: {}", excerpt(&why, 200)),
            fix: Some(format!(
                "allow TCP {port} from {from} to {to} in the firewall or security group of `{to_host}` (e.g. `iptables -I INPUT -p tcp -s {from} --dport {port} -j ACCEPT`); Ray needs it (see the plan's Firewall section)",
                port = route.port,
                from = route.from,
                to = route.to_address,
                to_host = route.to
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_are_parsed_with_their_containers() {
        let id = "485a604d9adcda8dc154dda3d40704422cd160a620d37dddc739d00cfbe099bf";
        let text = format!(
            "LISTEN 0 4096 0.0.0.0:9410 0.0.0.0:* users:((\"raylet\",pid=9711,fd=30))\n\
             LISTEN 0 128 127.0.0.1:52365 0.0.0.0:* users:((\"ray::DashboardA\",pid=9245,fd=39))\n\
             LISTEN 0 128 [::]:22 [::]:* users:((\"sshd\",pid=15,fd=4))\n\
             == cgroups\n\
             9711 12:pids:/docker/{id} 0::/docker/{id} \n\
             15 0::/init.scope \n"
        );
        let l = parse_listeners(&text);
        assert_eq!(l.len(), 3);
        assert_eq!(
            l[0],
            Listener {
                port: 9410,
                process: "raylet".to_string(),
                pid: 9711,
                container: Some(id.to_string())
            }
        );
        assert_eq!((l[1].port, l[1].container.as_deref()), (52365, None));
        assert_eq!((l[2].port, l[2].process.as_str()), (22, "sshd"));
    }
}

#[cfg(test)]
mod port_tests {
    use super::*;
    use crate::model::{LABEL_CLUSTER, LABEL_CLUSTER_ID, LABEL_NODE};

    fn desired() -> DesiredState {
        let text = "[cluster]\nname = \"c\"\n[head]\nhost = \"10.0.0.1\"\n[workers.w]\nhosts = [\"10.0.0.2\"]\n";
        let loaded = crate::config::parse("c.toml", text, &[]).unwrap();
        crate::topology::lower_fresh(&loaded.config).unwrap()
    }

    fn listener(port: u16, process: &str, container: Option<&str>) -> Listener {
        Listener {
            port,
            process: process.to_string(),
            pid: 4242,
            container: container.map(str::to_string),
        }
    }

    fn container(id: &str, name: &str, labels: &[(&str, &str)]) -> ObservedContainer {
        ObservedContainer {
            name: name.to_string(),
            id: id.to_string(),
            image: "i".to_string(),
            state: "running".to_string(),
            exit_code: None,
            created: None,
            image_id: None,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn a_port_held_by_a_stranger_fails_naming_it() {
        let d = desired();
        let head = HostName("10.0.0.1".to_string());
        let checks = port_checks(&head, &d, &[], &[listener(6380, "redis-server", None)], &[]);
        assert_eq!(checks.len(), 1);
        assert!(!checks[0].ok);
        assert_eq!(
            checks[0].detail,
            "port 6380 (GCS of `c-ray-head`) is held by process `redis-server` (PID 4242)"
        );
        // A container without our labels is named too.
        let stranger = container("abc", "old-ray", &[]);
        let checks = port_checks(
            &head,
            &d,
            &[],
            &[listener(8265, "python", Some("abc"))],
            &[stranger],
        );
        assert!(
            checks[0].detail.contains("container `old-ray`"),
            "{}",
            checks[0].detail
        );
        // Another cluster of the same name.
        let other = container(
            "def",
            "c-ray-head",
            &[
                (LABEL_CLUSTER, "c"),
                (LABEL_CLUSTER_ID, "other"),
                (LABEL_NODE, "c-ray-head"),
            ],
        );
        let checks = port_checks(
            &head,
            &d,
            &[],
            &[listener(6380, "gcs_server", Some("def"))],
            &[other],
        );
        assert!(
            checks[0]
                .detail
                .contains("of another cluster `c` (id `other`)"),
            "{}",
            checks[0].detail
        );
        // Ports nobody claims are none of our business.
        let checks = port_checks(&head, &d, &[], &[listener(22, "sshd", None)], &[]);
        assert!(checks[0].ok);
    }

    #[test]
    fn the_node_that_keeps_a_port_may_hold_it() {
        let d = desired();
        let head = HostName("10.0.0.1".to_string());
        let ours = container(
            "h1",
            "c-ray-head",
            &[
                (LABEL_CLUSTER, "c"),
                (LABEL_CLUSTER_ID, &d.cluster.id),
                (LABEL_NODE, "c-ray-head"),
            ],
        );
        let mut observed = crate::model::ObservedState::new();
        for h in d.hosts() {
            observed.hosts.insert(
                h.clone(),
                crate::model::HostObservation {
                    reachable: true,
                    error: None,
                    engine: None,
                    images: None,
                    layers: None,
                    containers: if h == head {
                        vec![ours.clone()]
                    } else {
                        Vec::new()
                    },
                    listening: Vec::new(),
                },
            );
        }
        let changes = crate::plan::diff(&d, &observed, Default::default()).unwrap();
        let checks = port_checks(
            &head,
            &d,
            &changes,
            &[listener(6380, "gcs_server", Some("h1"))],
            &[ours],
        );
        assert!(checks.iter().all(|c| c.ok), "{checks:?}");
    }

    #[test]
    fn routes_cover_what_ray_needs_between_hosts() {
        let d = desired();
        let r = routes(&d);
        let described: Vec<String> = r
            .iter()
            .map(|r| format!("{} -> {}:{}", r.from, r.to_address, r.port))
            .collect();
        assert_eq!(
            described,
            [
                "10.0.0.2 -> 10.0.0.1:6380",
                "10.0.0.1 -> 10.0.0.2:8077",
                "10.0.0.1 -> 10.0.0.2:8076",
                "10.0.0.1 -> 10.0.0.2:11000",
                "10.0.0.1 -> 10.0.0.2:11020",
            ]
        );
        let failed = route_check(&r[1], Err("no connection within 2 s".to_string()));
        assert_eq!(failed.kind, Kind::FromHead);
        assert!(failed
            .fix
            .unwrap()
            .contains("allow TCP 8077 from 10.0.0.1 to 10.0.0.2"));
    }

    #[test]
    fn only_routes_of_changing_or_unlisted_nodes_are_tried() {
        let d = desired();
        let r = routes(&d);
        let head = d.head().name.clone();
        let worker = r[1].nodes[0].clone();
        assert_eq!(
            r[0].nodes,
            vec![worker.clone()],
            "the GCS route serves the host's workers"
        );
        let all = |_: &NodeName| true;
        let none = |_: &NodeName| false;
        // Everything kept and listed ALIVE: Ray's traffic shows the way open.
        assert!(r.iter().all(|x| !needs_probe(x, &head, all, all)));
        // A change, or a node Ray does not list, needs the routes tried.
        assert!(r.iter().all(|x| needs_probe(x, &head, none, all)));
        assert!(r.iter().all(|x| needs_probe(x, &head, all, none)));
        let head_changes = |n: &NodeName| *n != head;
        assert!(r.iter().all(|x| needs_probe(x, &head, head_changes, all)));
        let worker_changes = |n: &NodeName| *n != worker;
        assert!(r.iter().all(|x| needs_probe(x, &head, worker_changes, all)));
        let shown = route_shown_by_ray(&r[0]);
        assert!(shown.ok);
        assert!(
            shown.detail.ends_with(
                "not tried, Ray lists the nodes on both ends ALIVE and the plan keeps them"
            ),
            "{}",
            shown.detail
        );
    }
}
