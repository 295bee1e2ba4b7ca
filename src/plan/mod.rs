//! The plan: what must change for the hosts to match the configuration.
//!
//! [`diff`] compares the desired nodes with what was observed and returns one
//! [`Change`] per node (and per container of ours no longer declared), each
//! with a typed [`Reason`]. [`schedule`] turns the changes into a dependency
//! graph of [`Step`]s that apply walks. [`fingerprint`] records what the plan
//! was made from, so a saved plan ([`artifact`]) is refused once the hosts
//! changed. All of it is pure and deterministic.

pub mod artifact;
pub mod diff;
pub mod schedule;

pub use diff::{
    diff, field_changes, Action, Before, Change, Conflict, ConflictOwner, DiffOptions, FieldChange,
    PlanError, Reason, Summary,
};
pub use schedule::{schedule, NumberedStep, PlanGraph, Rollout, Step};

use crate::model::{hex, ClusterIdentity, DesiredState, EngineInfo, HostName, ObservedState, Role};
use crate::ownership::{self, OtherCluster, Owner};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

/// What was observed on one host that the plan depends on: our containers,
/// those of another cluster of our name, any holding a name we need, and the
/// presence of each image we need. One line each, sorted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFingerprint {
    pub lines: Vec<String>,
}

impl HostFingerprint {
    /// A short digest of the lines, for display.
    pub fn digest(&self) -> String {
        let mut hasher = Sha256::new();
        for l in &self.lines {
            hasher.update(l.as_bytes());
            hasher.update(b"\n");
        }
        hex(&hasher.finalize())[..16].to_string()
    }
}

/// The fingerprint of every host the plan touches or observed.
pub fn fingerprint(
    observed: &ObservedState,
    desired: &DesiredState,
) -> BTreeMap<HostName, HostFingerprint> {
    let names: BTreeSet<&str> = desired.nodes.iter().map(|n| n.name.as_str()).collect();
    let images = desired.images_by_host();
    let mut hosts: BTreeSet<HostName> = desired.hosts().into_iter().collect();
    hosts.extend(observed.hosts.keys().cloned());
    let mut out = BTreeMap::new();
    for h in hosts {
        let mut lines = Vec::new();
        match observed.hosts.get(&h) {
            Some(o) if o.reachable => {
                for c in &o.containers {
                    let relevant = names.contains(c.name.as_str())
                        || ownership::owner(&desired.cluster, c) != Owner::Foreign;
                    if relevant {
                        lines.push(format!(
                            "container {} id={} state={} image={} spec={} cluster={}",
                            c.name,
                            c.id,
                            c.state,
                            c.image.replace(' ', "_"),
                            c.spec_hash().unwrap_or("-"),
                            c.cluster_id().unwrap_or("-"),
                        ));
                    }
                }
                if let (Some(known), Some(needed)) = (&o.images, images.get(&h)) {
                    for image in needed {
                        let id = known.get(image).cloned().flatten();
                        lines.push(format!(
                            "image {image} id={}",
                            id.as_deref().unwrap_or("missing")
                        ));
                    }
                }
            }
            Some(_) => lines.push("host unreachable".to_string()),
            None => lines.push("host not observed".to_string()),
        }
        lines.sort();
        out.insert(h, HostFingerprint { lines });
    }
    out
}

/// Facts about a host shown in the plan header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostFacts {
    pub host: HostName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineInfo>,
    /// Images the configuration needs that the host lacks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_images: Vec<String>,
}

/// A complete plan: data first, rendered and applied later.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub cluster: ClusterIdentity,
    /// The environment (`--env NAME`) the plan was made in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// Overrides in force, as the header names them.
    pub overrides: Vec<String>,
    pub hosts: Vec<HostFacts>,
    /// One per declared node (no-ops included), then removals.
    pub changes: Vec<Change>,
    /// Remarks for reviewers (head-only cluster, images to pull...).
    pub notes: Vec<String>,
    /// Other clusters of this name on these hosts: left alone.
    #[serde(default)]
    pub others: Vec<OtherCluster>,
    pub graph: PlanGraph,
    pub fingerprint: BTreeMap<HostName, HostFingerprint>,
    /// Ports each host must accept from the other hosts.
    pub firewall: Vec<crate::topology::HostFirewall>,
    /// The preflight checks, when the plan was made against live hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preflight: Option<crate::checks::Report>,
    /// The keyed digests of the secrets the plan was made with (never their
    /// values): a saved plan is stale once they differ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<BTreeMap<String, String>>,
    /// Groups whose workers are replaced a few at a time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollouts: Vec<Rollout>,
    /// What stopping each running node interrupts, for the nodes the plan
    /// stops (replaces or removes).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub interrupts: BTreeMap<crate::model::NodeName, Interrupts>,
}

/// What stopping a node interrupts, as Ray reported it when planning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interrupts {
    /// `false`: the head's state API did not answer.
    pub known: bool,
    #[serde(flatten)]
    pub work: crate::model::NodeWork,
}

impl Interrupts {
    pub fn describe(&self) -> String {
        if self.known {
            self.work.describe()
        } else {
            "unknown (Ray's state API did not answer)".to_string()
        }
    }
}

/// For each running node the plan stops: what runs there (the head: all of
/// the cluster's work).
fn interrupts(
    changes: &[Change],
    observed: &ObservedState,
) -> BTreeMap<crate::model::NodeName, Interrupts> {
    let mut out = BTreeMap::new();
    for c in changes {
        let stops = matches!(c.action, Action::Replace | Action::Remove)
            && c.before.as_ref().is_some_and(|b| b.state == "running");
        if !stops {
            continue;
        }
        let i = match &observed.work {
            None => Interrupts {
                known: false,
                work: Default::default(),
            },
            Some(work) if c.role == Role::Head => Interrupts {
                known: true,
                work: work.all.clone(),
            },
            Some(work) => {
                let id = observed
                    .ray
                    .iter()
                    .flatten()
                    .find(|n| n.node_name == c.node.0 && n.state == "ALIVE");
                Interrupts {
                    known: true,
                    work: id
                        .and_then(|n| work.nodes.get(&n.node_id).cloned())
                        .unwrap_or_default(),
                }
            }
        };
        out.insert(c.node.clone(), i);
    }
    out
}

impl Plan {
    pub fn summary(&self) -> Summary {
        Summary::of(&self.changes)
    }

    /// Changes that do something.
    pub fn effective(&self) -> impl Iterator<Item = &Change> {
        self.changes.iter().filter(|c| c.action != Action::NoOp)
    }

    /// The desired state the plan was made for: every node it keeps or
    /// brings up, in topology order.
    pub fn desired(&self) -> DesiredState {
        DesiredState {
            cluster: self.cluster.clone(),
            nodes: self
                .changes
                .iter()
                .filter(|c| c.action != Action::Remove)
                .filter_map(|c| c.after.clone())
                .collect(),
            // How images arrive is settled by the plan's steps.
            pushed: BTreeSet::new(),
        }
    }
}

/// Diffs, schedules and fingerprints: the whole planning core in one call.
pub fn build(
    desired: &DesiredState,
    observed: &ObservedState,
    options: DiffOptions,
    overrides: Vec<String>,
) -> Result<Plan, PlanError> {
    let skip = options.skip_unreachable;
    let targets = options.targets.clone();
    let secrets = options.secrets.clone();
    let max_unavailable = options.max_unavailable;
    let changes = diff(desired, observed, options)?;
    let mut plan = assemble(desired, observed, changes, overrides, max_unavailable);
    plan.interrupts = interrupts(&plan.changes, observed);
    let head_stopped = plan
        .changes
        .iter()
        .find(|c| c.role == Role::Head)
        .and_then(|c| plan.interrupts.get(&c.node));
    if let Some(i) = head_stopped {
        let note = format!(
            "Stopping the head interrupts everything on the cluster: {}.",
            i.describe()
        );
        plan.notes.push(note);
    }
    plan.secrets = secrets;
    if skip {
        for h in desired.hosts() {
            if let Some(o) = observed.hosts.get(&h).filter(|o| !o.reachable) {
                plan.notes.push(format!(
                    "Skipped `{h}` ({}): its nodes are neither planned nor removed; plan again once it answers.",
                    crate::model::excerpt(o.error.as_deref().unwrap_or("no answer"), 200)
                ));
            }
        }
    }
    if !targets.is_empty() {
        let left = plan
            .changes
            .iter()
            .filter(|c| c.reason == Reason::NotTargeted)
            .count();
        let list: Vec<String> = targets
            .iter()
            .map(|t| format!("`{}`", crate::model::excerpt(t, 120)))
            .collect();
        plan.notes.push(format!(
            "Targeted: {}. {left} other change(s) are left for a later plan.",
            list.join(", ")
        ));
    }
    Ok(plan)
}

/// A plan that removes this cluster's containers from every observed host:
/// every node at once (the head kept with `workers_only`).
pub fn destroy(desired: &DesiredState, observed: &ObservedState, workers_only: bool) -> Plan {
    let mut changes = Vec::new();
    for (host, obs) in &observed.hosts {
        for c in ownership::ours(&desired.cluster, &obs.containers) {
            let change = diff::removal(host, c, Reason::Destroy { workers_only });
            if !(workers_only && change.role == Role::Head) {
                changes.push(change);
            }
        }
    }
    diff::sort_removals(&mut changes);
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
                reason: Reason::KeptByWorkersOnly,
                before: None,
                after: Some(head.clone()),
                fields: Vec::new(),
            },
        );
    }
    assemble(desired, observed, changes, Vec::new(), Default::default())
}

fn assemble(
    desired: &DesiredState,
    observed: &ObservedState,
    changes: Vec<Change>,
    overrides: Vec<String>,
    max_unavailable: crate::config::MaxUnavailable,
) -> Plan {
    let mut missing: BTreeSet<(HostName, String)> = BTreeSet::new();
    let mut pushes = schedule::Transfers::new();
    let mut hosts = Vec::new();
    let pushed = desired.pushed_images_by_host();
    for (host, images) in desired.images_by_host() {
        let pushed_here = |image: &String| pushed.get(&host).is_some_and(|l| l.contains(image));
        let Some(obs) = observed.hosts.get(&host) else {
            continue;
        };
        let mut lacking = Vec::new();
        if let Some(known) = &obs.images {
            for image in images {
                let here = known.get(&image).cloned().flatten();
                if observed.to_build.contains(&image) && here.is_none() {
                    // Built by this apply: its layers are known only then.
                    pushes.insert((host.clone(), image.clone()), (0, 0, 0));
                    lacking.push(image.clone());
                    continue;
                }
                match observed.sources.get(&image).filter(|_| pushed_here(&image)) {
                    // Pushed: the host needs exactly the source's image.
                    Some(src) if here.as_deref() != Some(src.id.as_str()) => {
                        let has = obs.layers.clone().unwrap_or_default();
                        let missing_layers = src.missing(&has).count() as u32;
                        pushes.insert(
                            (host.clone(), image.clone()),
                            (src.bytes_for(&has), missing_layers, src.layers.len() as u32),
                        );
                        lacking.push(image.clone());
                    }
                    Some(_) => {}
                    None if here.is_none() => lacking.push(image.clone()),
                    None => {}
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

    let rollouts = schedule::rollouts(&changes, max_unavailable);
    let graph = schedule(&changes, &missing, &pushes, &observed.to_build, &rollouts);
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
                    "Image `{}` is missing on `{}`: apply will pull it there.",
                    crate::model::excerpt(image, 200),
                    h.host
                ));
            }
            let pushed = graph.graph.node_weights().find_map(|s| match s {
                Step::PushImage {
                    host,
                    image: i,
                    bytes,
                    layers,
                    of,
                } if *host == h.host && i == image => Some((*bytes, *layers, *of)),
                _ => None,
            });
            if let Some((_, 0, 0)) = pushed {
                notes.push(format!(
                    "Image `{}` will be built on this machine, then pushed to `{}` (only the layers it lacks).",
                    crate::model::excerpt(image, 200),
                    h.host
                ));
            } else if let Some((bytes, layers, of)) = pushed {
                let from = match observed.sources.get(image).and_then(|s| s.from.as_ref()) {
                    Some(relay) => format!("from `{relay}` (relayed through this machine)"),
                    None => "from this machine".to_string(),
                };
                notes.push(format!(
                    "Image `{}` will be pushed {from} to `{}`: {layers} of its {of} layers, {}.",
                    crate::model::excerpt(image, 200),
                    h.host,
                    crate::model::human_size(bytes)
                ));
            }
        }
    }
    let others = ownership::others(&desired.cluster, observed);
    for o in &others {
        let hosts: Vec<String> = o.hosts.iter().map(|h| format!("`{h}`")).collect();
        notes.push(format!(
            "Another cluster `{}` (id `{}`) with its head on `{}` runs {} node(s) on {}: seedcore leaves them alone.",
            desired.cluster.name,
            crate::model::excerpt(&o.id, 64),
            crate::model::excerpt(o.head.as_deref().unwrap_or("an unknown host"), 80),
            o.nodes,
            hosts.join(", ")
        ));
    }
    for r in &rollouts {
        notes.push(format!(
            "Workers of group `{}` are replaced in {} waves of at most {} (`rollout.max_unavailable`): each drained, replaced and seen ALIVE before the next wave; a failed wave stops the rollout.",
            crate::model::excerpt(&r.group, 64),
            r.waves.len(),
            r.max_unavailable
        ));
    }
    Plan {
        cluster: desired.cluster.clone(),
        environment: None,
        overrides,
        hosts,
        rollouts,
        interrupts: BTreeMap::new(),
        fingerprint: fingerprint(observed, desired),
        firewall: crate::topology::firewall(desired),
        changes,
        notes,
        others,
        graph,
        preflight: None,
        secrets: None,
    }
}
