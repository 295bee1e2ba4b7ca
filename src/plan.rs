//! The plan: what must change for the hosts to match the configuration.
//!
//! [`diff`] compares the desired nodes with what was observed and returns one
//! [`Change`] per node (and per orphan container), each with a cause for
//! humans. [`schedule`] turns the changes into a dependency graph of
//! [`Step`]s that apply walks. Both are pure and deterministic.

use crate::model::{
    hex, DesiredState, EngineInfo, HostName, NodeName, NodeSpec, ObservedContainer, ObservedState,
    Role, LABEL_NODE, LABEL_ROLE,
};
use petgraph::graph::{DiGraph, NodeIndex};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// What happens to one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    NoOp,
    Create,
    Start,
    Replace,
    Remove,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::NoOp => "no-op",
            Action::Create => "create",
            Action::Start => "start",
            Action::Replace => "replace",
            Action::Remove => "remove",
        }
    }
}

/// One changed field of a replaced node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldChange {
    pub field: String,
    pub before: Option<String>,
    pub after: Option<String>,
}

/// A container that exists now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Before {
    pub id: String,
    pub image: String,
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
}

/// One node's change, with its cause.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    pub node: NodeName,
    pub host: HostName,
    pub role: Role,
    pub action: Action,
    pub cause: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<Before>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<NodeSpec>,
    /// Field-level differences, for replacements whose old spec is known.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldChange>,
}

/// Why a plan cannot be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    /// Hosts missing from the observation or unreachable.
    Incomplete(Vec<(HostName, String)>),
    /// Containers we need the names of, held by something not ours.
    Conflicts(Vec<Conflict>),
    /// A host lacks CPUs for what is declared on it.
    Cpus(Vec<(HostName, u32, u32)>),
}

/// A container without our labels holding a name seedcore needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub host: HostName,
    pub name: String,
    pub id: String,
    pub owner: Option<String>,
}

impl std::error::Error for PlanError {}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::Incomplete(hosts) => {
                writeln!(
                    f,
                    "error: the plan is incomplete: {} host(s) could not be observed",
                    hosts.len()
                )?;
                for (h, why) in hosts {
                    writeln!(f, "  - `{h}`: {why}")?;
                }
                write!(
                    f,
                    "hint: seedcore plans only from a complete view; make every host reachable (or remove it from the configuration) and plan again"
                )
            }
            PlanError::Conflicts(list) => {
                writeln!(
                    f,
                    "error: {} container(s) hold names this cluster needs but were not created by it",
                    list.len()
                )?;
                for c in list {
                    let owner = match &c.owner {
                        Some(o) => format!("labelled for cluster `{o}`"),
                        None => "no seedcore labels".to_string(),
                    };
                    let short: String = c.id.chars().take(12).collect();
                    writeln!(f, "  - `{}` on `{}` (id {short}, {owner})", c.name, c.host)?;
                }
                write!(
                    f,
                    "hint: seedcore never touches containers it did not create; remove or rename them yourself (`docker rm -f NAME` on the host), or choose another `cluster.name`"
                )
            }
            PlanError::Cpus(list) => {
                writeln!(f, "error: more CPUs are declared than some hosts have")?;
                for (h, declared, has) in list {
                    writeln!(f, "  - `{h}`: {declared} declared, the host has {has}")?;
                }
                write!(
                    f,
                    "hint: lower `cpus` or `count` for the nodes on these hosts, or set `cluster.oversubscribe_cpus = true` to let nodes share CPUs (one node can never have more than its host)"
                )
            }
        }
    }
}

/// Options that change how the diff judges what it sees.
#[derive(Debug, Clone, Default)]
pub struct DiffOptions {
    pub oversubscribe_cpus: bool,
    /// Nodes to replace even when they match (`seedcore restart`).
    pub restart: BTreeSet<NodeName>,
}

/// Compares desired with observed. Returns one change per desired node (in
/// topology order, including no-ops) followed by removals.
pub fn diff(
    desired: &DesiredState,
    observed: &ObservedState,
    options: DiffOptions,
) -> Result<Vec<Change>, PlanError> {
    let cluster = desired.cluster.as_str();

    // Every host we must see, plus every observed host (for orphans).
    let mut missing = Vec::new();
    for host in desired.hosts() {
        match observed.hosts.get(&host) {
            None => missing.push((host, "not in the observation".to_string())),
            Some(o) if !o.reachable => missing.push((
                host,
                o.error.clone().unwrap_or_else(|| "unreachable".to_string()),
            )),
            Some(_) => {}
        }
    }
    if !missing.is_empty() {
        return Err(PlanError::Incomplete(missing));
    }

    let containers_on = |host: &HostName| -> &[ObservedContainer] {
        observed
            .hosts
            .get(host)
            .map(|o| o.containers.as_slice())
            .unwrap_or(&[])
    };

    // Conflicts: a name we need, held by a container that is not ours.
    let mut conflicts = Vec::new();
    for node in &desired.nodes {
        for c in containers_on(&node.host) {
            if c.name == node.name.0 && c.cluster() != Some(cluster) {
                conflicts.push(Conflict {
                    host: node.host.clone(),
                    name: c.name.clone(),
                    id: c.id.clone(),
                    owner: c.cluster().map(str::to_string),
                });
            }
        }
    }
    if !conflicts.is_empty() {
        return Err(PlanError::Conflicts(conflicts));
    }

    // Declared CPUs must fit the host: all together, unless oversubscribing
    // is allowed, and each node alone always (Docker refuses a CPU limit
    // above the host's count).
    let mut short = Vec::new();
    for host in desired.hosts() {
        let on_host = desired.nodes.iter().filter(|n| n.host == host);
        let declared: u32 = if options.oversubscribe_cpus {
            on_host.map(|n| n.cpus).max().unwrap_or(0)
        } else {
            on_host.map(|n| n.cpus).sum()
        };
        if let Some(EngineInfo { cpus, .. }) = observed.hosts[&host].engine {
            if cpus > 0 && declared > cpus {
                short.push((host.clone(), declared, cpus));
            }
        }
    }
    if !short.is_empty() {
        return Err(PlanError::Cpus(short));
    }

    let mut changes = Vec::new();
    for node in &desired.nodes {
        let existing = containers_on(&node.host)
            .iter()
            .find(|c| c.name == node.name.0);
        let mut change = node_change(node, existing);
        if options.restart.contains(&node.name)
            && matches!(change.action, Action::NoOp | Action::Start)
        {
            change.action = if existing.is_some() {
                Action::Replace
            } else {
                Action::Create
            };
            change.cause = "restart requested".to_string();
        }
        changes.push(change);
    }

    // A head that is not simply left running takes every worker with it:
    // a new GCS is a new cluster, and the old workers cannot rejoin it.
    let head_action = changes
        .iter()
        .find(|c| c.role == Role::Head)
        .map(|c| c.action);
    if matches!(
        head_action,
        Some(Action::Replace | Action::Create | Action::Start)
    ) {
        let verb = match head_action {
            Some(Action::Replace) => "replaced",
            Some(Action::Create) => "created",
            _ => "restarted",
        };
        for c in changes.iter_mut().filter(|c| c.role == Role::Worker) {
            if matches!(c.action, Action::NoOp | Action::Start) {
                c.action = Action::Replace;
                c.cause = format!("head {verb}: workers must rejoin the new cluster");
                c.fields.clear();
            }
        }
    }

    // Orphans: ours by label, on any observed host, but not declared there.
    let declared: BTreeSet<(&HostName, &str)> = desired
        .nodes
        .iter()
        .map(|n| (&n.host, n.name.as_str()))
        .collect();
    let mut orphans = Vec::new();
    for (host, obs) in &observed.hosts {
        for c in &obs.containers {
            if c.cluster() == Some(cluster) && !declared.contains(&(host, c.name.as_str())) {
                let moved = desired
                    .nodes
                    .iter()
                    .find(|n| n.name.0 == c.name)
                    .map(|n| format!("moved to `{}`", n.host));
                orphans.push(removal(
                    host,
                    c,
                    moved.unwrap_or_else(|| "not in configuration".to_string()),
                ));
            }
        }
    }
    // Workers first, then by name (highest ordinal first for scale-down).
    orphans.sort_by(|a, b| {
        (a.role, &a.host, std::cmp::Reverse(ordinal_key(&a.node))).cmp(&(
            b.role,
            &b.host,
            std::cmp::Reverse(ordinal_key(&b.node)),
        ))
    });
    orphans.sort_by_key(|c| c.role == Role::Head);
    changes.extend(orphans);
    Ok(changes)
}

/// Sort key that orders `x-10` after `x-9`.
fn ordinal_key(name: &NodeName) -> (String, u64) {
    let s = name.as_str();
    match s.rsplit_once('-') {
        Some((stem, n)) if n.chars().all(|c| c.is_ascii_digit()) => {
            (stem.to_string(), n.parse().unwrap_or(0))
        }
        _ => (s.to_string(), 0),
    }
}

/// The removal of one of our containers, its role and node from its labels.
fn removal(host: &HostName, c: &ObservedContainer, cause: String) -> Change {
    let role = match c.labels.get(LABEL_ROLE).map(String::as_str) {
        Some("head") => Role::Head,
        _ => Role::Worker,
    };
    Change {
        node: NodeName(
            c.labels
                .get(LABEL_NODE)
                .cloned()
                .unwrap_or_else(|| c.name.clone()),
        ),
        host: host.clone(),
        role,
        action: Action::Remove,
        cause,
        before: Some(before(c)),
        after: None,
        fields: Vec::new(),
    }
}

fn before(c: &ObservedContainer) -> Before {
    Before {
        id: c.id.clone(),
        image: c.image.clone(),
        state: c.state.clone(),
        exit_code: c.exit_code,
    }
}

fn node_change(node: &NodeSpec, existing: Option<&ObservedContainer>) -> Change {
    let mut change = Change {
        node: node.name.clone(),
        host: node.host.clone(),
        role: node.role,
        action: Action::NoOp,
        cause: String::new(),
        before: existing.map(before),
        after: Some(node.clone()),
        fields: Vec::new(),
    };
    let Some(c) = existing else {
        change.action = Action::Create;
        change.cause = format!("no container `{}` on `{}`", node.name, node.host);
        return change;
    };
    let want_hash = node.spec_hash();
    if c.spec_hash() != Some(want_hash.as_str()) {
        change.action = Action::Replace;
        match c.recorded_spec() {
            Some(old) => {
                change.fields = field_changes(&old, node);
                change.cause = if change.fields.is_empty() {
                    "spec changed (label schema or defaults)".to_string()
                } else {
                    // Name the settings that changed; the flags they imply
                    // show in the field diff. Flags alone are named when
                    // nothing else changed (ports moved, for example).
                    let settings: Vec<&FieldChange> = change
                        .fields
                        .iter()
                        .filter(|f| !crate::model::is_ray_flag(&f.field))
                        .collect();
                    let named: Vec<&FieldChange> = if settings.is_empty() {
                        change.fields.iter().collect()
                    } else {
                        settings
                    };
                    named
                        .iter()
                        .map(|f| match (&f.before, &f.after) {
                            (Some(b), Some(a)) => format!("{} {b} -> {a}", f.field),
                            (None, Some(a)) => format!("{} {a} added", f.field),
                            (Some(_), None) => format!("{} removed", f.field),
                            (None, None) => f.field.clone(),
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                };
            }
            None => {
                change.cause = "spec hash differs and the old spec is not recorded".to_string();
            }
        }
        return change;
    }
    if c.image != node.image && !c.image.starts_with("sha256:") {
        change.action = Action::Replace;
        change.cause = format!("runs image `{}`, expected `{}`", c.image, node.image);
        return change;
    }
    match c.state.as_str() {
        "running" | "restarting" => {
            change.cause = format!("container {}", c.state);
        }
        "exited" | "created" => {
            change.action = Action::Start;
            change.cause = match (c.state.as_str(), c.exit_code) {
                ("exited", Some(code)) => format!("container exited (code {code})"),
                ("exited", None) => "container exited".to_string(),
                _ => "container created but never started".to_string(),
            };
        }
        other => {
            change.action = Action::Replace;
            change.cause = format!("container is {other}");
        }
    }
    change
}

/// Field-level differences between two specs, by their review lines.
pub fn field_changes(old: &NodeSpec, new: &NodeSpec) -> Vec<FieldChange> {
    let old_lines: BTreeMap<String, String> = old.review_lines().into_iter().collect();
    let new_lines = new.review_lines();
    let mut out = Vec::new();
    for (k, v) in &new_lines {
        match old_lines.get(k) {
            Some(o) if o == v => {}
            o => out.push(FieldChange {
                field: k.clone(),
                before: o.cloned(),
                after: Some(v.clone()),
            }),
        }
    }
    for (k, v) in &old_lines {
        if !new_lines.iter().any(|(nk, _)| nk == k) {
            out.push(FieldChange {
                field: k.clone(),
                before: Some(v.clone()),
                after: None,
            });
        }
    }
    out
}

/// Sums for the plan's last line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Summary {
    pub add: usize,
    pub change: usize,
    pub destroy: usize,
}

impl Summary {
    pub fn of(changes: &[Change]) -> Summary {
        let mut s = Summary::default();
        for c in changes {
            match c.action {
                Action::Create => s.add += 1,
                Action::Start => s.change += 1,
                Action::Replace => {
                    s.add += 1;
                    s.destroy += 1
                }
                Action::Remove => s.destroy += 1,
                Action::NoOp => {}
            }
        }
        s
    }

    pub fn is_empty(&self) -> bool {
        self.add == 0 && self.change == 0 && self.destroy == 0
    }
}

// ---------------------------------------------------------------------------
// Schedule

/// One unit of work for apply.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Step {
    /// Fetch an image missing on a host.
    PullImage {
        host: HostName,
        image: String,
    },
    /// Let Ray move work off a worker before its container goes.
    Drain {
        host: HostName,
        node: NodeName,
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
    Start {
        host: HostName,
        node: NodeName,
    },
    /// Head: GCS (and Serve) answer. Worker: Ray lists it ALIVE.
    WaitReady {
        host: HostName,
        node: NodeName,
    },
}

impl Step {
    pub fn host(&self) -> &HostName {
        match self {
            Step::PullImage { host, .. }
            | Step::Drain { host, .. }
            | Step::Remove { host, .. }
            | Step::Create { host, .. }
            | Step::Start { host, .. }
            | Step::WaitReady { host, .. } => host,
        }
    }

    pub fn node(&self) -> Option<&NodeName> {
        match self {
            Step::PullImage { .. } => None,
            Step::Drain { node, .. }
            | Step::Remove { node, .. }
            | Step::Create { node, .. }
            | Step::Start { node, .. }
            | Step::WaitReady { node, .. } => Some(node),
        }
    }

    pub fn verb(&self) -> &'static str {
        match self {
            Step::PullImage { .. } => "pull",
            Step::Drain { .. } => "drain",
            Step::Remove { .. } => "remove",
            Step::Create { .. } => "create",
            Step::Start { .. } => "start",
            Step::WaitReady { .. } => "wait-ready",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::PullImage { host, image } => write!(f, "pull {image} on {host}"),
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
pub fn schedule(changes: &[Change], missing_images: &BTreeSet<(HostName, String)>) -> PlanGraph {
    let mut g: DiGraph<Step, ()> = DiGraph::new();
    let mut idx: BTreeMap<Step, NodeIndex> = BTreeMap::new();
    let mut add = |g: &mut DiGraph<Step, ()>, s: Step| -> NodeIndex {
        *idx.entry(s.clone()).or_insert_with(|| g.add_node(s))
    };

    let head_running_after = changes
        .iter()
        .any(|c| c.role == Role::Head && c.action != Action::Remove);
    let head_wait: Option<NodeIndex> = changes
        .iter()
        .find(|c| {
            c.role == Role::Head
                && matches!(c.action, Action::Create | Action::Start | Action::Replace)
        })
        .map(|c| {
            add(
                &mut g,
                Step::WaitReady {
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
                    },
                );
                g.add_edge(d, r, ());
            }
            removes_by_host.entry(host.clone()).or_default().push(r);
            match c.role {
                Role::Head => head_remove = Some(r),
                Role::Worker => worker_removes.push(r),
            }
            r
        });
        match c.action {
            Action::NoOp | Action::Remove => {}
            Action::Create | Action::Replace | Action::Start => {
                let start = add(
                    &mut g,
                    Step::Start {
                        host: host.clone(),
                        node: node.clone(),
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
                        if missing_images.contains(&(host.clone(), image.clone())) {
                            let p = add(
                                &mut g,
                                Step::PullImage {
                                    host: host.clone(),
                                    image,
                                },
                            );
                            g.add_edge(p, create, ());
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
                g.add_edge(start, wait, ());
                if c.role == Role::Worker {
                    if let Some(hw) = head_wait {
                        g.add_edge(hw, start, ());
                    }
                }
            }
        }
    }
    // On one host, removals free names and ports before anything is created.
    for (host, removes) in &removes_by_host {
        if let Some(creates) = creates_by_host.get(host) {
            for r in removes {
                for c in creates {
                    if g.find_edge(*r, *c).is_none() {
                        g.add_edge(*r, *c, ());
                    }
                }
            }
        }
    }
    // The head goes last: workers are removed before it.
    if let Some(hr) = head_remove {
        for w in &worker_removes {
            g.add_edge(*w, hr, ());
        }
    }
    PlanGraph { graph: g }
}

/// A fingerprint of what was observed on each host the plan touches: our
/// containers and any holding a name we need. A saved plan is stale when the
/// hosts no longer give the same fingerprint.
pub fn fingerprint(observed: &ObservedState, desired: &DesiredState) -> BTreeMap<HostName, String> {
    let names: BTreeSet<&str> = desired.nodes.iter().map(|n| n.name.as_str()).collect();
    let mut hosts: BTreeSet<HostName> = desired.hosts().into_iter().collect();
    hosts.extend(observed.hosts.keys().cloned());
    let mut out = BTreeMap::new();
    for h in hosts {
        let mut hasher = Sha256::new();
        match observed.hosts.get(&h) {
            Some(o) if o.reachable => {
                let mut lines: Vec<String> = o
                    .containers
                    .iter()
                    .filter(|c| {
                        c.cluster() == Some(desired.cluster.as_str())
                            || names.contains(c.name.as_str())
                    })
                    .map(|c| {
                        format!(
                            "{}\t{}\t{}\t{}\t{}",
                            c.name,
                            c.id,
                            c.state,
                            c.image,
                            c.spec_hash().unwrap_or("")
                        )
                    })
                    .collect();
                lines.sort();
                for l in lines {
                    hasher.update(l.as_bytes());
                    hasher.update(b"\n");
                }
            }
            Some(_) => hasher.update(b"unreachable"),
            None => hasher.update(b"absent"),
        }
        out.insert(h, hex(&hasher.finalize())[..16].to_string());
    }
    out
}

/// Facts about a host shown in the plan header.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostFacts {
    pub host: HostName,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineInfo>,
    /// Images the configuration needs that the host lacks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing_images: Vec<String>,
}

/// A complete plan: data first, rendered and applied later.
#[derive(Debug, Clone)]
pub struct Plan {
    pub cluster: String,
    /// Overrides in force, as the header names them.
    pub overrides: Vec<String>,
    pub hosts: Vec<HostFacts>,
    /// One per declared node (no-ops included), then removals.
    pub changes: Vec<Change>,
    /// Remarks for reviewers (head-only cluster, images to pull...).
    pub notes: Vec<String>,
    pub graph: PlanGraph,
    pub fingerprint: BTreeMap<HostName, String>,
    /// Ports each host must accept from the other hosts.
    pub firewall: Vec<crate::topology::HostFirewall>,
}

impl Plan {
    pub fn summary(&self) -> Summary {
        Summary::of(&self.changes)
    }

    /// Changes that do something.
    pub fn effective(&self) -> impl Iterator<Item = &Change> {
        self.changes.iter().filter(|c| c.action != Action::NoOp)
    }
}

/// Diffs, schedules and fingerprints: the whole planning core in one call.
pub fn build(
    desired: &DesiredState,
    observed: &ObservedState,
    options: DiffOptions,
    overrides: Vec<String>,
) -> Result<Plan, PlanError> {
    let changes = diff(desired, observed, options)?;
    Ok(assemble(desired, observed, changes, overrides))
}

/// A plan that removes this cluster's containers from every observed host:
/// the workers first, the head last (kept with `workers_only`).
pub fn destroy(desired: &DesiredState, observed: &ObservedState, workers_only: bool) -> Plan {
    let mut changes = Vec::new();
    for (host, obs) in &observed.hosts {
        for c in &obs.containers {
            if c.cluster() != Some(desired.cluster.as_str()) {
                continue;
            }
            let change = removal(
                host,
                c,
                if workers_only {
                    "destroy --workers-only".to_string()
                } else {
                    "destroy".to_string()
                },
            );
            if !(workers_only && change.role == Role::Head) {
                changes.push(change);
            }
        }
    }
    // Workers first (highest numbers first), the head last.
    changes.sort_by(|a, b| {
        (
            a.role == Role::Head,
            std::cmp::Reverse(ordinal_key(&a.node).1),
            ordinal_key(&a.node).0,
            &a.host,
        )
            .cmp(&(
                b.role == Role::Head,
                std::cmp::Reverse(ordinal_key(&b.node).1),
                ordinal_key(&b.node).0,
                &b.host,
            ))
    });
    if workers_only {
        // The head stays: mark it as such so the schedule drains workers first.
        let head = desired.head();
        changes.insert(
            0,
            Change {
                node: head.name.clone(),
                host: head.host.clone(),
                role: Role::Head,
                action: Action::NoOp,
                cause: "kept (--workers-only)".to_string(),
                before: None,
                after: Some(head.clone()),
                fields: Vec::new(),
            },
        );
    }
    assemble(desired, observed, changes, Vec::new())
}

fn assemble(
    desired: &DesiredState,
    observed: &ObservedState,
    changes: Vec<Change>,
    overrides: Vec<String>,
) -> Plan {
    let mut missing: BTreeSet<(HostName, String)> = BTreeSet::new();
    let mut hosts = Vec::new();
    for (host, images) in desired.images_by_host() {
        let Some(obs) = observed.hosts.get(&host) else {
            continue;
        };
        let mut lacking = Vec::new();
        if let Some(known) = &obs.images {
            for image in images {
                if !matches!(known.get(&image), Some(Some(_))) {
                    lacking.push(image.clone());
                }
            }
        }
        for image in &lacking {
            missing.insert((host.clone(), image.clone()));
        }
        hosts.push(HostFacts {
            host: host.clone(),
            engine: obs.engine.clone(),
            missing_images: lacking,
        });
    }
    // Keep the topology order of hosts.
    let order = desired.hosts();
    hosts.sort_by_key(|h| order.iter().position(|o| *o == h.host));

    let graph = schedule(&changes, &missing);
    let mut notes = Vec::new();
    if desired.workers().next().is_none() {
        notes.push(
            "This cluster has no workers: only the head will run (add a `[workers.NAME]` group to add some)."
                .to_string(),
        );
    }
    for h in &hosts {
        for image in &h.missing_images {
            let used = graph
                .graph
                .node_weights()
                .any(|s| matches!(s, Step::PullImage { host, image: i } if *host == h.host && i == image));
            if used {
                notes.push(format!(
                    "Image `{image}` is missing on `{}`: apply will pull it there.",
                    h.host
                ));
            }
        }
    }
    Plan {
        cluster: desired.cluster.clone(),
        overrides,
        hosts,
        fingerprint: fingerprint(observed, desired),
        firewall: crate::topology::firewall(desired),
        changes,
        notes,
        graph,
    }
}
