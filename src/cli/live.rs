//! Commands that talk to the hosts: connect (SSH + Docker), observe, apply.
//! Sessions are closed on every path out, Ctrl-C included.

use super::progress::CliReporter;
use super::{
    config_digest, exit, make_plan, print_plan, user, ApplyArgs, OutputFormat, Result, UserError,
};
use crate::apply::{self, ApplyOptions, Outcome};
use crate::config::Loaded;
use crate::engine::EngineBackend;
use crate::memory;
use crate::model::{DesiredState, HostName, ObservedState};
use crate::observe;
use crate::ownership;
use crate::plan::{self, artifact::SavedPlan, Plan, Step};
use crate::render::Style;
use crate::topology;
use crate::transport::{Connection, Transport, TransportError};
use futures_util::stream::{self, StreamExt};
use std::collections::BTreeMap;
use std::future::Future;
use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

/// Runs a future on a runtime, ending it cleanly on Ctrl-C: the future (and
/// with it every SSH session, whose drop shuts its master down) is dropped
/// first, then we exit 130.
pub fn block_on<T>(fut: impl Future<Output = T>) -> Result<T> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| UserError(format!("error: cannot start the async runtime: {e}")))?;
    let finished = rt.block_on(async {
        tokio::select! {
            v = fut => Some(v),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    // Don't wait for a blocked reader (the confirmation prompt).
    rt.shutdown_background();
    match finished {
        Some(v) => Ok(v),
        None => {
            eprintln!(
                "\nInterrupted: every SSH connection is closed. Steps under way may have stopped halfway; `seedcore plan` shows where the hosts stand."
            );
            std::process::exit(130);
        }
    }
}

/// Runs a future that handles Ctrl-C itself (e.g. `logs -f`).
pub fn block_on_until_done<T>(fut: impl Future<Output = T>) -> Result<T> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| UserError(format!("error: cannot start the async runtime: {e}")))?;
    Ok(rt.block_on(fut))
}

/// Open connections, and the hosts that could not be reached.
pub struct Hosts {
    // Declared before the transport: fields drop in order, and a session's
    // drop shuts its master down through the control socket, which must
    // still exist.
    pub connections: BTreeMap<HostName, Connection>,
    pub failures: BTreeMap<HostName, TransportError>,
    pub transport: Transport,
}

impl Hosts {
    pub fn backends(&self) -> BTreeMap<HostName, EngineBackend> {
        self.connections
            .iter()
            .map(|(h, c)| (h.clone(), c.backend.clone()))
            .collect()
    }

    pub async fn close(self) {
        for (_, c) in self.connections {
            c.close().await;
        }
        self.transport.cleanup();
    }
}

/// Connects to every host of `hosts` not connected yet.
async fn connect_more(all: &mut Hosts, hosts: &[HostName], parallel: usize) {
    let todo: Vec<HostName> = hosts
        .iter()
        .filter(|h| !all.connections.contains_key(*h) && !all.failures.contains_key(*h))
        .cloned()
        .collect();
    if todo.is_empty() {
        return;
    }
    for (h, r) in all.transport.connect_all(&todo, parallel).await {
        match r {
            Ok(c) => {
                all.connections.insert(h, c);
            }
            Err(e) => {
                all.failures.insert(h, e);
            }
        }
    }
}

/// Observes the connected hosts among `hosts` (unreachable ones recorded as such).
async fn observe_some(
    all: &Hosts,
    hosts: &[HostName],
    desired: &DesiredState,
    parallel: usize,
) -> ObservedState {
    let mut view: BTreeMap<HostName, std::result::Result<&EngineBackend, String>> = BTreeMap::new();
    for h in hosts {
        match (all.connections.get(h), all.failures.get(h)) {
            (Some(c), _) => {
                view.insert(h.clone(), Ok(&c.backend));
            }
            (None, Some(e)) => {
                view.insert(h.clone(), Err(e.summary()));
            }
            (None, None) => {}
        }
    }
    observe::observe(&view, desired, parallel).await
}

/// Connects to the declared hosts, observes them, settles the cluster's
/// identity (see `ownership`), then visits the hosts that the hosts remember
/// for that identity. Returns the connections, the observation and the
/// desired state lowered with the identity and the ports running nodes keep.
/// With `partial`, unreachable declared hosts are warned about and left out
/// (for `destroy`); otherwise they are an error naming each with its fix.
pub async fn observe_hosts(
    loaded: &Loaded,
    fresh: &DesiredState,
    parallel: Option<usize>,
    partial: bool,
) -> Result<(Hosts, ObservedState, DesiredState)> {
    let transport = Transport::new(&loaded.config.ssh).await.map_err(|e| {
        UserError(format!(
            "error: cannot create the SSH control directory: {e}\nhint: seedcore keeps its SSH sockets in `$XDG_RUNTIME_DIR/seedcore` or `/tmp/seedcore-<uid>`; make that place writable for your user"
        ))
    })?;
    let parallel = parallel.unwrap_or(loaded.config.ssh.max_parallel).max(1);
    let mut hosts = Hosts {
        connections: BTreeMap::new(),
        failures: BTreeMap::new(),
        transport,
    };
    let declared = fresh.hosts();
    connect_more(&mut hosts, &declared, parallel).await;
    // One machine under two names would see the other name's nodes as
    // orphans and remove them.
    let mut by_engine: BTreeMap<&str, Vec<&HostName>> = BTreeMap::new();
    for (h, c) in &hosts.connections {
        if !c.engine.id.is_empty() {
            by_engine.entry(c.engine.id.as_str()).or_default().push(h);
        }
    }
    if let Some(names) = by_engine.values().find(|v| v.len() > 1) {
        let list: Vec<String> = names.iter().map(|h| format!("`{h}`")).collect();
        let text = format!(
            "error: {} reach the same Docker engine: they are one machine under several names\nhint: write each machine once in the configuration (the same name in `head.host` and every group's `hosts`)",
            list.join(" and ")
        );
        hosts.close().await;
        return Err(UserError(text));
    }
    let blocking: Vec<&TransportError> = hosts
        .failures
        .iter()
        .filter(|(h, _)| declared.contains(h))
        .map(|(_, e)| e)
        .collect();
    if !blocking.is_empty() && !partial {
        let text = blocking
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        let n = blocking.len();
        hosts.close().await;
        return Err(UserError(format!(
            "{text}\nerror: the plan is incomplete: {n} host(s) could not be observed"
        )));
    }
    let lists: Vec<BTreeMap<String, Vec<HostName>>> = stream::iter(hosts.connections.values())
        .map(|conn| memory::read(conn, &fresh.cluster.name))
        .buffer_unordered(parallel)
        .collect()
        .await;
    let mut observed = observe_some(&hosts, &declared, fresh, parallel).await;
    let identity = ownership::resolve(&loaded.config, &observed);
    // Hosts this cluster ran on that the configuration no longer names.
    let mut extra: Vec<HostName> = lists
        .iter()
        .filter_map(|l| l.get(&identity.id))
        .flatten()
        .filter(|h| !declared.contains(h))
        .cloned()
        .collect();
    extra.sort();
    extra.dedup();
    if !extra.is_empty() {
        connect_more(&mut hosts, &extra, parallel).await;
        let more = observe_some(&hosts, &extra, fresh, parallel).await;
        observed.hosts.extend(more.hosts);
    }
    for (h, e) in &hosts.failures {
        eprintln!(
            "warning: `{h}` is unreachable ({}): nodes left there cannot be removed now",
            e.summary()
        );
    }
    let kept = ownership::kept_ports(&identity, &observed);
    let desired = match topology::lower(&loaded.config, &identity, &kept) {
        Ok(d) => d,
        Err(errors) => {
            hosts.close().await;
            return Err(user(loaded.source.errors(errors)));
        }
    };
    Ok((hosts, observed, desired))
}

/// `seedcore observe` / `plan` without `--observed`.
pub async fn observe_only(
    loaded: &Loaded,
    fresh: &DesiredState,
    parallel: Option<usize>,
) -> Result<(ObservedState, DesiredState)> {
    let (hosts, observed, desired) = observe_hosts(loaded, fresh, parallel, false).await?;
    hosts.close().await;
    Ok((observed, desired))
}

/// Reads a saved plan and checks it was made from this configuration.
fn read_saved_plan(path: &std::path::Path, loaded: &Loaded) -> Result<SavedPlan> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        UserError(format!(
            "error: cannot read the plan `{}`: {e}\nhint: save a plan with `seedcore plan --out {}`, then apply that file",
            path.display(),
            path.display()
        ))
    })?;
    let saved = SavedPlan::from_json(&text).map_err(|e| {
        UserError(format!(
            "error: cannot apply `{}`: {e}\nhint: save a plan with this seedcore: `seedcore plan --out {}`",
            path.display(),
            path.display()
        ))
    })?;
    saved.check_config(&config_digest(loaded)).map_err(|e| {
        UserError(format!(
            "error: cannot apply `{}`: {e}\nhint: run `seedcore plan --out {}` again and review it",
            path.display(),
            path.display()
        ))
    })?;
    Ok(saved)
}

fn confirm() -> Result<bool> {
    let mut err = std::io::stderr();
    let _ = write!(
        err,
        "\nDo you want to perform these actions?\n  seedcore will perform the actions described above.\n  Only 'yes' will be accepted to approve.\n\n  Enter a value: "
    );
    let _ = err.flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| UserError(format!("error: cannot read the answer: {e}")))?;
    Ok(line.trim() == "yes")
}

/// `seedcore apply`.
pub async fn apply(
    loaded: &Loaded,
    fresh: &DesiredState,
    args: &ApplyArgs,
    style: Style,
) -> Result<u8> {
    let saved = match &args.planfile {
        Some(p) => Some(read_saved_plan(p, loaded)?),
        None => None,
    };
    if saved.is_none() && !args.auto_approve && !std::io::stdin().is_terminal() {
        return Err(UserError(
            "error: refusing to apply without confirmation: stdin is not a terminal\nhint: review `seedcore plan`, then run `seedcore apply --auto-approve` (or save the plan with `seedcore plan --out FILE` and apply that file)".to_string(),
        ));
    }
    let (hosts, observed, desired) = observe_hosts(loaded, fresh, args.parallel, false).await?;
    let result = match saved {
        Some(saved) => {
            // Exactly the saved steps, for exactly the saved desired state,
            // if the hosts still look as they did.
            let desired = saved.plan.desired();
            let now = plan::fingerprint(&observed, &desired);
            match saved.check_hosts(&now) {
                Ok(()) => {
                    eprintln!(
                        "The hosts are as the saved plan found them: executing its {} step(s).",
                        saved.plan.graph.len()
                    );
                    let run = Run {
                        loaded,
                        desired: &desired,
                        hosts: &hosts,
                        style,
                        approved: true,
                        parallel: args.parallel,
                        kind: RunKind::Apply,
                    };
                    run.execute(saved.plan).await
                }
                Err(e) => Err(UserError(format!(
                    "error: the saved plan is stale: {e}\nnothing was changed\nhint: run `seedcore plan --out FILE` again, review it, and apply the new file"
                ))),
            }
        }
        None => match make_plan(loaded, &desired, &observed) {
            Ok(plan) => {
                let run = Run {
                    loaded,
                    desired: &desired,
                    hosts: &hosts,
                    style,
                    approved: args.auto_approve,
                    parallel: args.parallel,
                    kind: RunKind::Apply,
                };
                run.execute(plan).await
            }
            Err(e) => Err(e),
        },
    };
    hosts.close().await;
    result
}

/// What a run of the executor is for: it changes the last words and checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    Apply,
    Destroy,
}

/// Shows a plan, gets it approved, executes it and reports.
pub struct Run<'a> {
    pub loaded: &'a Loaded,
    pub desired: &'a DesiredState,
    pub hosts: &'a Hosts,
    pub style: Style,
    pub approved: bool,
    pub parallel: Option<usize>,
    pub kind: RunKind,
}

impl Run<'_> {
    pub async fn execute(&self, plan: Plan) -> Result<u8> {
        let desired = self.desired;
        print_plan(&plan, OutputFormat::Text, self.style)?;
        if plan.summary().is_empty() {
            if self.kind == RunKind::Apply {
                self.warn_ray_gaps(&plan).await;
                print_access(desired)?;
            }
            return Ok(exit::OK);
        }
        if !self.approved {
            if !std::io::stdin().is_terminal() {
                return Err(UserError(
                    "error: refusing to go on without confirmation: stdin is not a terminal\nhint: review the plan above, then run again with `--auto-approve`".to_string(),
                ));
            }
            let answer = tokio::task::spawn_blocking(confirm)
                .await
                .map_err(|e| UserError(format!("error: cannot read the answer: {e}")))??;
            if !answer {
                eprintln!("Cancelled: nothing was changed.");
                return Ok(exit::ERROR);
            }
        }
        self.run(plan).await
    }

    /// With nothing for Docker to change, Ray may still miss a node (wedged
    /// raylet): say so, since no plan step can show it.
    async fn warn_ray_gaps(&self, plan: &Plan) {
        let head = self.desired.head();
        let Some(conn) = self.hosts.connections.get(&head.host) else {
            return;
        };
        let Some(id) = plan
            .changes
            .iter()
            .find(|c| c.node == head.name)
            .and_then(|c| c.container())
        else {
            return;
        };
        if let Ok(nodes) = apply::ray_nodes(&conn.backend, id, head).await {
            for (node, why) in apply::missing_nodes(self.desired, &nodes) {
                eprintln!(
                    "warning: `{node}` runs, but Ray does not list it ALIVE ({why})\nhint: `seedcore logs {node}` shows why; `seedcore restart {node}` replaces it"
                );
            }
        }
    }

    async fn run(&self, plan: Plan) -> Result<u8> {
        let (loaded, desired, hosts) = (self.loaded, self.desired, self.hosts);
        let options = ApplyOptions::from_config(&loaded.config, self.parallel);
        let backends = hosts.backends();
        let reporter = CliReporter::new();
        let started = std::time::Instant::now();
        let report = apply::execute(&plan, desired, &backends, &options, &reporter).await;
        reporter.finish();
        // Remember every host that still runs (or may run) our nodes.
        let mut remember = desired.hosts();
        for (step, outcome) in &report.outcomes {
            if matches!(step, Step::Remove { .. })
                && !matches!(outcome, Outcome::Done { .. })
                && !remember.contains(step.host())
            {
                remember.push(step.host().clone());
            }
        }
        // Unreachable hosts stay remembered until they can be cleaned.
        for h in hosts.failures.keys() {
            if !remember.contains(h) {
                remember.push(h.clone());
            }
        }
        stream::iter(hosts.connections.values())
            .for_each_concurrent(options.max_parallel, |conn| {
                memory::write(conn, &desired.cluster, &remember)
            })
            .await;

        if !report.succeeded() {
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
                    Outcome::Skipped { because } => {
                        Some(format!("{} skipped: {because}", s.verb()))
                    }
                    _ => None,
                });
                let line = failed
                    .or(skipped)
                    .unwrap_or_else(|| format!("{} done", c.action.as_str()));
                text.push_str(&format!("  {} on {}: {line}\n", c.node, c.host));
            }
            for (step, outcome) in &report.outcomes {
                if let (Step::PullImage { host, image }, Outcome::Failed { error }) =
                    (step, outcome)
                {
                    text.push_str(&format!("  pull {image} on {host}: {error}\n"));
                }
            }
            text.push_str("hint: fix the cause above and run `seedcore apply` again: it continues from what is on the hosts now");
            return Err(UserError(text));
        }

        let s = plan.summary();
        if self.kind == RunKind::Destroy {
            super::write_stdout(&format!(
                "\nDestroy complete! Nodes: {} destroyed. ({:.1}s)\n",
                s.destroy,
                started.elapsed().as_secs_f64()
            ))?;
            return Ok(exit::OK);
        }
        // Ray's own view: every declared node ALIVE with its CPUs.
        eprintln!(
            "Waiting until Ray lists all {} nodes ALIVE with their CPUs (timeouts.nodes_alive: {}s)...",
            desired.nodes.len(),
            options.nodes_alive_timeout.as_secs()
        );
        let head_container = report
            .containers
            .get(&desired.head().name)
            .cloned()
            .unwrap_or_default();
        let missing = apply::wait_whole(
            desired,
            &head_container,
            &backends,
            &report.stale_node_ids,
            options.nodes_alive_timeout,
            Duration::from_secs(1),
        )
        .await
        .map_err(user)?;
        if !missing.is_empty() {
            let list: Vec<String> = missing
                .iter()
                .map(|(n, why)| format!("  {n}: {why}"))
                .collect();
            return Err(UserError(format!(
            "error: apply finished, but Ray does not list every node ALIVE:\n{}\nhint: `seedcore status` shows each node; `seedcore logs NODE` its log",
            list.join("\n")
        )));
        }
        let mut out = format!(
            "\nApply complete! Nodes: {} added, {} changed, {} destroyed. ({:.1}s)\n",
            s.add,
            s.change,
            s.destroy,
            started.elapsed().as_secs_f64()
        );
        out.push_str(&access_lines(desired));
        super::write_stdout(&out)?;
        Ok(exit::OK)
    }
}

/// The dashboard URL and the client address.
pub fn access_lines(desired: &DesiredState) -> String {
    let head = desired.head();
    let Some(p) = &head.ports.head else {
        return String::new();
    };
    let mut out = format!(
        "Dashboard: http://{}:{}\nRAY_ADDRESS=ray://{}:{}\n",
        head.node_ip, p.dashboard, head.node_ip, p.client_server
    );
    if let Some(serve) = p.serve {
        out.push_str(&format!("Serve: http://{}:{serve}\n", head.node_ip));
    }
    out
}

fn print_access(desired: &DesiredState) -> Result<()> {
    super::write_stdout(&access_lines(desired))
}
