//! Apply, destroy and restart as two calls around the operator's approval:
//! [`prepare`] (or [`prepare_destroy`], [`prepare_restart`]) connects,
//! observes and plans; the caller shows the plan and asks; [`execute`] walks
//! it, remembers the cluster's hosts on every host, and (for an apply) waits
//! until Ray lists every declared node up.

use super::session::{self, Hosts};
use super::{config_digest, Error, Result};
use crate::apply::{self as executor, ApplyOptions, Outcome, Reporter};
use crate::config::Loaded;
use crate::memory;
use crate::model::{DesiredState, HostName, NodeName};
use crate::plan::artifact::{SavedPlan, SavedPlanError};
use crate::plan::{self, DiffOptions, Plan, Step, Summary};
use futures_util::stream::{self, StreamExt};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

/// What a run is for: it changes the last checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Apply,
    Destroy,
}

/// A plan ready to be shown, approved and executed, with the open session.
pub struct Prepared {
    pub hosts: Hosts,
    pub desired: DesiredState,
    pub plan: Plan,
    pub kind: Kind,
    /// Executing a saved plan (already reviewed).
    pub saved: bool,
    /// What the head keeps (digest key, generated token), as observed.
    pub head_secrets: crate::secrets::HeadSecrets,
    /// The command, for the audit trail (`apply`, `destroy`, `restart`).
    pub command: &'static str,
    /// What push steps need (`image_source = "push"`).
    pub pushes: crate::apply::Pushes,
    /// Ray's node list as observed with the plan, when the head answered.
    pub ray: Option<Vec<crate::ray::RayNode>>,
}

/// How an executed plan ended.
#[derive(Debug, Clone)]
pub struct Finished {
    pub summary: Summary,
    pub elapsed: Duration,
    /// Said after the summary (hosts that could not keep their list).
    pub warnings: Vec<String>,
}

/// Reads a saved plan and checks it was made from this configuration.
pub fn read_saved(path: &Path, loaded: &Loaded) -> Result<SavedPlan> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::SavedPlan(format!(
            "error: cannot read the plan `{}`: {e}\nhint: save a plan with `seedcore plan --out {}`, then apply that file",
            path.display(),
            path.display()
        ))
    })?;
    let saved = SavedPlan::from_json(&text).map_err(|e| {
        Error::SavedPlan(format!(
            "error: cannot apply `{}`: {e}\nhint: save a plan with this seedcore: `seedcore plan --out {}`",
            path.display(),
            path.display()
        ))
    })?;
    saved.check_config(&config_digest(loaded)).map_err(|e| {
        let hint = match (&e, &loaded.environment) {
            (SavedPlanError::Environment { saved: Some(s), .. }, _) => format!(
                "apply it in its environment: `seedcore --env {s} apply {}`; nothing was changed",
                path.display()
            ),
            (SavedPlanError::Environment { saved: None, .. }, Some(now)) => format!(
                "apply it without `--env` (and without `SEEDCORE_ENV`), or plan `{now}` itself: `seedcore --env {now} plan --out FILE`; nothing was changed"
            ),
            _ => format!("run `seedcore plan --out {}` again and review it", path.display()),
        };
        Error::SavedPlan(format!(
            "error: cannot apply `{}`: {e}\nhint: {hint}",
            path.display(),
        ))
    })?;
    Ok(saved)
}

/// How a plan is narrowed: what the operator asked for on the command line.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Plan without the declared hosts that cannot be reached.
    pub skip_unreachable: bool,
    /// Only these nodes, groups or hosts (`head`, `workers` too).
    pub targets: Vec<String>,
    /// Hosts worked on at once (default: `ssh.max_parallel`).
    pub parallel: Option<usize>,
    /// Leave out the preflight checks (the plan says so).
    pub skip_preflight: bool,
    /// How long to wait for another holder of the cluster lock.
    pub lock_timeout: Duration,
    /// Overrides `rollout.max_unavailable` (`--max-unavailable`).
    pub max_unavailable: Option<crate::config::MaxUnavailable>,
    /// Try every route between hosts (`seedcore check`), not only those the
    /// plan's changes need.
    pub all_routes: bool,
}

/// Runs the preflight checks for a plan against the open session (or marks
/// them skipped).
pub async fn check(
    hosts: &Hosts,
    observed: &crate::model::ObservedState,
    desired: &DesiredState,
    plan: &Plan,
    loaded: &Loaded,
    scope: &Scope,
) -> crate::checks::Report {
    if scope.skip_preflight {
        return crate::checks::Report::skipped();
    }
    let parallel = scope.parallel.unwrap_or(loaded.config.ssh.max_parallel);
    crate::preflight::run(
        hosts,
        observed,
        desired,
        plan,
        parallel,
        loaded.config.head.public,
        scope.all_routes,
    )
    .await
}

/// `plan` against the live hosts: connect, observe, plan, check, close.
pub async fn plan_live(loaded: &Loaded, fresh: &DesiredState, scope: &Scope) -> Result<Plan> {
    let (hosts, mut observed, desired) =
        session::open(loaded, fresh, scope.parallel, scope.skip_unreachable).await?;
    let made = plan_with_work(
        loaded,
        &desired,
        &mut observed,
        &hosts,
        BTreeSet::new(),
        scope,
    )
    .await;
    let result = match made {
        Ok(mut plan) => {
            plan.preflight = Some(
                crate::timings::span(
                    "",
                    "preflight",
                    check(&hosts, &observed, &desired, &plan, loaded, scope),
                )
                .await,
            );
            Ok(plan)
        }
        Err(e) => Err(e),
    };
    hosts.close().await;
    result
}

/// Plans, asking the head what runs where only when the plan stops a
/// running node (then planned again with the answer: the plan names what
/// each stop interrupts).
pub async fn plan_with_work(
    loaded: &Loaded,
    desired: &DesiredState,
    observed: &mut crate::model::ObservedState,
    hosts: &Hosts,
    restart: BTreeSet<NodeName>,
    scope: &Scope,
) -> Result<Plan> {
    let start = crate::timings::now();
    let plan = make_plan(loaded, desired, observed, restart.clone(), scope);
    crate::timings::record("", "plan made", start);
    let plan = plan?;
    if plan.interrupts.is_empty() || observed.ray.is_none() || observed.work.is_some() {
        return Ok(plan);
    }
    observed.work = session::cluster_work(hosts, observed, desired, loaded).await;
    if observed.work.is_none() {
        return Ok(plan);
    }
    make_plan(loaded, desired, observed, restart, scope)
}

/// Plans against an observation with the configuration's options.
pub fn make_plan(
    loaded: &Loaded,
    desired: &DesiredState,
    observed: &crate::model::ObservedState,
    restart: BTreeSet<NodeName>,
    scope: &Scope,
) -> Result<Plan> {
    plan::build(
        desired,
        observed,
        DiffOptions {
            oversubscribe_cpus: loaded.config.cluster.oversubscribe_cpus,
            restart,
            skip_unreachable: scope.skip_unreachable,
            targets: scope.targets.clone(),
            secrets: crate::secrets::expected(&loaded.config, &observed.head_secrets),
            max_unavailable: scope
                .max_unavailable
                .unwrap_or(loaded.config.max_unavailable),
        },
        loaded
            .source
            .overrides()
            .iter()
            .map(|o| o.describe())
            .collect(),
    )
    .map_err(Error::Plan)
    .and_then(|mut plan| {
        let verdict = crate::compat::check(
            desired,
            &observed.ray_versions,
            loaded.config.cluster.auth != crate::config::Auth::None,
        );
        if !verdict.errors.is_empty() {
            return Err(Error::Hosts(format!(
                "{}\nnothing was changed",
                verdict.errors.join("\n")
            )));
        }
        plan.notes.extend(verdict.notes);
        Ok(plan)
    })
    .map(|mut plan| {
        plan.environment = loaded.environment.clone();
        if loaded.config.cluster.auth == crate::config::Auth::None {
            plan.notes.push(
                "Ray token authentication is off (`cluster.auth = \"none\"`): whoever reaches the GCS, the dashboard or the Ray client server can run code on the cluster. Remove the line to turn it on.".to_string(),
            );
        }
        plan
    })
}

/// Connects, observes and plans an apply; with `saved`, checks that the
/// hosts still look as the saved plan found them and takes its steps as they
/// are.
pub async fn prepare(
    loaded: &Loaded,
    fresh: &DesiredState,
    saved: Option<SavedPlan>,
    scope: &Scope,
) -> Result<Prepared> {
    let (hosts, mut observed, desired) = session::open_locked(
        loaded,
        fresh,
        scope.parallel,
        scope.skip_unreachable,
        &lock_request("apply", scope.lock_timeout),
    )
    .await?;
    let planned = match saved {
        Some(saved) => {
            // Exactly the saved steps, for exactly the saved desired state,
            // if the hosts still look as they did.
            let desired = saved.plan.desired();
            let now = plan::fingerprint(&observed, &desired);
            let secrets_now = crate::secrets::expected(&loaded.config, &observed.head_secrets);
            let secrets_then = saved.plan.secrets.clone();
            saved
                .check_hosts(&now)
                .and_then(|()| match (&secrets_then, &secrets_now) {
                    (Some(then), Some(now)) if then != now => Err(
                        crate::plan::artifact::SavedPlanError::SecretsChanged(crate::secrets::changed(then, now)),
                    ),
                    _ => Ok(()),
                })
                .map(|()| (desired, saved.plan, true))
                .map_err(|e| {
                    Error::SavedPlan(format!(
                        "error: the saved plan is stale: {e}\nnothing was changed\nhint: run `seedcore plan --out FILE` again, review it, and apply the new file"
                    ))
                })
        }
        None => plan_with_work(
            loaded,
            &desired,
            &mut observed,
            &hosts,
            BTreeSet::new(),
            scope,
        )
        .await
        .map(|p| (desired, p, false)),
    };
    match planned {
        Ok((desired, mut plan, saved)) => {
            plan.preflight = Some(check(&hosts, &observed, &desired, &plan, loaded, scope).await);
            note_plan(&hosts, &plan).await;
            Ok(Prepared {
                pushes: pushes_of(&hosts, &observed, loaded.config.cluster.build.as_ref()),
                hosts,
                desired,
                plan,
                kind: Kind::Apply,
                saved,
                head_secrets: observed.head_secrets,
                ray: observed.ray,
                command: "apply",
            })
        }
        Err(e) => {
            hosts.close().await;
            Err(e)
        }
    }
}

/// Connects, observes and plans the removal of this cluster's containers
/// (reachable hosts only; the rest are in `hosts.failures`).
pub async fn prepare_destroy(
    loaded: &Loaded,
    fresh: &DesiredState,
    workers_only: bool,
    parallel: Option<usize>,
    lock_timeout: Duration,
) -> Result<Prepared> {
    let (hosts, observed, desired) = session::open_locked(
        loaded,
        fresh,
        parallel,
        true,
        &lock_request("destroy", lock_timeout),
    )
    .await?;
    let mut plan = plan::destroy(&desired, &observed, workers_only);
    plan.environment = loaded.environment.clone();
    Ok(Prepared {
        hosts,
        desired,
        plan,
        kind: Kind::Destroy,
        saved: false,
        pushes: Default::default(),
        head_secrets: observed.head_secrets,
        ray: observed.ray,
        command: "destroy",
    })
}

/// Connects, observes and plans replacing `chosen` (even if they match).
pub async fn prepare_restart(
    loaded: &Loaded,
    fresh: &DesiredState,
    chosen: BTreeSet<NodeName>,
    parallel: Option<usize>,
    lock_timeout: Duration,
) -> Result<Prepared> {
    let (hosts, mut observed, desired) = session::open_locked(
        loaded,
        fresh,
        parallel,
        false,
        &lock_request("restart", lock_timeout),
    )
    .await?;
    let planned = plan_with_work(
        loaded,
        &desired,
        &mut observed,
        &hosts,
        chosen,
        &Scope::default(),
    )
    .await;
    match planned {
        Ok(plan) => Ok(Prepared {
            pushes: pushes_of(&hosts, &observed, loaded.config.cluster.build.as_ref()),
            hosts,
            desired,
            plan,
            kind: Kind::Apply,
            saved: false,
            head_secrets: observed.head_secrets,
            ray: observed.ray,
            command: "restart",
        }),
        Err(e) => {
            hosts.close().await;
            Err(e)
        }
    }
}

/// Declared nodes that run but that Ray does not list up: with nothing for
/// Docker to change, a wedged raylet shows only here. Ray's list as observed
/// with the plan moments ago, else asked again.
pub async fn ray_gaps(prepared: &Prepared, loaded: &Loaded) -> Vec<(NodeName, String)> {
    if let Some(nodes) = &prepared.ray {
        return crate::ray::missing_nodes(&prepared.plan.desired(), nodes);
    }
    let head = prepared.desired.head();
    let Some(conn) = prepared.hosts.connections.get(&head.host) else {
        return Vec::new();
    };
    let Some(id) = prepared
        .plan
        .changes
        .iter()
        .find(|c| c.node == head.name)
        .and_then(|c| c.container())
    else {
        return Vec::new();
    };
    let token = prepared.head_secrets.ray_token(&loaded.config);
    match crate::ray::nodes(&conn.backend, id, head, token.map(|t| t.expose())).await {
        Ok(nodes) => crate::ray::missing_nodes(&prepared.plan.desired(), &nodes),
        Err(_) => Vec::new(),
    }
}

/// With nothing for Docker to change, waits (up to `timeouts.nodes_alive`)
/// for the nodes Ray does not list yet: containers that started moments ago
/// are still joining. Returns those still missing.
pub async fn await_gaps(
    prepared: &Prepared,
    loaded: &Loaded,
    on_waiting: &dyn Fn(usize, Duration),
) -> Vec<(NodeName, String)> {
    let gaps = ray_gaps(prepared, loaded).await;
    if gaps.is_empty() {
        return gaps;
    }
    let head = prepared.desired.head();
    let Some(id) = prepared
        .plan
        .changes
        .iter()
        .find(|c| c.node == head.name)
        .and_then(|c| c.container())
    else {
        return gaps;
    };
    let timeout = Duration::from_secs(loaded.config.timeouts.nodes_alive_secs);
    on_waiting(gaps.len(), timeout);
    let backends = prepared.hosts.backends();
    let token = prepared.head_secrets.ray_token(&loaded.config);
    executor::wait_whole(
        &prepared.plan.desired(),
        id,
        &backends,
        &Default::default(),
        token.map(|t| t.expose()),
        timeout,
        Duration::from_secs(1),
    )
    .await
    .unwrap_or(gaps)
}

/// Writes on every connected host the hosts that run (or may run) this
/// cluster's nodes, or forgets the cluster there when it is `gone`; with
/// `repair`, only on hosts whose list is not that already. Returns a
/// warning for each host that could not keep it.
pub async fn remember_hosts(
    hosts: &Hosts,
    cluster: &crate::model::ClusterIdentity,
    remember: &[HostName],
    gone: bool,
    repair: bool,
) -> Vec<String> {
    let stale = hosts.connections.values().filter(|conn| {
        !repair
            || !hosts
                .remembered
                .get(&conn.host)
                .is_some_and(|read| memory::holds(read, remember))
    });
    let unkept: Vec<Option<String>> = stream::iter(stale)
        .map(|conn| async move {
            let done = if gone {
                memory::forget(conn, cluster).await;
                Ok(())
            } else {
                memory::write(conn, cluster, remember).await
            };
            done.err().map(|why| unkept_list(&conn.host, &why))
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut lines: Vec<String> = unkept.into_iter().flatten().collect();
    lines.sort();
    lines
}

/// The hosts every list should hold: the desired ones, those whose nodes
/// could not be removed (`unremoved`), and the unreachable ones (remembered
/// until they can be cleaned).
fn hosts_to_remember(
    desired: &DesiredState,
    hosts: &Hosts,
    unremoved: &[HostName],
) -> Vec<HostName> {
    let mut remember = desired.hosts();
    for h in unremoved.iter().chain(hosts.failures.keys()) {
        if !remember.contains(h) {
            remember.push(h.clone());
        }
    }
    remember
}

/// With nothing to change, rewrites the lists of hosts that do not hold
/// what an apply would have written (a write that failed before, a list
/// lost); warnings as [`remember_hosts`].
pub async fn repair_lists(prepared: &Prepared) -> Vec<String> {
    let hosts = &prepared.hosts;
    let remember = hosts_to_remember(&prepared.desired, hosts, &[]);
    let start = crate::timings::now();
    let unkept = remember_hosts(hosts, &prepared.desired.cluster, &remember, false, true).await;
    crate::timings::record("", "hosts' lists checked", start);
    unkept
}

/// The warning for a host that could not keep the list of this cluster's hosts.
pub fn unkept_list(host: &HostName, why: &str) -> String {
    format!(
        "warning: `{host}` could not keep the list of this cluster's hosts ({why}): if a host is dropped from the configuration before it does, its nodes are not found and stay there\nhint: run `seedcore apply` again once `{host}` accepts it (an apply with nothing to change rewrites a list that is wrong)"
    )
}

/// Executes a prepared plan. `on_waiting` is told before the final wait for
/// Ray (for an apply) so the caller can say what is happening.
pub async fn execute(
    prepared: &Prepared,
    loaded: &Loaded,
    parallel: Option<usize>,
    reporter: &dyn Reporter,
    on_waiting: &dyn Fn(usize, Duration),
) -> Result<Finished> {
    let (plan, desired, hosts) = (&prepared.plan, &prepared.desired, &prepared.hosts);
    let mut options = ApplyOptions::from_config(&loaded.config, parallel);
    options.node_files = node_files(&loaded.config, &prepared.head_secrets);
    options.interrupt = crate::interrupt::global();
    options.pushes = prepared.pushes.clone();
    let backends = hosts.backends();
    let started = Instant::now();
    options.interrupt.set_executing(true);
    let report = executor::execute(plan, desired, &backends, &options, reporter).await;
    // Remember every host that still runs (or may run) our nodes.
    let unremoved: Vec<HostName> = report
        .outcomes
        .iter()
        .filter(|(step, outcome)| {
            matches!(step, Step::Remove { .. }) && !matches!(outcome, Outcome::Done { .. })
        })
        .map(|(step, _)| step.host().clone())
        .collect();
    let remember = hosts_to_remember(desired, hosts, &unremoved);
    // A whole cluster destroyed everywhere is forgotten; otherwise every
    // host remembers where its nodes are.
    let gone = prepared.kind == Kind::Destroy
        && plan.desired().nodes.is_empty()
        && report.succeeded()
        && hosts.failures.is_empty();
    let interrupted = options.interrupt.fired();
    // Each host's list of hosts and the audit trail, all hosts at once.
    let remembered = remember_hosts(hosts, &desired.cluster, &remember, gone, false);
    let start = crate::timings::now();
    let (unkept, ()) = tokio::join!(remembered, record(prepared, loaded, &report, interrupted));
    // Said after everything else (an error's text ends with them).
    let noted = |text: String| -> String {
        std::iter::once(text)
            .chain(unkept.iter().cloned())
            .collect::<Vec<_>>()
            .join("\n")
    };
    crate::timings::record("", "hosts remembered, audit trail written", start);
    if let (crate::config::Auth::Token(crate::config::TokenSource::Generated), Some(token)) =
        (&loaded.config.cluster.auth, &options.node_files.token)
    {
        // Kept as soon as the head runs with it, even if a worker failed.
        let head_started = report.outcomes.iter().any(|(s, o)| {
            matches!(s, Step::Start { node, .. } if *node == desired.head().name)
                && matches!(o, Outcome::Done { .. })
        });
        if prepared.kind == Kind::Apply && (report.succeeded() || head_started) {
            if let Err(e) = save_token(&desired.cluster, token) {
                eprintln!("warning: cannot keep a copy of the Ray token for clients: {e}");
            }
        }
    }
    if let Some(signal) = interrupted {
        return Err(Error::Interrupted {
            text: noted(interrupted_summary(plan, &report, signal)),
            signal,
        });
    }
    if !report.succeeded() {
        return Err(Error::Failed(noted(failure_summary(plan, &report))));
    }
    let summary = plan.summary();
    if prepared.kind == Kind::Destroy {
        return Ok(Finished {
            summary,
            elapsed: started.elapsed(),
            warnings: unkept,
        });
    }
    // Ray's own view: every declared node up.
    on_waiting(desired.nodes.len(), options.nodes_alive_timeout);
    let head_container = report
        .containers
        .get(&desired.head().name)
        .cloned()
        .unwrap_or_default();
    // The nodes this plan brings up or keeps: a skipped host's are not awaited.
    let planned = plan.desired();
    let whole = executor::wait_whole(
        &planned,
        &head_container,
        &backends,
        &report.stale_node_ids,
        options.node_files.token.as_ref().map(|t| t.expose()),
        options.nodes_alive_timeout,
        Duration::from_secs(1),
    );
    let missing = tokio::select! {
        m = whole => m.map_err(|e| Error::Failed(noted(e)))?,
        signal = options.interrupt.wait() => {
            return Err(Error::Interrupted {
                text: noted(format!(
                    "\nInterrupted ({}) while waiting for Ray to list every node: every step was done.\nhint: `seedcore status` shows whether Ray lists them now",
                    crate::interrupt::name(signal)
                )),
                signal,
            });
        }
    };
    if !missing.is_empty() {
        let list: Vec<String> = missing
            .iter()
            .map(|(n, why)| format!("  {n}: {why}"))
            .collect();
        return Err(Error::Failed(noted(format!(
            "error: apply finished, but Ray does not list every node ALIVE:\n{}\nhint: `seedcore status` shows each node; `seedcore logs NODE` its log",
            list.join("\n")
        ))));
    }
    Ok(Finished {
        summary,
        elapsed: started.elapsed(),
        warnings: unkept,
    })
}

/// What an interrupted apply did, step by step, and how to go on.
fn interrupted_summary(plan: &Plan, report: &executor::ApplyReport, signal: i32) -> String {
    let count = |f: &dyn Fn(&Outcome) -> bool| report.outcomes.iter().filter(|(_, o)| f(o)).count();
    let done = count(&|o| matches!(o, Outcome::Done { .. }));
    let failed = count(&|o| matches!(o, Outcome::Failed { .. }));
    let skipped = count(&|o| matches!(o, Outcome::Skipped { .. }));
    let mut text = format!(
        "\nInterrupted ({}): {done} step(s) done, {failed} cut short or failed, {skipped} not started.\n",
        crate::interrupt::name(signal)
    );
    for c in plan.effective() {
        let steps: Vec<&(Step, Outcome)> = report
            .outcomes
            .iter()
            .filter(|(s, _)| s.node() == Some(&c.node) && *s.host() == c.host)
            .collect();
        let all_done = steps.iter().all(|(_, o)| matches!(o, Outcome::Done { .. }));
        let none = steps
            .iter()
            .all(|(_, o)| matches!(o, Outcome::Skipped { .. }));
        let state = if all_done {
            "done"
        } else if none {
            "not started"
        } else {
            "partly done"
        };
        text.push_str(&format!(
            "  {} on {}: {} {state}\n",
            c.node,
            c.host,
            c.action.as_str()
        ));
    }
    text.push_str("The cluster lock is released and every SSH connection closed.\nhint: `seedcore plan` shows where the hosts stand; `seedcore apply` continues from there");
    text
}

/// One line per node of a failed run: its failed step, or the step skipped
/// because of another's failure, or that every step was done.
fn failure_summary(plan: &Plan, report: &executor::ApplyReport) -> String {
    let mut text = String::from("error: apply failed\n");
    for c in plan.effective() {
        let steps: Vec<&(Step, Outcome)> = report
            .outcomes
            .iter()
            .filter(|(s, _)| s.node() == Some(&c.node) && *s.host() == c.host)
            .collect();
        let failed = steps.iter().find_map(|(s, o)| match o {
            Outcome::Failed { error } => Some(format!("{} failed: {error}", s.verb())),
            _ => None,
        });
        let skipped = steps.iter().find_map(|(s, o)| match o {
            Outcome::Skipped { because } => Some(format!("{} skipped: {because}", s.verb())),
            _ => None,
        });
        let line = failed
            .or(skipped)
            .unwrap_or_else(|| format!("{}: every step done", c.action.as_str()));
        text.push_str(&format!("  {} on {}: {line}\n", c.node, c.host));
    }
    for (step, outcome) in &report.outcomes {
        if let (Step::PullImage { host, image }, Outcome::Failed { error }) = (step, outcome) {
            text.push_str(&format!("  pull {image} on {host}: {error}\n"));
        }
    }
    for r in &plan.rollouts {
        // Workers whose old container was never touched: the rollout stopped before them.
        let untouched: Vec<&crate::model::NodeName> = r
            .waves
            .iter()
            .flatten()
            .filter(|n| {
                report.outcomes.iter().any(|(s, o)| {
                    matches!(s, Step::Remove { node, .. } if node == *n)
                        && matches!(o, Outcome::Skipped { .. })
                })
            })
            .collect();
        if untouched.is_empty() {
            continue;
        }
        let done = r.waves.len()
            - r.waves
                .iter()
                .filter(|w| w.iter().any(|n| untouched.contains(&n)))
                .count();
        let when = match done {
            0 => "before its first wave".to_string(),
            k => format!("after wave {k}"),
        };
        let names: Vec<String> = untouched.iter().map(|n| format!("`{n}`")).collect();
        text.push_str(&format!(
            "  the rollout of group `{}` stopped {when} of {}: {} still run(s) the previous spec, untouched\n",
            r.group,
            r.waves.len(),
            names.join(", ")
        ));
    }
    if plan.rollouts.is_empty() {
        text.push_str("hint: fix the cause above and run `seedcore apply` again: it continues from what is on the hosts now");
    } else {
        text.push_str("hint: fix the cause above (a bad image: correct `image` or push it) and run `seedcore apply` again: it continues the rollout from what is on the hosts now, replacing only what is left; to go back, revert the configuration and apply");
    }
    text
}

/// What the containers this apply creates get: the token (the head's, the
/// operator's, or a new one when the head is new), the secret environment,
/// the digest key for the head, and their labels.
pub fn node_files(
    config: &crate::config::Config,
    head: &crate::secrets::HeadSecrets,
) -> crate::apply::NodeFiles {
    use crate::config::{Auth, TokenSource};
    use crate::engine::ContainerFile;
    use crate::model::{
        LABEL_APPLIED_AT, LABEL_APPLIED_BY, LABEL_SECRETS, NODE_DIGEST_KEY_PATH, NODE_SECRETS_PATH,
        NODE_TOKEN_PATH,
    };
    let key = head
        .digest_key
        .clone()
        .unwrap_or_else(|| crate::secrets::random(32));
    let token = match &config.cluster.auth {
        Auth::None => None,
        Auth::Token(TokenSource::Given(t)) => Some(t.clone()),
        Auth::Token(TokenSource::Generated) => {
            Some(head.token.clone().unwrap_or_else(crate::secrets::new_token))
        }
    };
    let with_token = crate::secrets::HeadSecrets {
        digest_key: Some(key.clone()),
        token: token.clone(),
    };
    let digests = crate::secrets::expected(config, &with_token).unwrap_or_default();
    let mut files = Vec::new();
    if let Some(t) = &token {
        files.push(ContainerFile {
            path: NODE_TOKEN_PATH.to_string(),
            bytes: format!("{}\n", t.expose()).into_bytes(),
            mode: 0o400,
        });
    }
    let env = crate::secrets::env_file(config);
    if !env.is_empty() {
        files.push(ContainerFile {
            path: NODE_SECRETS_PATH.to_string(),
            bytes: env,
            mode: 0o400,
        });
    }
    let mut head_files = files.clone();
    if !files.is_empty() {
        head_files.push(ContainerFile {
            path: NODE_DIGEST_KEY_PATH.to_string(),
            bytes: key,
            mode: 0o400,
        });
    }
    let mut labels = BTreeMap::new();
    if !digests.is_empty() {
        labels.insert(LABEL_SECRETS.to_string(), crate::secrets::label(&digests));
    }
    labels.insert(LABEL_APPLIED_BY.to_string(), crate::audit::operator());
    labels.insert(LABEL_APPLIED_AT.to_string(), crate::audit::now_rfc3339());
    crate::apply::NodeFiles {
        head: head_files,
        worker: files,
        labels,
        token,
    }
}

fn lock_request(command: &str, timeout: Duration) -> crate::lock::Request {
    crate::lock::Request {
        command: command.to_string(),
        timeout,
    }
}

/// A short digest of what a plan changes (its steps and their containers),
/// for the lock and the audit trail.
pub fn plan_digest(plan: &Plan) -> String {
    use sha2::{Digest, Sha256};
    let text = serde_json::to_string(&plan.changes).unwrap_or_default();
    let mut d = crate::model::hex(&Sha256::digest(text.as_bytes()));
    d.truncate(12);
    d
}

/// Tells the lock which plan it protects.
async fn note_plan(hosts: &Hosts, plan: &Plan) {
    if let Some(lock) = &hosts.lock {
        if let Some(conn) = hosts.connections.get(&lock.host) {
            lock.note(conn, "plan", &plan_digest(plan)).await;
        }
    }
}

/// Appends the apply to the audit trail of every host it touched (and the
/// head's, where `seedcore history` reads). A host that cannot be written to
/// is warned about; the apply's outcome stands.
async fn record(
    prepared: &Prepared,
    loaded: &Loaded,
    report: &executor::ApplyReport,
    interrupted: Option<i32>,
) {
    let plan = &prepared.plan;
    let s = plan.summary();
    let failed = report
        .outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Failed { .. }))
        .count();
    let outcome = if let Some(signal) = interrupted {
        format!("interrupted ({})", crate::interrupt::name(signal))
    } else if report.succeeded() {
        "ok".to_string()
    } else {
        format!("failed ({failed} step(s))")
    };
    let cwd = std::env::current_dir()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    // `git` is a blocking subprocess: not on the async runtime's threads.
    let config_path = loaded.source.path.clone();
    let commit =
        tokio::task::spawn_blocking(move || crate::audit::config_commit(Path::new(&config_path)))
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| "-".to_string());
    let entry = crate::audit::Entry::new(&[
        ("time", crate::audit::now_rfc3339()),
        ("by", crate::audit::operator()),
        ("from", cwd),
        ("command", prepared.command.to_string()),
        ("config", loaded.source.path.clone()),
        ("commit", commit),
        ("plan", plan_digest(plan)),
        (
            "changes",
            format!(
                "{} added, {} changed, {} destroyed",
                s.add, s.change, s.destroy
            ),
        ),
        ("outcome", outcome),
    ]);
    let mut touched: BTreeSet<&crate::model::HostName> =
        plan.effective().map(|c| &c.host).collect();
    touched.insert(&prepared.desired.head().host);
    let entry = &entry;
    futures_util::future::join_all(touched.into_iter().map(|host| async move {
        let Some(conn) = prepared.hosts.connections.get(host) else {
            return;
        };
        if host.is_local() {
            return;
        }
        if let Err(e) = crate::audit::append(conn, &prepared.desired.cluster.name, entry).await {
            eprintln!(
                "warning: cannot append to the audit trail on `{host}` ({}): {e}",
                crate::audit::log_path(&prepared.desired.cluster.name)
            );
        }
    }))
    .await;
}

/// Where the operator's copy of a generated Ray token is kept (0600), for
/// `seedcore env`: `~/.seedcore/NAME/HEAD.token`.
pub fn token_copy_path(cluster: &crate::model::ClusterIdentity) -> Option<std::path::PathBuf> {
    let home = std::env::var_os("HOME")?;
    Some(
        std::path::PathBuf::from(home)
            .join(".seedcore")
            .join(&cluster.name)
            .join(format!("{}.token", cluster.head)),
    )
}

fn save_token(
    cluster: &crate::model::ClusterIdentity,
    token: &crate::config::Secret,
) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let path = token_copy_path(cluster).ok_or_else(|| std::io::Error::other("HOME is not set"))?;
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let tmp = path.with_extension("token.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(format!("{}\n", token.expose()).as_bytes())?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, &path)
}

fn pushes_of(
    hosts: &Hosts,
    observed: &crate::model::ObservedState,
    build: Option<&crate::config::BuildConfig>,
) -> crate::apply::Pushes {
    crate::apply::Pushes {
        build: build.cloned(),
        built: Default::default(),
        source: hosts.source.clone(),
        relays: observed
            .sources
            .values()
            .filter_map(|s| s.from.as_ref())
            .filter_map(|h| {
                let h = crate::model::HostName(h.clone());
                let c = hosts.connections.get(&h)?;
                Some((h, c.backend.clone()))
            })
            .collect(),
        images: observed.sources.clone(),
        layers: observed
            .hosts
            .iter()
            .filter_map(|(h, o)| Some((h.clone(), o.layers.clone()?)))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_that_cannot_keep_its_list_is_named_with_the_way_out() {
        let why = "`~/.seedcore/c/abc.hosts` could not be written: No space left on device";
        insta::assert_snapshot!(unkept_list(&HostName("10.0.0.2".into()), why), @r"
        warning: `10.0.0.2` could not keep the list of this cluster's hosts (`~/.seedcore/c/abc.hosts` could not be written: No space left on device): if a host is dropped from the configuration before it does, its nodes are not found and stay there
        hint: run `seedcore apply` again once `10.0.0.2` accepts it (an apply with nothing to change rewrites a list that is wrong)
        ");
    }
}
