//! The diff: desired nodes against observed containers, one [`Change`] per
//! node (and per container of ours no longer declared), each with a typed
//! [`Reason`] that the renderers word. Pure and deterministic.

use crate::model::{
    excerpt, DesiredState, EngineInfo, HostName, NodeName, NodeSpec, ObservedContainer,
    ObservedState, Role,
};
use crate::ownership::{self, Owner};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// What happens to one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
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

/// Why a node's action was chosen: decided by the planner, worded by
/// [`Change::cause`]. Reasons explain; they never steer apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Reason {
    /// No container of this node on its host.
    Missing,
    /// Its container runs and matches (no-op).
    Running { state: String },
    /// Its container exited.
    Exited { exit_code: Option<i64> },
    /// Its container was created but never started.
    NeverStarted,
    /// Its container is in a state that only a new container fixes.
    BadState { state: String },
    /// Settings changed: the change's `fields` name them.
    SpecChanged,
    /// The spec hash differs and the old spec is not recorded.
    SpecUnrecorded,
    /// The container runs another image than declared.
    ImageDiffers { running: String, expected: String },
    /// The head is replaced, created or started: workers must rejoin.
    HeadReplaced { head: Action },
    /// `seedcore restart` asked for it.
    RestartRequested,
    /// Would change, but is not among the `--target`s.
    NotTargeted,
    /// Its container runs, but Ray lists the node DEAD (a frozen raylet, a
    /// node that never rejoined): only a new container brings it back.
    RayDead { since_ms: u64 },
    /// Its container has run for a while, but Ray does not list the node at
    /// all (it never joined this head, e.g. cut off while the head was replaced).
    RayMissing { running_secs: i64 },
    /// Ray does not list the node, and its container was created before the
    /// running head started: it joined an earlier head, never this one.
    PredatesHead { secs: i64 },
    /// The values of these secrets (or the Ray token, `RAY_AUTH_TOKEN`)
    /// changed: seen through their keyed digests, never their values.
    SecretsChanged { names: Vec<String> },
    /// The image was rebuilt (pushed from this machine): the container runs
    /// another image ID than the one this machine has under its name.
    ImageRebuilt { running: String, expected: String },
    /// Ours, but no longer declared on its host.
    NotDeclared,
    /// Ours, but now declared on another host.
    MovedTo { host: HostName },
    /// `seedcore destroy`.
    Destroy { workers_only: bool },
    /// Kept by `destroy --workers-only`.
    KeptByWorkersOnly,
}

/// One changed field of a replaced node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldChange {
    pub field: String,
    pub before: Option<String>,
    pub after: Option<String>,
}

/// The container that exists now: the one every step of this change acts on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Before {
    pub id: String,
    pub image: String,
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
}

/// One node's change, with its reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub node: NodeName,
    pub host: HostName,
    pub role: Role,
    pub action: Action,
    pub reason: Reason,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Before>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<NodeSpec>,
    /// Field-level differences, for replacements whose old spec is known.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldChange>,
}

impl Change {
    /// The reason as a sentence for people (values bounded and escaped).
    pub fn cause(&self) -> String {
        match &self.reason {
            Reason::Missing => format!("no container `{}` on `{}`", self.node, self.host),
            Reason::Running { state } => format!("container {}", excerpt(state, 40)),
            Reason::Exited {
                exit_code: Some(code),
            } => format!("container exited (code {code})"),
            Reason::Exited { exit_code: None } => "container exited".to_string(),
            Reason::NeverStarted => "container created but never started".to_string(),
            Reason::BadState { state } => format!("container is {}", excerpt(state, 40)),
            Reason::SpecChanged if self.fields.is_empty() => {
                "spec changed (label schema or defaults)".to_string()
            }
            Reason::SpecChanged => {
                // Name the settings that changed; the flags they imply show
                // in the field diff. Flags alone are named when nothing else
                // changed (ports moved, for example).
                let settings: Vec<&FieldChange> = self
                    .fields
                    .iter()
                    .filter(|f| !crate::model::is_ray_flag(&f.field))
                    .collect();
                let named: Vec<&FieldChange> = if settings.is_empty() {
                    self.fields.iter().collect()
                } else {
                    settings
                };
                named
                    .iter()
                    .map(|f| match (&f.before, &f.after) {
                        (Some(b), Some(a))
                            if f.field == "image" && b.contains(":ctx-") && a.contains(":ctx-") =>
                        {
                            format!(
                                "image rebuilt: context changed ({} -> {})",
                                excerpt(b, 80),
                                excerpt(a, 80)
                            )
                        }
                        (Some(b), Some(a)) => {
                            format!("{} {} -> {}", f.field, excerpt(b, 80), excerpt(a, 80))
                        }
                        (None, Some(a)) => format!("{} {} added", f.field, excerpt(a, 80)),
                        (Some(_), None) => format!("{} removed", f.field),
                        (None, None) => f.field.clone(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            }
            Reason::SpecUnrecorded => {
                "spec hash differs and the old spec is not recorded".to_string()
            }
            Reason::ImageDiffers { running, expected } => format!(
                "runs image `{}`, expected `{}`",
                excerpt(running, 120),
                excerpt(expected, 120)
            ),
            Reason::HeadReplaced { head } => format!(
                "head {}: workers must rejoin the new cluster",
                match head {
                    Action::Replace => "replaced",
                    Action::Create => "created",
                    _ => "restarted",
                }
            ),
            Reason::RestartRequested => "restart requested".to_string(),
            Reason::NotTargeted => {
                "left for a later plan (not among the --target nodes)".to_string()
            }
            Reason::RayDead { since_ms: 0 } => {
                "its container runs, but Ray lists it DEAD".to_string()
            }
            Reason::RayMissing { running_secs } => format!(
                "its container has run for {running_secs}s, but Ray does not list it (it never joined this head)"
            ),
            Reason::PredatesHead { secs } => format!(
                "its container was created {secs}s before the running head started, and Ray does not list it (it belonged to an earlier head)"
            ),
            Reason::RayDead { since_ms } => format!(
                "its container runs, but Ray lists it DEAD since {}",
                crate::model::utc(*since_ms)
            ),
            Reason::SecretsChanged { names } => {
                let names: Vec<String> = names
                    .iter()
                    .map(|n| {
                        if n == crate::model::TOKEN_SECRET_NAME {
                            "the Ray token".to_string()
                        } else {
                            format!("env.{}", excerpt(n, 80))
                        }
                    })
                    .collect();
                format!("{} changed (sensitive)", names.join(", "))
            }
            Reason::ImageRebuilt { running, expected } => format!(
                "image rebuilt: it runs {}, this machine has {}",
                excerpt(&short_id(running), 24),
                excerpt(&short_id(expected), 24)
            ),
            Reason::NotDeclared => "not in configuration".to_string(),
            Reason::MovedTo { host } => format!("moved to `{host}`"),
            Reason::Destroy {
                workers_only: false,
            } => "destroy".to_string(),
            Reason::Destroy { workers_only: true } => "destroy --workers-only".to_string(),
            Reason::KeptByWorkersOnly => "kept (--workers-only)".to_string(),
        }
    }

    /// The ID of the container this change acts on, if one exists.
    pub fn container(&self) -> Option<&str> {
        self.before.as_ref().map(|b| b.id.as_str())
    }
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

/// A container that is not ours holding a name seedcore needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub host: HostName,
    pub name: String,
    pub id: String,
    pub owner: ConflictOwner,
}

/// Who holds a name we need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConflictOwner {
    /// No seedcore labels.
    Unlabelled,
    /// Labelled for another cluster name.
    Cluster(String),
    /// Another cluster of our name (its identity and head).
    SameName { id: String, head: Option<String> },
    /// Our labels, but they name another node.
    Mislabelled(String),
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
                    writeln!(f, "  - `{h}`: {}", excerpt(why, 400))?;
                }
                write!(
                    f,
                    "hint: make every host reachable (or remove it from the configuration) and plan again; or pass `--skip-unreachable` to plan the other hosts (nothing on the unreachable ones is planned or removed; the head's host cannot be skipped), or `--target NODE|GROUP|HOST` to narrow the plan"
                )
            }
            PlanError::Conflicts(list) => {
                writeln!(
                    f,
                    "error: {} container(s) hold names this cluster needs but are not its own",
                    list.len()
                )?;
                for c in list {
                    let owner = match &c.owner {
                        ConflictOwner::Unlabelled => "no seedcore labels".to_string(),
                        ConflictOwner::Cluster(o) => {
                            format!("labelled for cluster `{}`", excerpt(o, 80))
                        }
                        ConflictOwner::SameName { id, head } => format!(
                            "another cluster of this name, id `{}`{}",
                            excerpt(id, 64),
                            head.as_ref()
                                .map(|h| format!(", head on `{}`", excerpt(h, 80)))
                                .unwrap_or_default()
                        ),
                        ConflictOwner::Mislabelled(node) => {
                            format!("its labels name another node, `{}`", excerpt(node, 120))
                        }
                    };
                    let short: String = c.id.chars().take(12).collect();
                    writeln!(
                        f,
                        "  - `{}` on `{}` (id {}, {owner})",
                        excerpt(&c.name, 120),
                        c.host,
                        excerpt(&short, 12)
                    )?;
                }
                let same_name = list.iter().find_map(|c| match &c.owner {
                    ConflictOwner::SameName { id, head } => Some((id, head)),
                    _ => None,
                });
                match same_name {
                    Some((id, head)) => write!(
                        f,
                        "hint: seedcore never touches another cluster's containers. If this configuration moved that cluster (its head was on `{}`), keep its identity with `id = \"{}\"` in `[cluster]`; otherwise choose another `cluster.name` or other group names",
                        excerpt(head.as_deref().unwrap_or("another host"), 80),
                        excerpt(id, 64)
                    ),
                    None => write!(
                        f,
                        "hint: seedcore never touches containers that are not its own; remove or rename them yourself (`docker rm -f NAME` on the host), or choose another `cluster.name`"
                    ),
                }
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
    /// Plan without the declared hosts that could not be observed: their
    /// nodes are neither planned nor removed (`--skip-unreachable`).
    pub skip_unreachable: bool,
    /// Only change these (`--target`: node, group, host, `head`, `workers`);
    /// empty for everything.
    pub targets: Vec<String>,
    /// The keyed digests of the secrets every node should carry (see
    /// `secrets`), when the head's key is known: a node carrying others is
    /// replaced.
    pub secrets: Option<BTreeMap<String, String>>,
    /// Workers of a group replaced at once (`rollout.max_unavailable`).
    pub max_unavailable: crate::config::MaxUnavailable,
}

/// Whether a change is one of the `--target`s.
pub fn targeted(targets: &[String], c: &Change) -> bool {
    targets.is_empty()
        || targets.iter().any(|t| {
            t == c.node.as_str()
                || t == c.host.as_str()
                || (t == "head" && c.role == Role::Head)
                || (t == "workers" && c.role == Role::Worker)
                || c.after.as_ref().and_then(|a| a.group.as_deref()) == Some(t.as_str())
        })
}

/// How long a container may run before a node Ray does not list is
/// replaced: a node joins in seconds.
pub const RAY_JOIN_GRACE_SECS: i64 = 60;

fn containers_on<'a>(observed: &'a ObservedState, host: &HostName) -> &'a [ObservedContainer] {
    observed
        .hosts
        .get(host)
        .map(|o| o.containers.as_slice())
        .unwrap_or(&[])
}

/// Compares desired with observed. Returns one change per desired node (in
/// topology order, including no-ops) followed by removals.
pub fn diff(
    desired: &DesiredState,
    observed: &ObservedState,
    options: DiffOptions,
) -> Result<Vec<Change>, PlanError> {
    let identity = &desired.cluster;
    let skipped: BTreeSet<HostName> = if options.skip_unreachable {
        desired
            .hosts()
            .into_iter()
            .filter(|h| {
                observed.hosts.get(h).is_some_and(|o| !o.reachable) && *h != desired.head().host
            })
            .collect()
    } else {
        BTreeSet::new()
    };
    let kept_nodes;
    let desired = if skipped.is_empty() {
        desired
    } else {
        kept_nodes = DesiredState {
            cluster: desired.cluster.clone(),
            nodes: desired
                .nodes
                .iter()
                .filter(|n| !skipped.contains(&n.host))
                .cloned()
                .collect(),
            pushed: desired.pushed.clone(),
        };
        &kept_nodes
    };

    // Every host we must see.
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

    // Conflicts: a name we need, held by a container that is not ours.
    let mut conflicts = Vec::new();
    for node in &desired.nodes {
        for c in containers_on(observed, &node.host) {
            if c.name != node.name.0 {
                continue;
            }
            let owner = match ownership::owner(identity, c) {
                Owner::Ours => continue,
                Owner::Foreign => match c.cluster() {
                    Some(name) => ConflictOwner::Cluster(name.to_string()),
                    None => ConflictOwner::Unlabelled,
                },
                Owner::OtherCluster(id) => ConflictOwner::SameName {
                    id,
                    head: c.labels.get(crate::model::LABEL_HEAD).cloned(),
                },
                Owner::Mislabelled => {
                    ConflictOwner::Mislabelled(c.node_label().unwrap_or_default().to_string())
                }
            };
            conflicts.push(Conflict {
                host: node.host.clone(),
                name: c.name.clone(),
                id: c.id.clone(),
                owner,
            });
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
        let declared: u64 = if options.oversubscribe_cpus {
            on_host.map(|n| u64::from(n.cpus)).max().unwrap_or(0)
        } else {
            on_host.map(|n| u64::from(n.cpus)).sum()
        };
        if let Some(EngineInfo { cpus, .. }) = observed.hosts[&host].engine {
            if cpus > 0 && declared > u64::from(cpus) {
                short.push((host.clone(), declared.min(u64::from(u32::MAX)) as u32, cpus));
            }
        }
    }
    if !short.is_empty() {
        return Err(PlanError::Cpus(short));
    }

    let mut changes = Vec::new();
    for node in &desired.nodes {
        let existing = ownership::ours(identity, containers_on(observed, &node.host))
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
            change.reason = Reason::RestartRequested;
        }
        changes.push(change);
    }

    // Pushed images: a node that stays but runs another image ID than this
    // machine has under the name (the image was rebuilt).
    for c in changes.iter_mut() {
        if !matches!(c.action, Action::NoOp | Action::Start) {
            continue;
        }
        let Some(spec) = &c.after else { continue };
        let Some(src) = observed.sources.get(&spec.image) else {
            continue;
        };
        let running = c
            .container()
            .and_then(|id| containers_on(observed, &c.host).iter().find(|x| x.id == id))
            .and_then(|x| x.image_id.clone());
        if let Some(running) = running {
            if !src.id.is_empty() && running != src.id {
                c.action = Action::Replace;
                c.reason = Reason::ImageRebuilt {
                    running,
                    expected: src.id.clone(),
                };
            }
        }
    }

    // Secrets: a node that stays but carries other digests than expected.
    if let Some(expected) = &options.secrets {
        for c in changes.iter_mut() {
            if !matches!(c.action, Action::NoOp | Action::Start) {
                continue;
            }
            let Some(container) = c
                .container()
                .and_then(|id| containers_on(observed, &c.host).iter().find(|x| x.id == id))
            else {
                continue;
            };
            let carried = crate::secrets::parse_label(
                container
                    .labels
                    .get(crate::model::LABEL_SECRETS)
                    .map(String::as_str),
            );
            let names = crate::secrets::changed(&carried, expected);
            if !names.is_empty() {
                c.action = Action::Replace;
                c.reason = Reason::SecretsChanged { names };
            }
        }
    }

    // Ray's own view, when the head answered: a worker whose container runs
    // but that Ray lists DEAD (and nowhere ALIVE) is restarted.
    if let Some(ray) = &observed.ray {
        // When the running head's raylet started (Ray's clock).
        let head_started_ms = ray
            .iter()
            .filter(|n| n.is_head_node && n.is_alive())
            .find_map(|n| n.start_time_ms);
        for c in changes.iter_mut() {
            let Some(spec) = &c.after else { continue };
            if c.role != Role::Worker || c.action != Action::NoOp {
                continue;
            }
            let entries: Vec<&crate::model::RayNode> = ray
                .iter()
                .filter(|n| n.node_name == spec.name.0 && n.node_ip == spec.node_ip)
                .collect();
            let alive = entries.iter().any(|n| n.is_alive());
            if let (false, Some(dead)) = (alive, entries.iter().max_by_key(|n| n.end_time_ms)) {
                c.action = Action::Replace;
                c.reason = Reason::RayDead {
                    since_ms: dead.end_time_ms.unwrap_or(0),
                };
                continue;
            }
            // Not listed at all: replaced once its container has had the time
            // to join (a minute), never while it may still be starting.
            // One created before the running head's cannot have joined it.
            if entries.is_empty() {
                let created = c.container().and_then(|id| {
                    containers_on(observed, &c.host)
                        .iter()
                        .find(|x| x.id == id)
                        .and_then(|x| x.created)
                });
                if let (Some(head_ms), Some(created)) = (head_started_ms, created) {
                    let head = i64::try_from(head_ms / 1000).unwrap_or(i64::MAX);
                    if created < head {
                        c.action = Action::Replace;
                        c.reason = Reason::PredatesHead {
                            secs: head - created,
                        };
                        continue;
                    }
                }
                if let (Some(now), Some(created)) = (observed.observed_at, created) {
                    let running_secs = now - created;
                    if running_secs >= RAY_JOIN_GRACE_SECS {
                        c.action = Action::Replace;
                        c.reason = Reason::RayMissing { running_secs };
                    }
                }
            }
        }
    }

    // A head that is not simply left running takes every worker with it:
    // a new GCS is a new cluster, and the old workers cannot rejoin it.
    let head_action = changes
        .iter()
        .find(|c| c.role == Role::Head)
        .map(|c| c.action);
    if let Some(head @ (Action::Replace | Action::Create | Action::Start)) = head_action {
        for c in changes.iter_mut().filter(|c| c.role == Role::Worker) {
            if matches!(c.action, Action::NoOp | Action::Start) {
                c.action = Action::Replace;
                c.reason = Reason::HeadReplaced { head };
                c.fields.clear();
            }
        }
    }

    // Orphans: ours, on any observed host, but not declared there.
    let declared: BTreeSet<(&HostName, &str)> = desired
        .nodes
        .iter()
        .map(|n| (&n.host, n.name.as_str()))
        .collect();
    let mut orphans = Vec::new();
    for (host, obs) in &observed.hosts {
        for c in ownership::ours(identity, &obs.containers) {
            if !declared.contains(&(host, c.name.as_str())) {
                let reason = desired
                    .nodes
                    .iter()
                    .find(|n| n.name.0 == c.name)
                    .map(|n| Reason::MovedTo {
                        host: n.host.clone(),
                    })
                    .unwrap_or(Reason::NotDeclared);
                orphans.push(removal(host, c, reason));
            }
        }
    }
    sort_removals(&mut orphans);
    changes.extend(orphans);

    // `--target`: other changes wait for a later plan; nodes that stay keep
    // their entry (as no-ops), removals of others are left out.
    if !options.targets.is_empty() {
        changes.retain(|c| c.after.is_some() || targeted(&options.targets, c));
        for c in changes.iter_mut() {
            if c.action != Action::NoOp && !targeted(&options.targets, c) {
                c.action = Action::NoOp;
                c.reason = Reason::NotTargeted;
                c.fields.clear();
            }
        }
    }
    Ok(changes)
}

/// Removals in order: workers first, by host, highest index first; the head last.
pub(crate) fn sort_removals(changes: &mut [Change]) {
    changes.sort_by(|a, b| {
        let key = |c: &Change| {
            (
                c.role == Role::Head,
                c.host.clone(),
                std::cmp::Reverse(ordinal_key(&c.node)),
            )
        };
        key(a).cmp(&key(b))
    });
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

/// The removal of one of our containers.
pub(crate) fn removal(host: &HostName, c: &ObservedContainer, reason: Reason) -> Change {
    Change {
        node: NodeName(c.name.clone()),
        host: host.clone(),
        role: c.role(),
        action: Action::Remove,
        reason,
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
        reason: Reason::Missing,
        before: existing.map(before),
        after: Some(node.clone()),
        fields: Vec::new(),
    };
    let Some(c) = existing else {
        change.action = Action::Create;
        return change;
    };
    let want_hash = node.spec_hash();
    if c.spec_hash() != Some(want_hash.as_str()) {
        change.action = Action::Replace;
        match c.recorded_spec() {
            Some(old) => {
                change.fields = field_changes(&old, node);
                change.reason = Reason::SpecChanged;
            }
            None => change.reason = Reason::SpecUnrecorded,
        }
        return change;
    }
    if c.image != node.image && !c.image.starts_with("sha256:") {
        change.action = Action::Replace;
        change.reason = Reason::ImageDiffers {
            running: c.image.clone(),
            expected: node.image.clone(),
        };
        return change;
    }
    match c.state.as_str() {
        "running" | "restarting" => {
            change.reason = Reason::Running {
                state: c.state.clone(),
            };
        }
        "exited" => {
            change.action = Action::Start;
            change.reason = Reason::Exited {
                exit_code: c.exit_code,
            };
        }
        "created" => {
            // Left between create and start (an apply cut off): it may lack
            // the files a node gets before it starts. Only a new one is sure.
            change.action = Action::Replace;
            change.reason = Reason::NeverStarted;
        }
        other => {
            change.action = Action::Replace;
            change.reason = Reason::BadState {
                state: other.to_string(),
            };
        }
    }
    change
}

/// Field-level differences between two specs, by their review lines.
pub fn field_changes(old: &NodeSpec, new: &NodeSpec) -> Vec<FieldChange> {
    let old_lines: BTreeMap<String, String> = old.review_lines().into_iter().collect();
    let new_lines = new.review_lines();
    let new_keys: BTreeSet<&str> = new_lines.iter().map(|(k, _)| k.as_str()).collect();
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
        if !new_keys.contains(k.as_str()) {
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
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

/// `sha256:0123456789ab...` -> `0123456789ab`.
fn short_id(id: &str) -> String {
    id.strip_prefix("sha256:")
        .unwrap_or(id)
        .chars()
        .take(12)
        .collect()
}
