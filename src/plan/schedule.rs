//! The schedule: a plan's changes as a dependency graph of [`Step`]s that
//! apply walks. After observation every step that touches an existing
//! container names it by ID. Pure and deterministic.

use super::diff::{Action, Change};
use crate::model::{HostName, NodeName, Role};
use petgraph::graph::{DiGraph, NodeIndex};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// One unit of work for apply.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Step {
    /// Build the image on this machine's engine (`[cluster.build]`).
    BuildImage {
        host: HostName,
        image: String,
    },
    /// Move an image from this machine's engine to a host, only the layers
    /// it lacks (`image_source = "push"`).
    PushImage {
        host: HostName,
        image: String,
        /// Bytes to send, layers to send, layers in the image.
        bytes: u64,
        layers: u32,
        of: u32,
    },
    /// Fetch an image missing on a host.
    PullImage {
        host: HostName,
        image: String,
    },
    /// Let Ray move work off a worker before its container (by ID) goes.
    Drain {
        host: HostName,
        node: NodeName,
        container: String,
    },
    /// Stop and remove a container.
    Remove {
        host: HostName,
        node: NodeName,
        container: String,
    },
    Create {
        host: HostName,
        node: NodeName,
    },
    /// Start a container: the observed one (by ID), or the one this apply
    /// created (`None`).
    Start {
        host: HostName,
        node: NodeName,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        container: Option<String>,
    },
    /// The head's GCS accepts connections: workers may start (they retry
    /// their join until the head is up).
    WaitGcs {
        host: HostName,
        node: NodeName,
    },
    /// Ray lists the node ALIVE with its CPUs (the head too).
    WaitReady {
        host: HostName,
        node: NodeName,
    },
    /// Serve's HTTP proxy answers on the head: gates nothing else.
    WaitServe {
        host: HostName,
        node: NodeName,
    },
}

impl Step {
    /// Whether an interruption may cut it short: waits, drains and pulls
    /// change nothing when abandoned (creates, starts and removes finish).
    pub fn is_wait(&self) -> bool {
        matches!(
            self,
            Step::WaitGcs { .. }
                | Step::WaitReady { .. }
                | Step::WaitServe { .. }
                | Step::Drain { .. }
                | Step::PullImage { .. }
                | Step::PushImage { .. }
                | Step::BuildImage { .. }
        )
    }

    pub fn host(&self) -> &HostName {
        match self {
            Step::PullImage { host, .. }
            | Step::BuildImage { host, .. }
            | Step::PushImage { host, .. }
            | Step::Drain { host, .. }
            | Step::Remove { host, .. }
            | Step::Create { host, .. }
            | Step::Start { host, .. }
            | Step::WaitGcs { host, .. }
            | Step::WaitReady { host, .. }
            | Step::WaitServe { host, .. } => host,
        }
    }

    pub fn node(&self) -> Option<&NodeName> {
        match self {
            Step::PullImage { .. } | Step::PushImage { .. } | Step::BuildImage { .. } => None,
            Step::Drain { node, .. }
            | Step::Remove { node, .. }
            | Step::Create { node, .. }
            | Step::Start { node, .. }
            | Step::WaitGcs { node, .. }
            | Step::WaitReady { node, .. }
            | Step::WaitServe { node, .. } => Some(node),
        }
    }

    pub fn verb(&self) -> &'static str {
        match self {
            Step::PullImage { .. } => "pull",
            Step::PushImage { .. } => "push",
            Step::BuildImage { .. } => "build",
            Step::Drain { .. } => "drain",
            Step::Remove { .. } => "remove",
            Step::Create { .. } => "create",
            Step::Start { .. } => "start",
            Step::WaitGcs { .. } => "wait-gcs",
            Step::WaitReady { .. } => "wait-ready",
            Step::WaitServe { .. } => "wait-serve",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::PullImage { host, image } => write!(f, "pull {image} on {host}"),
            Step::BuildImage { image, .. } => write!(f, "build {image} on this machine"),
            Step::PushImage {
                host,
                image,
                bytes,
                layers,
                of,
            } => write!(
                f,
                "push {image} to {host} ({layers} of {of} layers, {})",
                crate::model::human_size(*bytes)
            ),
            other => write!(
                f,
                "{} {}",
                other.verb(),
                other.node().map(|n| n.as_str()).unwrap_or("")
            ),
        }
    }
}

/// A step with its place in the order and the places of its prerequisites.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberedStep<'a> {
    pub number: usize,
    pub step: &'a Step,
    pub after: Vec<usize>,
}

/// The steps and their order: an edge `a -> b` means `a` must finish first.
#[derive(Debug, Clone)]
pub struct PlanGraph {
    pub graph: DiGraph<Step, ()>,
}

/// A graph as saved: steps in order, edges as pairs of positions.
#[derive(Serialize, Deserialize)]
struct SavedGraph {
    steps: Vec<Step>,
    edges: Vec<(usize, usize)>,
}

impl Serialize for PlanGraph {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let order = self.ordered();
        let position: BTreeMap<NodeIndex, usize> =
            order.iter().enumerate().map(|(n, i)| (*i, n)).collect();
        let mut edges: Vec<(usize, usize)> = self
            .graph
            .edge_indices()
            .filter_map(|e| self.graph.edge_endpoints(e))
            .map(|(a, b)| (position[&a], position[&b]))
            .collect();
        edges.sort();
        edges.dedup();
        SavedGraph {
            steps: order.iter().map(|i| self.graph[*i].clone()).collect(),
            edges,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for PlanGraph {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let saved = SavedGraph::deserialize(d)?;
        let mut graph = DiGraph::new();
        let idx: Vec<NodeIndex> = saved.steps.into_iter().map(|s| graph.add_node(s)).collect();
        for (a, b) in saved.edges {
            let (Some(a), Some(b)) = (idx.get(a), idx.get(b)) else {
                return Err(serde::de::Error::custom(
                    "an edge names a step that does not exist",
                ));
            };
            if a == b {
                return Err(serde::de::Error::custom("a step waits for itself"));
            }
            graph.add_edge(*a, *b, ());
        }
        if petgraph::algo::is_cyclic_directed(&graph) {
            return Err(serde::de::Error::custom(
                "the steps wait for each other in a cycle",
            ));
        }
        Ok(PlanGraph { graph })
    }
}

impl PartialEq for PlanGraph {
    fn eq(&self, other: &Self) -> bool {
        let edges = |g: &PlanGraph| -> Vec<(Step, Step)> {
            let mut v: Vec<(Step, Step)> = g
                .graph
                .edge_indices()
                .filter_map(|e| g.graph.edge_endpoints(e))
                .map(|(a, b)| (g.graph[a].clone(), g.graph[b].clone()))
                .collect();
            v.sort();
            v.dedup();
            v
        };
        let steps = |g: &PlanGraph| -> Vec<Step> {
            let mut v: Vec<Step> = g.graph.node_weights().cloned().collect();
            v.sort();
            v
        };
        steps(self) == steps(other) && edges(self) == edges(other)
    }
}

impl PlanGraph {
    /// Steps in a deterministic topological order: among ready steps, the
    /// smallest by `Step`'s ordering goes first.
    pub fn ordered(&self) -> Vec<NodeIndex> {
        let g = &self.graph;
        let mut indegree: BTreeMap<NodeIndex, usize> = g
            .node_indices()
            .map(|i| {
                (
                    i,
                    g.neighbors_directed(i, petgraph::Direction::Incoming)
                        .count(),
                )
            })
            .collect();
        let mut ready: BTreeSet<(Step, NodeIndex)> = indegree
            .iter()
            .filter(|(_, d)| **d == 0)
            .map(|(i, _)| (g[*i].clone(), *i))
            .collect();
        let mut out = Vec::new();
        while let Some(first) = ready.iter().next().cloned() {
            ready.remove(&first);
            out.push(first.1);
            let mut next: Vec<NodeIndex> = g.neighbors(first.1).collect();
            next.sort();
            next.dedup();
            for n in next {
                let d = indegree.get_mut(&n).expect("every node has a degree");
                *d -= 1;
                if *d == 0 {
                    ready.insert((g[n].clone(), n));
                }
            }
        }
        out
    }

    /// The steps in order, numbered from 1, each with the numbers of the
    /// steps it waits for (ascending): what every renderer shows.
    pub fn numbered(&self) -> Vec<NumberedStep<'_>> {
        let order = self.ordered();
        let number: BTreeMap<NodeIndex, usize> =
            order.iter().enumerate().map(|(n, i)| (*i, n + 1)).collect();
        order
            .iter()
            .map(|i| {
                let mut after: Vec<usize> =
                    self.dependencies(*i).iter().map(|d| number[d]).collect();
                after.sort();
                NumberedStep {
                    number: number[i],
                    step: &self.graph[*i],
                    after,
                }
            })
            .collect()
    }

    /// Direct prerequisites of a step.
    pub fn dependencies(&self, i: NodeIndex) -> Vec<NodeIndex> {
        let mut v: Vec<NodeIndex> = self
            .graph
            .neighbors_directed(i, petgraph::Direction::Incoming)
            .collect();
        v.sort();
        v.dedup();
        v
    }

    pub fn len(&self) -> usize {
        self.graph.node_count()
    }

    pub fn is_empty(&self) -> bool {
        self.graph.node_count() == 0
    }
}

/// Builds the step graph for a list of changes.
///
/// `missing_images` are `(host, image)` pairs known to be absent.
/// What a push to a host sends: bytes, layers, layers in the image.
pub type Transfers = BTreeMap<(HostName, String), (u64, u32, u32)>;

/// Workers of one group replaced a few at a time: each wave is drained,
/// replaced and seen ALIVE before the next wave starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub group: String,
    /// At most this many of the group's workers are down at once.
    pub max_unavailable: usize,
    pub waves: Vec<Vec<NodeName>>,
}

/// `ray start` flags that carry a node's ports: a replacement that moves
/// them could collide with a neighbour still running, so its group is not
/// rolled.
const PORT_FLAGS: &[&str] = &[
    "--object-manager-port",
    "--node-manager-port",
    "--min-worker-port",
    "--max-worker-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
    "--metrics-export-port",
];

/// The rollouts of a plan whose head stays up: per group, its replaced
/// workers in waves of `max_unavailable` (a group replaced in one wave
/// needs none).
pub fn rollouts(
    changes: &[Change],
    max_unavailable: crate::config::MaxUnavailable,
) -> Vec<Rollout> {
    let head_stays = changes
        .iter()
        .any(|c| c.role == Role::Head && c.action == Action::NoOp);
    if !head_stays {
        return Vec::new();
    }
    let mut size: BTreeMap<&str, usize> = BTreeMap::new();
    let mut replaced: BTreeMap<&str, Vec<&Change>> = BTreeMap::new();
    for c in changes {
        let Some(group) = c.after.as_ref().and_then(|a| a.group.as_deref()) else {
            continue;
        };
        if c.action == Action::Remove {
            continue;
        }
        *size.entry(group).or_default() += 1;
        if c.role == Role::Worker && c.action == Action::Replace {
            replaced.entry(group).or_default().push(c);
        }
    }
    let mut out = Vec::new();
    for (group, nodes) in replaced {
        let per_wave = max_unavailable.of(size[group]);
        let moves_ports = nodes.iter().any(|c| {
            c.fields
                .iter()
                .any(|f| PORT_FLAGS.contains(&f.field.as_str()))
        });
        if nodes.len() <= per_wave || moves_ports {
            continue;
        }
        out.push(Rollout {
            group: group.to_string(),
            max_unavailable: per_wave,
            waves: nodes
                .chunks(per_wave)
                .map(|w| w.iter().map(|c| c.node.clone()).collect())
                .collect(),
        });
    }
    out
}

pub fn schedule(
    changes: &[Change],
    missing_images: &BTreeSet<(HostName, String)>,
    pushes: &Transfers,
    builds: &BTreeSet<String>,
    rollouts: &[Rollout],
) -> PlanGraph {
    let mut g: DiGraph<Step, ()> = DiGraph::new();
    let mut idx: BTreeMap<Step, NodeIndex> = BTreeMap::new();
    let mut add = |g: &mut DiGraph<Step, ()>, s: Step| -> NodeIndex {
        *idx.entry(s.clone()).or_insert_with(|| g.add_node(s))
    };

    let head_running_after = changes
        .iter()
        .any(|c| c.role == Role::Head && c.action != Action::Remove);
    // A head brought up gates the workers' starts on its GCS only.
    let head_wait: Option<NodeIndex> = changes
        .iter()
        .find(|c| {
            c.role == Role::Head
                && matches!(c.action, Action::Create | Action::Start | Action::Replace)
        })
        .map(|c| {
            add(
                &mut g,
                Step::WaitGcs {
                    host: c.host.clone(),
                    node: c.node.clone(),
                },
            )
        });

    let mut removes_by_host: BTreeMap<HostName, Vec<NodeIndex>> = BTreeMap::new();
    let mut creates_by_host: BTreeMap<HostName, Vec<NodeIndex>> = BTreeMap::new();
    let mut worker_removes = Vec::new();
    let mut head_remove = None;

    for c in changes {
        let host = c.host.clone();
        let node = c.node.clone();
        // The old container goes first, for removals and replacements alike.
        // The drain, else the removal: the old container is touched no
        // sooner than the new image is on the host.
        let mut first_stop = None;
        let removal = matches!(c.action, Action::Remove | Action::Replace).then(|| {
            let r = add(
                &mut g,
                Step::Remove {
                    host: host.clone(),
                    node: node.clone(),
                    container: c.before.as_ref().map(|b| b.id.clone()).unwrap_or_default(),
                },
            );
            // A worker leaving a cluster whose head stays hands its work off first.
            if c.role == Role::Worker && head_running_after && head_wait.is_none() {
                let d = add(
                    &mut g,
                    Step::Drain {
                        host: host.clone(),
                        node: node.clone(),
                        container: c.container().unwrap_or_default().to_string(),
                    },
                );
                g.add_edge(d, r, ());
                first_stop = Some(d);
            }
            removes_by_host.entry(host.clone()).or_default().push(r);
            match c.role {
                Role::Head => head_remove = Some(r),
                Role::Worker => worker_removes.push(r),
            }
            r
        });
        let first_stop = first_stop.or(removal);
        match c.action {
            Action::NoOp | Action::Remove => {}
            Action::Create | Action::Replace | Action::Start => {
                let start = add(
                    &mut g,
                    Step::Start {
                        host: host.clone(),
                        node: node.clone(),
                        container: (c.action == Action::Start)
                            .then(|| c.container().map(str::to_string))
                            .flatten(),
                    },
                );
                if c.action != Action::Start {
                    let create = add(
                        &mut g,
                        Step::Create {
                            host: host.clone(),
                            node: node.clone(),
                        },
                    );
                    g.add_edge(create, start, ());
                    creates_by_host
                        .entry(host.clone())
                        .or_default()
                        .push(create);
                    if let Some(r) = removal {
                        g.add_edge(r, create, ());
                    }
                    if let Some(image) = c.after.as_ref().map(|a| a.image.clone()) {
                        let key = (host.clone(), image.clone());
                        if let Some((bytes, layers, of)) = pushes.get(&key) {
                            let built = builds.contains(&image).then(|| {
                                add(
                                    &mut g,
                                    Step::BuildImage {
                                        host: HostName("local".to_string()),
                                        image: image.clone(),
                                    },
                                )
                            });
                            let p = add(
                                &mut g,
                                Step::PushImage {
                                    host: host.clone(),
                                    image,
                                    bytes: *bytes,
                                    layers: *layers,
                                    of: *of,
                                },
                            );
                            if let Some(b) = built {
                                g.update_edge(b, p, ());
                            }
                            g.add_edge(p, create, ());
                            if let Some(f) = first_stop {
                                g.add_edge(p, f, ());
                            }
                        } else if missing_images.contains(&key) {
                            let p = add(
                                &mut g,
                                Step::PullImage {
                                    host: host.clone(),
                                    image,
                                },
                            );
                            g.add_edge(p, create, ());
                            if let Some(f) = first_stop {
                                g.add_edge(p, f, ());
                            }
                        }
                    }
                }
                let wait = add(
                    &mut g,
                    Step::WaitReady {
                        host: host.clone(),
                        node: node.clone(),
                    },
                );
                match (c.role, head_wait) {
                    (Role::Worker, Some(hw)) => {
                        g.add_edge(hw, start, ());
                        g.add_edge(start, wait, ());
                    }
                    (Role::Head, Some(gcs)) => {
                        g.add_edge(start, gcs, ());
                        g.add_edge(gcs, wait, ());
                        let serves = c
                            .after
                            .as_ref()
                            .and_then(|a| a.ports.head.as_ref())
                            .is_some_and(|h| h.serve.is_some());
                        if serves {
                            let serve = add(
                                &mut g,
                                Step::WaitServe {
                                    host: host.clone(),
                                    node: node.clone(),
                                },
                            );
                            g.add_edge(gcs, serve, ());
                        }
                    }
                    _ => {
                        g.add_edge(start, wait, ());
                    }
                }
            }
        }
    }
    let wave_of: BTreeMap<&NodeName, usize> = rollouts
        .iter()
        .flat_map(|r| {
            r.waves
                .iter()
                .enumerate()
                .flat_map(|(i, w)| w.iter().map(move |n| (n, i)))
        })
        .collect();
    let wave = |i: NodeIndex| g[i].node().and_then(|n| wave_of.get(n)).copied();
    // On one host, removals free names and ports before anything is created
    // (a later wave's workers keep running meanwhile: their ports do not move).
    let mut ordering = Vec::new();
    for (host, removes) in &removes_by_host {
        if let Some(creates) = creates_by_host.get(host) {
            for r in removes {
                for c in creates {
                    let later = matches!((wave(*r), wave(*c)), (Some(wr), Some(wc)) if wr > wc);
                    if !later && g.find_edge(*r, *c).is_none() {
                        ordering.push((*r, *c));
                    }
                }
            }
        }
    }
    for (r, c) in ordering {
        g.add_edge(r, c, ());
    }
    // A wave starts once the previous one is ALIVE again.
    let find = |g: &DiGraph<Step, ()>, want: &dyn Fn(&Step) -> bool| {
        g.node_indices().find(|i| want(&g[*i]))
    };
    for r in rollouts {
        for pair in r.waves.windows(2) {
            let ready: Vec<NodeIndex> = pair[0]
                .iter()
                .filter_map(|n| {
                    find(
                        &g,
                        &|s| matches!(s, Step::WaitReady { node, .. } if node == n),
                    )
                })
                .collect();
            for n in &pair[1] {
                let first = find(&g, &|s| matches!(s, Step::Drain { node, .. } if node == n))
                    .or_else(|| find(&g, &|s| matches!(s, Step::Remove { node, .. } if node == n)));
                if let Some(first) = first {
                    for w in &ready {
                        g.update_edge(*w, first, ());
                    }
                }
            }
        }
    }
    // While a head runs after this plan, workers leave before the old one
    // goes. When none does (the whole cluster is destroyed), every node
    // stops at once: a worker that gets SIGTERM leaves Ray in about the
    // time the head takes to stop, and waiting for it first only adds it
    // (one still stopping once the head is down is removed by the executor).
    if let Some(hr) = head_remove.filter(|_| head_running_after) {
        for w in &worker_removes {
            g.add_edge(*w, hr, ());
        }
    }
    PlanGraph { graph: g }
}
