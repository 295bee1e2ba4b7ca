//! Executing a plan: walks the step graph with bounded parallelism,
//! dependencies first. A failed step marks its dependents skipped; independent
//! steps go on. Waits are Ray-aware: the head is ready when its GCS (and
//! Serve's HTTP port) answer; a worker when Ray itself lists it ALIVE with its
//! declared CPUs. Progress goes to a [`Reporter`] as [`Event`]s.

use crate::engine::{DockerBackend, LogOptions};
use crate::model::{DesiredState, HostName, NodeName, NodeSpec, Role};
use crate::plan::{Plan, Step};
use futures_util::stream::{FuturesUnordered, StreamExt};
use petgraph::graph::NodeIndex;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Knobs of an apply.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    pub max_parallel: usize,
    pub stop_timeout: Duration,
    pub head_ready_timeout: Duration,
    pub nodes_alive_timeout: Duration,
    pub drain_timeout: Duration,
    /// Pause between readiness polls.
    pub poll_interval: Duration,
    /// How the operator reaches a host over SSH (`ssh -i KEY -p PORT USER@`),
    /// for hints that name a command.
    pub ssh: String,
    /// What every container created by this apply gets besides its spec.
    pub node_files: NodeFiles,
    /// Fired by a signal: no new step starts, waits end at once.
    pub interrupt: std::sync::Arc<crate::interrupt::Interrupt>,
    /// For `push`: this machine's engine, the images as it lays them out,
    /// and the layer stacks each host has.
    pub pushes: Pushes,
}

/// What push steps need.
#[derive(Debug, Clone, Default)]
pub struct Pushes {
    pub source: Option<crate::engine::EngineBackend>,
    /// The engines of cluster hosts images are relayed from.
    pub relays: BTreeMap<HostName, crate::engine::EngineBackend>,
    pub images: BTreeMap<String, crate::transfer::SourceImage>,
    pub layers: BTreeMap<HostName, std::collections::BTreeSet<String>>,
    /// What to build (`[cluster.build]`), and what this apply built.
    pub build: Option<crate::config::BuildConfig>,
    pub built: std::sync::Arc<tokio::sync::Mutex<BTreeMap<String, crate::transfer::SourceImage>>>,
}

/// The files a created container gets before it starts (the Ray token, the
/// secret environment, for the head the digest key) and the labels beside
/// its spec's (secret digests, who applied it and when).
#[derive(Debug, Clone, Default)]
pub struct NodeFiles {
    pub head: Vec<crate::engine::ContainerFile>,
    pub worker: Vec<crate::engine::ContainerFile>,
    pub labels: BTreeMap<String, String>,
    /// The Ray token the nodes get (its `Debug` hides the value).
    pub token: Option<crate::config::Secret>,
}

impl ApplyOptions {
    pub fn from_config(config: &crate::config::Config, parallel: Option<usize>) -> Self {
        ApplyOptions {
            max_parallel: parallel.unwrap_or(config.ssh.max_parallel).max(1),
            stop_timeout: Duration::from_secs(config.timeouts.stop_secs),
            head_ready_timeout: Duration::from_secs(config.timeouts.head_ready_secs),
            nodes_alive_timeout: Duration::from_secs(config.timeouts.nodes_alive_secs),
            drain_timeout: Duration::from_secs(config.timeouts.drain_secs),
            // Polls are cheap: the engine's API and Ray's state API over the
            // SSH connection; what starts a process in a container is
            // rationed apart (see `wait_port`, `check_log`).
            poll_interval: Duration::from_millis(250),
            ssh: ssh_prefix(&config.ssh),
            node_files: NodeFiles::default(),
            interrupt: crate::interrupt::Interrupt::new(),
            pushes: Pushes::default(),
        }
    }
}

/// `ssh -i KEY -p PORT USER@`: the start of an ssh command line that reaches
/// a host as seedcore does.
pub fn ssh_prefix(ssh: &crate::config::SshConfig) -> String {
    let mut out = String::from("ssh");
    if let Some(key) = &ssh.identity_file {
        out.push_str(&format!(" -i {}", key.display()));
    }
    if let Some(port) = ssh.port {
        out.push_str(&format!(" -p {port}"));
    }
    out.push(' ');
    if let Some(user) = &ssh.user {
        out.push_str(&format!("{user}@"));
    }
    out
}

/// Exits 0 when a process of this container listens on the port given:
/// the port's listening sockets (`/proc/net/tcp*`, the host's with host
/// networking) held open by a process this container sees. A port held by
/// another container or by the host is not this node answering.
/// How often a wait reads Ray's own logs for a known failure.
const LOG_CHECK_EVERY: Duration = Duration::from_secs(2);

/// How often a wait probes a port from inside the container while the
/// host's loopback finds nothing listening there.
const PROBE_EVERY: Duration = Duration::from_secs(1);

const LISTENS: &str = r#"import os, sys
p = int(sys.argv[1])
inodes = set()
for f in ('/proc/net/tcp', '/proc/net/tcp6'):
    try:
        for line in open(f).readlines()[1:]:
            w = line.split()
            if w[3] == '0A' and int(w[1].rsplit(':', 1)[1], 16) == p:
                inodes.add('socket:[%s]' % w[9])
    except OSError:
        pass
for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
        for fd in os.listdir('/proc/%s/fd' % pid):
            if os.readlink('/proc/%s/fd/%s' % (pid, fd)) in inodes:
                sys.exit(0)
    except OSError:
        pass
sys.exit(1)
"#;

/// The last lines of the GCS's and the raylet's own logs, where Ray writes a
/// port it could not bind long before `ray start` gives up.
fn ray_logs_command() -> Vec<String> {
    vec![
        "sh".to_string(),
        "-c".to_string(),
        "tail -n 40 /tmp/ray/session_latest/logs/gcs_server.out /tmp/ray/session_latest/logs/raylet.out 2>/dev/null; true".to_string(),
    ]
}

/// What happened to a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done { elapsed: Duration },
    Failed { error: String },
    Skipped { because: String },
}

/// Progress, for whoever draws it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Started { step: Step },
    Progress { step: Step, message: String },
    Finished { step: Step, outcome: Outcome },
}

/// Receives progress events (the CLI draws them; tests record them).
pub trait Reporter: Sync {
    fn event(&self, event: Event);
}

/// A reporter that keeps every event, for tests.
#[derive(Debug, Default)]
pub struct RecordingReporter {
    pub events: std::sync::Mutex<Vec<Event>>,
}

impl Reporter for RecordingReporter {
    fn event(&self, event: Event) {
        self.events.lock().unwrap().push(event);
    }
}

/// The result of an apply.
#[derive(Debug, Clone)]
pub struct ApplyReport {
    /// Every step with its outcome, in the order they ended.
    pub outcomes: Vec<(Step, Outcome)>,
    pub elapsed: Duration,
    /// Ray node IDs of containers that were replaced (see [`wait_whole`]).
    pub stale_node_ids: std::collections::BTreeSet<String>,
    /// The container of each node after the apply, by ID.
    pub containers: BTreeMap<NodeName, String>,
}

impl ApplyReport {
    pub fn succeeded(&self) -> bool {
        self.outcomes
            .iter()
            .all(|(_, o)| matches!(o, Outcome::Done { .. }))
    }

    pub fn failures(&self) -> Vec<(&Step, &str)> {
        self.outcomes
            .iter()
            .filter_map(|(s, o)| match o {
                Outcome::Failed { error } => Some((s, error.as_str())),
                _ => None,
            })
            .collect()
    }
}

/// Shares one `ray list nodes` between every waiting step: each call starts a
/// Python process in the head, too heavy to run once per worker per second.
struct Membership<'a, B: DockerBackend> {
    head: Option<(&'a B, &'a NodeSpec)>,
    /// The Ray token the nodes get, for the dashboard's state API.
    token: Option<&'a str>,
    cache: tokio::sync::Mutex<Option<Snapshot>>,
}

/// The container each node runs in, by ID: observed, then created by this
/// apply. Every action after observation names a container by ID.
type Containers = std::sync::Mutex<BTreeMap<NodeName, String>>;

/// One answer of `ray list nodes`, and when it was taken.
type Snapshot = (Instant, Result<Vec<crate::ray::RayNode>, String>);

impl<'a, B: DockerBackend> Membership<'a, B> {
    async fn nodes(
        &self,
        max_age: Duration,
        containers: &Containers,
    ) -> Result<Vec<crate::ray::RayNode>, String> {
        let Some((head, spec)) = &self.head else {
            return Err("the cluster has no head".to_string());
        };
        let mut cache = self.cache.lock().await;
        if let Some((at, value)) = cache.as_ref() {
            if at.elapsed() < max_age {
                return value.clone();
            }
        }
        let id = containers.lock().unwrap().get(&spec.name).cloned();
        let value = match id {
            Some(id) => crate::ray::nodes(*head, &id, spec, self.token).await,
            None => Err(format!("`{}` has no container yet", spec.name)),
        };
        *cache = Some((Instant::now(), value.clone()));
        value
    }
}

struct Executor<'a, B: DockerBackend> {
    desired: &'a DesiredState,
    backends: &'a BTreeMap<HostName, B>,
    options: &'a ApplyOptions,
    reporter: &'a dyn Reporter,
    membership: Membership<'a, B>,
    /// Whether this plan starts a new head (a new GCS: no old entries).
    fresh_head: bool,
    /// Ray node IDs listed ALIVE under a worker's name before its container
    /// started: a killed container stays ALIVE in Ray for a while, and must
    /// not be taken for the new one.
    stale: std::sync::Mutex<std::collections::BTreeSet<String>>,
    containers: Containers,
    /// Set when the head failed to come up or died: every wait ends at once
    /// with this cause instead of running out its timeout.
    head_down: std::sync::Mutex<Option<String>>,
    /// Nodes whose container Docker restarted once during their wait: the
    /// second after their latest start (Unix seconds), from which their log
    /// is searched for Ray's failures (the first run's are behind them).
    restarted: std::sync::Mutex<BTreeMap<NodeName, i64>>,
    /// The head this plan removes, if any, and whether its container has
    /// stopped: a worker still stopping then can no longer leave Ray (its
    /// raylet waits for the head's GCS until Docker kills it).
    head_removal: Option<NodeName>,
    head_stopped: tokio::sync::watch::Sender<bool>,
}

/// A node whose `ray start` failed once (Ray gives a starting node's raylet
/// 30 s to register, which a loaded machine can exceed) is restarted by
/// Docker and waited for again; a second exit is a node that keeps exiting.
const TOLERATED_RESTARTS: i64 = 1;

/// Runs a plan's steps against the hosts' backends.
pub async fn execute<B: DockerBackend>(
    plan: &Plan,
    desired: &DesiredState,
    backends: &BTreeMap<HostName, B>,
    options: &ApplyOptions,
    reporter: &dyn Reporter,
) -> ApplyReport {
    let started = Instant::now();
    let head = desired.head();
    let exec = Executor {
        desired,
        backends,
        options,
        reporter,
        membership: Membership {
            head: backends.get(&head.host).map(|b| (b, head)),
            token: options.node_files.token.as_ref().map(|t| t.expose()),
            cache: tokio::sync::Mutex::new(None),
        },
        fresh_head: plan
            .graph
            .graph
            .node_weights()
            .any(|s| matches!(s, Step::WaitGcs { node, .. } if *node == head.name)),
        head_down: std::sync::Mutex::new(None),
        restarted: std::sync::Mutex::new(BTreeMap::new()),
        head_removal: plan
            .changes
            .iter()
            .find(|c| c.role == crate::model::Role::Head && c.action == crate::plan::Action::Remove)
            .map(|c| c.node.clone()),
        head_stopped: tokio::sync::watch::Sender::new(false),
        stale: std::sync::Mutex::new(Default::default()),
        containers: std::sync::Mutex::new(
            plan.changes
                .iter()
                .filter(|c| c.action != crate::plan::Action::Remove)
                .filter_map(|c| Some((c.node.clone(), c.container()?.to_string())))
                .collect(),
        ),
    };
    let graph = &plan.graph;
    let order = graph.ordered();
    let mut outcome: BTreeMap<NodeIndex, Outcome> = BTreeMap::new();
    let mut running: FuturesUnordered<_> = FuturesUnordered::new();
    let mut in_flight: Vec<NodeIndex> = Vec::new();
    let mut outcomes = Vec::new();

    loop {
        // Mark the dependents of failures as skipped, and launch what is ready.
        let mut launched_any = true;
        while launched_any {
            launched_any = false;
            for i in &order {
                if outcome.contains_key(i) || in_flight.contains(i) {
                    continue;
                }
                let deps = graph.dependencies(*i);
                if let Some(bad) = deps.iter().find(|d| {
                    matches!(
                        outcome.get(d),
                        Some(Outcome::Failed { .. } | Outcome::Skipped { .. })
                    )
                }) {
                    let o = Outcome::Skipped {
                        because: format!("`{}` did not complete", graph.graph[*bad]),
                    };
                    reporter.event(Event::Finished {
                        step: graph.graph[*i].clone(),
                        outcome: o.clone(),
                    });
                    outcomes.push((graph.graph[*i].clone(), o.clone()));
                    outcome.insert(*i, o);
                    launched_any = true;
                    continue;
                }
                let ready = deps
                    .iter()
                    .all(|d| matches!(outcome.get(d), Some(Outcome::Done { .. })));
                if let Some(signal) = options.interrupt.fired() {
                    // Interrupted: what has not started never will.
                    if ready || deps.is_empty() {
                        let o = Outcome::Skipped {
                            because: format!("interrupted ({})", crate::interrupt::name(signal)),
                        };
                        reporter.event(Event::Finished {
                            step: graph.graph[*i].clone(),
                            outcome: o.clone(),
                        });
                        outcomes.push((graph.graph[*i].clone(), o.clone()));
                        outcome.insert(*i, o);
                        launched_any = true;
                    }
                    continue;
                }
                if ready && in_flight.len() < options.max_parallel {
                    in_flight.push(*i);
                    let step = graph.graph[*i].clone();
                    let exec = &exec;
                    running.push(async move {
                        exec.reporter.event(Event::Started { step: step.clone() });
                        let t = Instant::now();
                        // Waits end at once when interrupted; Docker calls
                        // under way finish.
                        let run = async {
                            if step.is_wait() {
                                tokio::select! {
                                    r = exec.run(&step) => r,
                                    s = exec.options.interrupt.wait() => Err(format!(
                                        "interrupted ({}) while waiting",
                                        crate::interrupt::name(s)
                                    )),
                                }
                            } else {
                                exec.run(&step).await
                            }
                        };
                        let result = match run.await {
                            Err(e) if exec.options.interrupt.fired().is_some() => Err(e),
                            Err(e) => Err(exec.explain_failure(&step, e).await),
                            ok => ok,
                        };
                        let o = match result {
                            Ok(()) => Outcome::Done {
                                elapsed: t.elapsed(),
                            },
                            Err(error) => Outcome::Failed { error },
                        };
                        exec.reporter.event(Event::Finished {
                            step: step.clone(),
                            outcome: o.clone(),
                        });
                        (*i, o)
                    });
                    launched_any = true;
                }
            }
        }
        let next = if options.interrupt.fired().is_some() || running.is_empty() {
            running.next().await
        } else {
            tokio::select! {
                n = running.next() => n,
                _ = options.interrupt.wait() => continue,
            }
        };
        match next {
            Some((i, o)) => {
                in_flight.retain(|x| *x != i);
                outcomes.push((graph.graph[i].clone(), o.clone()));
                outcome.insert(i, o);
            }
            None => break,
        }
    }
    // Steps never reached (cannot happen in a DAG, but never lose a step).
    for i in &order {
        if !outcome.contains_key(i) {
            outcomes.push((
                graph.graph[*i].clone(),
                Outcome::Skipped {
                    because: "never became ready".to_string(),
                },
            ));
        }
    }
    let stale_node_ids = exec.stale.lock().unwrap().clone();
    let containers = exec.containers.lock().unwrap().clone();
    ApplyReport {
        outcomes,
        elapsed: started.elapsed(),
        stale_node_ids,
        containers,
    }
}

impl<'a, B: DockerBackend> Executor<'a, B> {
    fn backend(&self, host: &HostName) -> Result<&'a B, String> {
        self.backends
            .get(host)
            .ok_or_else(|| format!("no connection to `{host}`"))
    }

    fn spec(&self, node: &NodeName) -> Result<&'a NodeSpec, String> {
        self.desired
            .nodes
            .iter()
            .find(|n| n.name == *node)
            .ok_or_else(|| format!("`{node}` is not in the configuration"))
    }

    fn progress(&self, step: &Step, message: String) {
        self.reporter.event(Event::Progress {
            step: step.clone(),
            message,
        });
    }

    async fn run(&self, step: &Step) -> Result<(), String> {
        match step {
            Step::BuildImage { image, .. } => {
                let p = &self.options.pushes;
                let source = p.source.as_ref().ok_or_else(|| {
                    "no connection to this machine's Docker engine".to_string()
                })?;
                let build = p
                    .build
                    .as_ref()
                    .ok_or_else(|| format!("nothing says how to build `{image}`"))?;
                self.progress(step, format!("building from {}", build.context.display()));
                crate::transfer::build(&source.docker, build, image)
                    .await
                    .map_err(|e| format!("cannot build `{image}`: {e}"))?;
                let indexed = crate::transfer::index(&source.docker, image).await?;
                p.built.lock().await.insert(image.clone(), indexed);
                Ok(())
            }
            Step::PushImage { host, image, .. } => {
                let p = &self.options.pushes;
                let built = p.built.lock().await.get(image).cloned();
                let src = built
                    .as_ref()
                    .or_else(|| p.images.get(image))
                    .ok_or_else(|| format!("`{image}` is not on this machine's engine"))?;
                let source = match &src.from {
                    Some(relay) => p.relays.get(&HostName(relay.clone())).ok_or_else(|| {
                        format!("no connection to `{relay}`, which `{image}` is relayed from")
                    })?,
                    None => p.source.as_ref().ok_or_else(|| {
                        "no connection to this machine's Docker engine".to_string()
                    })?,
                };
                let has = p.layers.get(host).cloned().unwrap_or_default();
                let total = src.bytes_for(&has);
                let last = std::sync::Mutex::new(Instant::now());
                let report = |sent: u64| {
                    let mut at = last.lock().unwrap();
                    if at.elapsed() >= Duration::from_secs(2) {
                        *at = Instant::now();
                        self.progress(
                            step,
                            format!(
                                "sent {} of {}",
                                crate::model::human_size(sent),
                                crate::model::human_size(total)
                            ),
                        );
                    }
                };
                let sent = self
                    .backend(host)?
                    .receive_image(source, src, &has, &report)
                    .await
                    .map_err(|e| format!("cannot push `{image}` to `{host}`: {e}"))?;
                self.progress(
                    step,
                    format!("sent {} (image {} checked)", crate::model::human_size(sent), crate::model::excerpt(&src.id, 24)),
                );
                Ok(())
            }
            Step::PullImage { host, image } => self
                .backend(host)?
                .pull_image(image)
                .await
                .map_err(|e| {
                    format!(
                        "cannot pull `{image}` on `{host}`: {e}\n  hint: load it there from a machine that has it: `docker save {image} | {}{host} docker load`",
                        self.options.ssh
                    )
                }),
            Step::Remove {
                host,
                node,
                container,
            } => {
                let b = self.backend(host)?;
                // The container observed, by ID: never whatever has its name now.
                if container.is_empty() {
                    return Err(format!("`{node}`: the plan names no container to remove"));
                }
                let gone = |e: crate::engine::BackendError| {
                    if e.kind == crate::engine::ErrorKind::NotFound {
                        format!(
                            "container `{node}` (id {}) is gone since the plan was made: nothing was touched; run `seedcore plan` again",
                            short_id(container)
                        )
                    } else {
                        format!("cannot remove `{node}`: {e}")
                    }
                };
                let stop = b.stop_container(container, self.options.stop_timeout.as_secs());
                if self.head_removal.as_ref() == Some(node) {
                    stop.await.map_err(gone)?;
                    self.head_stopped.send_replace(true);
                } else {
                    // Stopped with its head (the whole cluster goes): once
                    // the head is down, the worker cannot leave Ray any more
                    // and is removed at once rather than at `timeouts.stop`.
                    let mut head_stopped = self.head_stopped.subscribe();
                    tokio::select! {
                        r = stop => r.map_err(gone)?,
                        _ = head_stopped.wait_for(|s| *s) => self.progress(
                            step,
                            "the head has stopped: removed without waiting".to_string(),
                        ),
                    }
                }
                b.remove_container(container).await.map_err(gone)
            }
            Step::Create { host, node } => {
                let spec = self.spec(node)?;
                let extra = &self.options.node_files;
                let mut labels = spec.labels(&self.desired.cluster);
                labels.extend(extra.labels.clone());
                let b = self.backend(host)?;
                let id = b
                    .create_container(spec, &labels)
                    .await
                    .map_err(|e| format!("cannot create `{node}`: {e}"))?;
                let files = if spec.role == crate::model::Role::Head {
                    &extra.head
                } else {
                    &extra.worker
                };
                if !files.is_empty() {
                    if let Err(e) = b.put_files(&id, files).await {
                        // Never leave a node that would start without them.
                        let _ = b.remove_container(&id).await;
                        return Err(format!(
                            "cannot hand its token and secrets to `{node}`: {e}"
                        ));
                    }
                }
                self.containers.lock().unwrap().insert(node.clone(), id);
                Ok(())
            }
            Step::Start {
                host,
                node,
                container,
            } => {
                let id = match container {
                    Some(id) => id.clone(),
                    None => self.container(node)?,
                };
                if !self.fresh_head && *node != self.desired.head().name {
                    self.remember_stale(node).await;
                }
                self.backend(host)?
                    .start_container(&id)
                    .await
                    .map_err(|e| {
                        if e.kind == crate::engine::ErrorKind::NotFound {
                            format!(
                                "container `{node}` (id {}) is gone since the plan was made: nothing was touched; run `seedcore plan` again",
                                short_id(&id)
                            )
                        } else {
                            format!("cannot start `{node}`: {e}")
                        }
                    })
            }
            Step::WaitGcs { host, node } => {
                let spec = self.spec(node)?;
                let port = spec.ports.head.as_ref().map_or(0, |h| h.gcs);
                self.wait_port(step, host, spec, port, "GCS")
                    .await
                    .inspect_err(|e| self.mark_head_down(e))
            }
            Step::WaitServe { host, node } => {
                let spec = self.spec(node)?;
                let port = spec
                    .ports
                    .head
                    .as_ref()
                    .and_then(|h| h.serve)
                    .ok_or_else(|| format!("`{node}` runs no Serve"))?;
                self.wait_port(step, host, spec, port, "Serve HTTP").await
            }
            Step::WaitReady { host, node } => {
                let spec = self.spec(node)?;
                let result = self.wait_alive(step, host, spec).await;
                if spec.role == Role::Head {
                    if let Err(e) = &result {
                        self.mark_head_down(e);
                    }
                }
                result
            }
            Step::Drain {
                host,
                node,
                container,
            } => self.drain(step, host, node, container).await,
        }
    }

    /// A failed step's error, or, when its host no longer answers at all,
    /// that the connection to it was lost.
    async fn explain_failure(&self, step: &Step, error: String) -> String {
        let host = step.host();
        let Ok(b) = self.backend(host) else {
            return error;
        };
        match tokio::time::timeout(Duration::from_secs(3), b.describe()).await {
            Ok(Ok(_)) => error,
            _ => format!(
                "SSH connection to `{host}` lost (its Docker engine no longer answers): {}",
                error.lines().next().unwrap_or_default()
            ),
        }
    }

    /// The container a node runs in now (observed or created).
    fn container(&self, node: &NodeName) -> Result<String, String> {
        self.containers
            .lock()
            .unwrap()
            .get(node)
            .cloned()
            .ok_or_else(|| format!("`{node}` has no container"))
    }

    /// The address Ray advertises for nodes on `host`.
    fn node_address(&self, host: &HostName) -> String {
        self.desired
            .nodes
            .iter()
            .find(|n| n.host == *host)
            .map(|n| n.node_ip.clone())
            .unwrap_or_else(|| {
                if host.is_local() {
                    "127.0.0.1".to_string()
                } else {
                    host.0.clone()
                }
            })
    }

    /// Records the Ray node IDs listed ALIVE under `node`'s name now.
    async fn remember_stale(&self, node: &NodeName) {
        if let Ok(nodes) = self
            .membership
            .nodes(self.options.poll_interval, &self.containers)
            .await
        {
            let mut stale = self.stale.lock().unwrap();
            for n in nodes
                .iter()
                .filter(|n| n.node_name == node.0 && n.is_alive())
            {
                stale.insert(n.node_id.clone());
            }
        }
    }

    /// Fails early when the container died, with its last log lines. A
    /// first exit is waited out (Docker restarts the container).
    async fn check_alive(&self, b: &B, node: &NodeName) -> Result<(), String> {
        let id = self.container(node)?;
        let what = match b.inspect_container(&id).await {
            Ok(Some(d)) if d.state == "running" => {
                // Restarted once: its log is searched from this run on.
                if (1..=TOLERATED_RESTARTS).contains(&d.restart_count) {
                    let since = d.started_at.as_deref().and_then(crate::model::unix_seconds);
                    if let Some(since) = since {
                        self.restarted
                            .lock()
                            .unwrap()
                            .insert(node.clone(), since + 1);
                    }
                }
                return Ok(());
            }
            Ok(Some(d)) if d.state == "restarting" && d.restart_count <= TOLERATED_RESTARTS => {
                return Ok(())
            }
            Ok(Some(d)) if d.state == "restarting" => format!(
                "`{node}` keeps exiting (restarted {} times)",
                d.restart_count
            ),
            Ok(Some(d)) if d.restart_count > 0 => format!(
                "`{node}` keeps exiting (restarted {} times, now {})",
                d.restart_count, d.state
            ),
            Ok(Some(d)) => format!(
                "`{node}` is {}{}",
                d.state,
                d.exit_code
                    .map(|c| format!(" (exit code {c})"))
                    .unwrap_or_default()
            ),
            Ok(None) => return Err(format!("`{node}` disappeared")),
            Err(e) => return Err(format!("cannot inspect `{node}`: {e}")),
        };
        let tail = self.log_tail(b, node).await;
        Err(match crate::ray::diagnose(&tail) {
            Some(d) => format!("{what}: {}\n  hint: {}\n{tail}", d.cause, d.fix),
            None => format!("{what}\n{tail}"),
        })
    }

    /// Ends a wait on a failure Ray printed, in the node's log or in the
    /// GCS's and raylet's own logs inside its container, while the container
    /// still runs (checked every few polls).
    async fn check_log(&self, b: &B, node: &NodeName, poll: u32) -> Result<(), String> {
        // About every two seconds (at least every third poll): reading
        // Ray's own logs starts a process in the container.
        let every = (LOG_CHECK_EVERY.as_millis() / self.options.poll_interval.as_millis().max(1))
            .max(3) as u32;
        if poll % every != every - 1 {
            return Ok(());
        }
        let since = self.restarted.lock().unwrap().get(node).copied();
        let tail = self.log_tail_since(b, node, since).await;
        let mut text = tail.clone();
        if let Ok(id) = self.container(node) {
            if let Ok(out) = b.exec(&id, &ray_logs_command()).await {
                text.push_str(&out.stdout);
            }
        }
        match crate::ray::diagnose(&text) {
            Some(d) => Err(format!("`{node}`: {}\n  hint: {}\n{tail}", d.cause, d.fix)),
            None => Ok(()),
        }
    }

    /// The last 20 lines of a container's log, indented, for error messages.
    async fn log_tail(&self, b: &B, node: &NodeName) -> String {
        self.log_tail_since(b, node, None).await
    }

    /// [`Self::log_tail`], from `since` (Unix seconds) on when given.
    async fn log_tail_since(&self, b: &B, node: &NodeName, since: Option<i64>) -> String {
        let Ok(id) = self.container(node) else {
            return format!("  (no container of `{node}` to read a log from)");
        };
        let mut lines = String::new();
        let mut stream = b.logs(
            &id,
            LogOptions {
                follow: false,
                tail: Some(20),
                since,
            },
        );
        while let Ok(Some(Ok(chunk))) =
            tokio::time::timeout(Duration::from_secs(5), stream.next()).await
        {
            lines.push_str(&chunk);
        }
        let body: Vec<String> = lines.lines().map(|l| format!("    | {l}")).collect();
        if body.is_empty() {
            format!("  (no log lines from `{node}`)")
        } else {
            format!("  last log lines of `{node}`:\n{}", body.join("\n"))
        }
    }

    /// Waits until `port` on the node's address accepts connections from
    /// inside its container, watching the container all along.
    async fn wait_port(
        &self,
        step: &Step,
        host: &HostName,
        spec: &NodeSpec,
        port: u16,
        what: &str,
    ) -> Result<(), String> {
        let b = self.backend(host)?;
        let deadline = Instant::now() + self.options.head_ready_timeout;
        self.progress(step, format!("waiting for {what} on port {port}"));
        // A process of this container listens on the port (psutil comes
        // with Ray): anything else holding it is not this node answering.
        let probe = vec![
            "python3".to_string(),
            "-c".to_string(),
            LISTENS.to_string(),
            port.to_string(),
        ];
        let mut poll = 0;
        // The container started a moment ago: the first probe from inside
        // waits its turn unless the loopback finds something listening.
        let mut probed: Option<Instant> = Some(Instant::now());
        loop {
            self.check_alive(b, &spec.name).await?;
            self.check_log(b, &spec.name, poll).await?;
            poll += 1;
            let id = self.container(&spec.name)?;
            // The host's loopback says cheaply whether anything listens;
            // the probe in the container, which starts a process there,
            // runs when something does (or every second, should the
            // loopback not tell).
            let listens = b.loopback_listens(port).await.unwrap_or(false);
            let due = probed.is_none_or(|at| at.elapsed() >= PROBE_EVERY);
            if listens || due {
                probed = Some(Instant::now());
                if let Ok(out) = b.exec(&id, &probe).await {
                    if out.exit_code == 0 {
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "`{}`: {what} did not answer on port {port} within {}s (timeouts.head_ready)\n{}",
                    spec.name,
                    self.options.head_ready_timeout.as_secs(),
                    self.log_tail(b, &spec.name).await
                ));
            }
            tokio::time::sleep(self.options.poll_interval).await;
        }
    }

    /// Records that the head cannot come up: every wait ends at once.
    fn mark_head_down(&self, why: &str) {
        let mut down = self.head_down.lock().unwrap();
        if down.is_none() {
            *down = Some(why.lines().next().unwrap_or(why).to_string());
        }
    }

    /// Why the head cannot come up, if it cannot.
    fn head_down(&self) -> Option<String> {
        self.head_down.lock().unwrap().clone()
    }

    async fn wait_alive(
        &self,
        step: &Step,
        host: &HostName,
        spec: &NodeSpec,
    ) -> Result<(), String> {
        let b = self.backend(host)?;
        let deadline = Instant::now() + self.options.nodes_alive_timeout;
        self.progress(step, "waiting for Ray to list it ALIVE".to_string());
        let head = self.desired.head();
        let mut last;
        let mut poll = 0;
        loop {
            if spec.role == Role::Worker {
                if let Some(why) = self.head_down() {
                    return Err(format!(
                        "`{}` cannot join: the head `{}` did not come up ({why})",
                        spec.name, head.name
                    ));
                }
                // The head dying ends every worker's wait, not just its own.
                if let Ok(hb) = self.backend(&head.host) {
                    if let Err(e) = self.check_alive(hb, &head.name).await {
                        self.mark_head_down(&e);
                        continue;
                    }
                }
            }
            // Ray's word first: a node it lists up is up, even when its
            // host stopped answering us a moment ago.
            match self
                .membership
                .nodes(self.options.poll_interval, &self.containers)
                .await
            {
                Ok(nodes) => {
                    let stale = self.stale.lock().unwrap().clone();
                    let fresh: Vec<&crate::ray::RayNode> = nodes
                        .iter()
                        .filter(|n| !stale.contains(&n.node_id))
                        .collect();
                    if fresh.iter().any(|n| crate::ray::is_up(n, spec)) {
                        return Ok(());
                    }
                    last = match fresh.iter().find(|n| {
                        n.node_name == spec.name.0 && n.node_ip == spec.node_ip && n.is_alive()
                    }) {
                        Some(n) => format!("ALIVE with {} CPUs, {} declared", n.cpus(), spec.cpus),
                        None => "not listed by Ray yet".to_string(),
                    };
                }
                Err(e) => last = e,
            }
            self.check_alive(b, &spec.name).await?;
            self.check_log(b, &spec.name, poll).await?;
            poll += 1;
            if Instant::now() > deadline {
                return Err(format!(
                    "`{}` did not join Ray within {}s (timeouts.nodes_alive): {last}\n  hint: workers join the head's GCS at `head.host` as written in the configuration: it must be an address (or a name) that `{host}` can reach, not an ssh alias; check the firewall (the plan lists the ports) and the worker's log\n{}",
                    spec.name,
                    self.options.nodes_alive_timeout.as_secs(),
                    self.log_tail(b, &spec.name).await
                ));
            }
            tokio::time::sleep(self.options.poll_interval).await;
        }
    }

    /// Lets Ray move work off a worker, then stops Ray in it so the node
    /// leaves the cluster before its container goes.
    async fn drain(
        &self,
        step: &Step,
        host: &HostName,
        node: &NodeName,
        container: &str,
    ) -> Result<(), String> {
        let b = self.backend(host)?;
        let head = self.desired.head();
        let hb = self.backend(&head.host)?;
        if container.is_empty() {
            return Err(format!("`{node}`: the plan names no container to drain"));
        }
        let nodes = match self
            .membership
            .nodes(Duration::ZERO, &self.containers)
            .await
        {
            Ok(n) => n,
            Err(e) => {
                self.progress(
                    step,
                    format!("cannot ask Ray ({e}); removing without drain"),
                );
                return Ok(());
            }
        };
        // By name and address: a renumbered node of the same name may be
        // starting on another host.
        let address = self.node_address(host);
        let Some(ray_node) = nodes
            .iter()
            .find(|n| n.node_name == node.0 && n.is_alive() && n.node_ip == address)
        else {
            return Ok(());
        };
        self.progress(step, "draining".to_string());
        let drain = vec![
            "ray".to_string(),
            "drain-node".to_string(),
            format!(
                "--address={}:{}",
                head.node_ip,
                head.ports.head.as_ref().map(|h| h.gcs).unwrap_or(6380)
            ),
            format!("--node-id={}", ray_node.node_id),
            "--reason=DRAIN_NODE_REASON_PREEMPTION".to_string(),
            "--reason-message=seedcore: node removed from the configuration".to_string(),
            format!(
                "--deadline-remaining-seconds={}",
                self.options.drain_timeout.as_secs()
            ),
        ];
        let head_container = self.container(&head.name)?;
        match hb.exec(&head_container, &drain).await {
            Ok(o) if o.exit_code == 0 => {}
            Ok(o) => self.progress(
                step,
                format!("drain refused: {}", crate::ray::tail(&o.stderr, 1)),
            ),
            Err(e) => self.progress(step, format!("drain failed: {e}")),
        }
        // Stopping the container (SIGTERM to `ray start --block`) lets the
        // raylet leave cleanly; a manual stop is not undone by the restart
        // policy, as a `ray stop` inside it would be.
        b.stop_container(container, self.options.stop_timeout.as_secs())
            .await
            .map_err(|e| {
                if e.kind == crate::engine::ErrorKind::NotFound {
                    format!(
                        "container `{node}` (id {}) is gone since the plan was made: nothing was touched; run `seedcore plan` again",
                        short_id(container)
                    )
                } else {
                    format!("cannot stop `{node}`: {e}")
                }
            })?;
        let deadline = Instant::now() + self.options.drain_timeout;
        loop {
            match self
                .membership
                .nodes(Duration::ZERO, &self.containers)
                .await
            {
                Ok(nodes)
                    if !nodes
                        .iter()
                        .any(|n| n.node_id == ray_node.node_id && n.is_alive()) =>
                {
                    return Ok(())
                }
                _ => {}
            }
            if Instant::now() > deadline {
                self.progress(
                    step,
                    "still listed ALIVE after the drain timeout; removing".to_string(),
                );
                return Ok(());
            }
            tokio::time::sleep(self.options.poll_interval).await;
        }
    }
}

/// Waits until Ray lists every declared node ALIVE with its CPUs; returns the
/// nodes still missing at the deadline (empty when whole).
pub async fn wait_whole<B: DockerBackend>(
    desired: &DesiredState,
    head_container: &str,
    backends: &BTreeMap<HostName, B>,
    stale: &std::collections::BTreeSet<String>,
    token: Option<&str>,
    timeout: Duration,
    poll: Duration,
) -> Result<Vec<(NodeName, String)>, String> {
    let head = desired.head();
    let hb = backends
        .get(&head.host)
        .ok_or_else(|| format!("no connection to `{}`", head.host))?;
    let deadline = Instant::now() + timeout;
    loop {
        let missing = match crate::ray::nodes(hb, head_container, head, token).await {
            Ok(nodes) => {
                let fresh: Vec<crate::ray::RayNode> = nodes
                    .into_iter()
                    .filter(|n| !stale.contains(&n.node_id))
                    .collect();
                crate::ray::missing_nodes(desired, &fresh)
            }
            Err(e) => desired
                .nodes
                .iter()
                .map(|n| (n.name.clone(), e.clone()))
                .collect(),
        };
        if missing.is_empty() || Instant::now() > deadline {
            return Ok(missing);
        }
        tokio::time::sleep(poll).await;
    }
}

/// The first 12 characters of a container ID, as Docker shows it.
pub fn short_id(id: &str) -> String {
    crate::model::excerpt(&id.chars().take(12).collect::<String>(), 12)
}
