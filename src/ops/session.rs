//! A session with the hosts: one SSH connection per host (the Docker socket
//! forwarded through it), the observation of every host that concerns this
//! cluster, and the desired state settled against it (the cluster's identity,
//! the ports running nodes keep). Every operation that talks to the hosts
//! opens one; closing it shuts every SSH master down.

use super::{Error, Result};
use crate::config::Loaded;
use crate::engine::EngineBackend;
use crate::memory;
use crate::model::{DesiredState, HostName, HostObservation, ObservedContainer, ObservedState};
use crate::observe;
use crate::ownership;
use crate::topology;
use crate::transport::{Connection, Transport, TransportError};
use futures_util::stream::{self, StreamExt};
use std::collections::{BTreeMap, BTreeSet};

/// Open connections, and the hosts that could not be reached.
pub struct Hosts {
    // Declared before the transport: fields drop in order, and a session's
    // drop shuts its master down through the control socket, which must
    // still exist.
    pub connections: BTreeMap<HostName, Connection>,
    pub failures: BTreeMap<HostName, TransportError>,
    /// Each host's listening sockets with their holders, asked once per
    /// session (lowering and preflight both read it), or why not.
    pub listeners: BTreeMap<HostName, std::result::Result<Vec<crate::checks::Listener>, String>>,
    /// Every container of each observed host, whoever made it (preflight
    /// names the holders of ports from it).
    pub containers: BTreeMap<HostName, Vec<ObservedContainer>>,
    /// The hosts each observed host remembers for this cluster's identity
    /// (an apply rewrites a list that is not what it should be).
    pub remembered: BTreeMap<HostName, Vec<HostName>>,
    /// The cluster lock, for operations that change the cluster.
    pub lock: Option<crate::lock::Held>,
    /// Said about the session: the lock (a stale one broken, none taken),
    /// hosts whose lists could not be read.
    pub notes: Vec<String>,
    /// This machine's engine, when images are pushed from it.
    pub source: Option<crate::engine::EngineBackend>,
    pub transport: Transport,
}

impl Hosts {
    pub fn backends(&self) -> BTreeMap<HostName, EngineBackend> {
        self.connections
            .iter()
            .map(|(h, c)| (h.clone(), c.backend.clone()))
            .collect()
    }

    /// One line per host that could not be reached, for the operator.
    pub fn warnings(&self) -> Vec<String> {
        self.failures
            .iter()
            .map(|(h, e)| {
                format!(
                    "warning: `{h}` is unreachable ({}): nodes left there cannot be removed now",
                    e.summary()
                )
            })
            .chain(self.notes.iter().cloned())
            .collect()
    }

    /// Releases the lock (if held), then closes every connection.
    pub async fn close(mut self) {
        if let Some(lock) = self.lock.take() {
            lock.release().await;
        }
        let start = crate::timings::now();
        futures_util::future::join_all(self.connections.into_values().map(Connection::close)).await;
        crate::timings::record("", "connections closed", start);
        self.transport.cleanup();
    }
}

/// What one host told in one visit, besides its connection.
struct Visit {
    observation: HostObservation,
    /// Every container on the host, whoever made it.
    containers: Vec<ObservedContainer>,
    /// The lists of hosts it remembers for this cluster name, by identity
    /// (`None`: they could not be read).
    remembered: Option<BTreeMap<String, Vec<HostName>>>,
    listeners: std::result::Result<Vec<crate::checks::Listener>, String>,
}

/// What the head told, asked as soon as its host was observed.
struct HeadAnswers {
    /// The head's ports the questions went to (the plan's must be the same).
    ports: Option<crate::model::HeadPorts>,
    ray: Option<Vec<crate::ray::RayNode>>,
    secrets: std::result::Result<crate::secrets::HeadSecrets, String>,
}

/// One host's part of opening a session.
struct Reached {
    host: HostName,
    connection: std::result::Result<Connection, TransportError>,
    visit: Option<Visit>,
    head: Option<HeadAnswers>,
}

/// The lock's part, shared by the hosts' tasks: the head's host takes it
/// right after connecting; every host is observed only once it is settled,
/// so that what is planned is what the lock protects.
struct LockGate<'a> {
    request: &'a crate::lock::Request,
    settled: tokio::sync::watch::Sender<bool>,
    held: tokio::sync::Mutex<Option<std::result::Result<crate::lock::Held, String>>>,
    notes: std::sync::Mutex<Vec<String>>,
}

impl LockGate<'_> {
    async fn take(&self, conn: Option<&Connection>, head: &HostName, cluster: &str) {
        match conn {
            Some(conn) if !head.is_local() => {
                let got = crate::timings::span(
                    head.as_str(),
                    "cluster lock taken",
                    crate::lock::acquire(conn, cluster, self.request),
                )
                .await;
                *self.held.lock().await = Some(got.map_err(|e| e.to_string()));
            }
            Some(_) => self.notes.lock().unwrap().push(
                "warning: the head runs on this machine (`local`): no cluster lock is taken"
                    .to_string(),
            ),
            None => self.notes.lock().unwrap().push(format!(
                "warning: `{head}` (the head's host) is unreachable: no cluster lock is taken"
            )),
        }
        self.settled.send_replace(true);
    }

    /// Waits until the lock is taken, or known not to be; `false` when
    /// another holder has it (nothing is to be observed then).
    async fn wait(&self) -> bool {
        let mut rx = self.settled.subscribe();
        let _ = rx.wait_for(|settled| *settled).await;
        !matches!(&*self.held.lock().await, Some(Err(_)))
    }
}

/// Connects to `host`, then observes it and reads what it keeps (at once);
/// on the head's host, asks the head its questions as soon as it is observed.
async fn reach(
    transport: &Transport,
    host: HostName,
    loaded: &Loaded,
    fresh: &DesiredState,
    gate: Option<&LockGate<'_>>,
    ask_head: bool,
) -> Reached {
    let head = &fresh.head().host;
    let unvisited = |host: HostName, connection| Reached {
        host,
        connection,
        visit: None,
        head: None,
    };
    let mut conn = match transport.open(&host).await {
        Ok(c) => c,
        Err(e) => {
            if let Some(gate) = gate.filter(|_| host == *head) {
                gate.take(None, head, &fresh.cluster.name).await;
            }
            return unvisited(host, Err(e));
        }
    };
    let ask = ask_head && host == *head;
    // Without a lock, the host's facts are read while its engine is asked;
    // with one, nothing is observed before the lock is settled.
    let (described, facts) = match gate {
        None => {
            let (described, facts) = tokio::join!(
                async {
                    let engine = transport.describe(&conn).await?;
                    let seen = observe_and_ask(&conn, engine.clone(), ask, loaded, fresh).await;
                    Ok::<_, TransportError>((engine, seen))
                },
                host_facts(&conn, &fresh.cluster.name),
            );
            (described, facts)
        }
        Some(gate) => {
            let (engine, go) = tokio::join!(transport.describe(&conn), async {
                if host == *head {
                    gate.take(Some(&conn), head, &fresh.cluster.name).await;
                }
                gate.wait().await
            });
            match engine {
                Ok(engine) if !go => {
                    conn.engine = engine;
                    return unvisited(host, Ok(conn));
                }
                Ok(engine) => {
                    let (seen, facts) = tokio::join!(
                        observe_and_ask(&conn, engine.clone(), ask, loaded, fresh),
                        host_facts(&conn, &fresh.cluster.name),
                    );
                    (Ok((engine, seen)), facts)
                }
                Err(e) => (Err(e), (None, Err(String::new()))),
            }
        }
    };
    let (engine, (observation, containers, answers)) = match described {
        Ok(found) => found,
        Err(e) => {
            conn.close().await;
            return unvisited(host, Err(e));
        }
    };
    conn.engine = engine;
    let (remembered, listeners) = facts;
    Reached {
        host,
        connection: Ok(conn),
        visit: Some(Visit {
            observation,
            containers,
            remembered,
            listeners,
        }),
        head: answers,
    }
}

/// Observes a described host and, on the head's host (`ask`), asks the
/// head as soon as its container is seen.
async fn observe_and_ask(
    conn: &Connection,
    engine: crate::model::EngineInfo,
    ask: bool,
    loaded: &Loaded,
    fresh: &DesiredState,
) -> (HostObservation, Vec<ObservedContainer>, Option<HeadAnswers>) {
    let host = conn.host.as_str();
    let (observation, containers) = crate::timings::span(
        host,
        "observed",
        observe::observe_described(&conn.backend, engine, fresh, &conn.host),
    )
    .await;
    let answers = if ask {
        Some(
            crate::timings::span(
                host,
                "head asked",
                head_answers(conn, &observation, loaded, fresh),
            )
            .await,
        )
    } else {
        None
    };
    (observation, containers, answers)
}

/// Connects to and visits `hosts` (at most `parallel` at a time; the first
/// is started first), recording each in `all`; returns what each told.
async fn reach_all(
    all: &mut Hosts,
    hosts: Vec<HostName>,
    loaded: &Loaded,
    fresh: &DesiredState,
    parallel: usize,
    gate: Option<&LockGate<'_>>,
) -> (BTreeMap<HostName, Visit>, Option<HeadAnswers>) {
    let transport = &all.transport;
    let reached: Vec<Reached> = stream::iter(hosts)
        .map(|h| reach(transport, h, loaded, fresh, gate, true))
        .buffer_unordered(parallel)
        .collect()
        .await;
    let mut visits = BTreeMap::new();
    let mut head = None;
    for r in reached {
        match r.connection {
            Ok(c) => {
                all.connections.insert(r.host.clone(), c);
            }
            Err(e) => {
                all.failures.insert(r.host.clone(), e);
            }
        }
        if let Some(v) = r.visit {
            visits.insert(r.host.clone(), v);
        }
        if r.head.is_some() {
            head = r.head;
        }
    }
    (visits, head)
}

/// Connects to the declared hosts, observes them, settles the cluster's
/// identity (see `ownership`), then visits the hosts that the hosts remember
/// for that identity. Returns the connections, the observation and the
/// desired state lowered with the identity and the ports running nodes keep.
/// With `partial`, unreachable declared hosts are warned about and left out
/// (for `destroy`); otherwise they are an error naming each with its fix.
///
/// Each host goes its own way, all at once: connect, then observe it and read
/// what it keeps at the same time; the head's host then asks the head (Ray's
/// nodes and work, its secrets) while the other hosts are still answering.
pub async fn open(
    loaded: &Loaded,
    fresh: &DesiredState,
    parallel: Option<usize>,
    partial: bool,
) -> Result<(Hosts, ObservedState, DesiredState)> {
    open_with(loaded, fresh, parallel, partial, None).await
}

/// [`open`], taking the cluster lock on the head's host before anything is
/// observed (so that what is planned is what the lock protects).
pub async fn open_locked(
    loaded: &Loaded,
    fresh: &DesiredState,
    parallel: Option<usize>,
    partial: bool,
    lock: &crate::lock::Request,
) -> Result<(Hosts, ObservedState, DesiredState)> {
    open_with(loaded, fresh, parallel, partial, Some(lock)).await
}

async fn open_with(
    loaded: &Loaded,
    fresh: &DesiredState,
    parallel: Option<usize>,
    partial: bool,
    lock: Option<&crate::lock::Request>,
) -> Result<(Hosts, ObservedState, DesiredState)> {
    let transport = Transport::new(&loaded.config.ssh).await.map_err(|e| {
        Error::Hosts(format!(
            "error: cannot create the SSH control directory: {e}\nhint: seedcore keeps its SSH sockets in `$XDG_RUNTIME_DIR/seedcore` or `/tmp/seedcore-<uid>`; make that place writable for your user"
        ))
    })?;
    let parallel = parallel.unwrap_or(loaded.config.ssh.max_parallel).max(1);
    let mut hosts = Hosts {
        connections: BTreeMap::new(),
        failures: BTreeMap::new(),
        listeners: BTreeMap::new(),
        containers: BTreeMap::new(),
        remembered: BTreeMap::new(),
        lock: None,
        notes: Vec::new(),
        source: None,
        transport,
    };
    let declared = fresh.hosts();
    let head_host = fresh.head().host.clone();
    // The head's host first: with fewer slots than hosts, the others wait
    // for its lock.
    let mut order: Vec<HostName> = vec![head_host.clone()];
    order.extend(declared.iter().filter(|h| **h != head_host).cloned());
    let gate = lock.map(|request| LockGate {
        request,
        settled: tokio::sync::watch::Sender::new(false),
        held: tokio::sync::Mutex::new(None),
        notes: std::sync::Mutex::new(Vec::new()),
    });
    let pushed: BTreeSet<String> = fresh
        .pushed_images_by_host()
        .into_values()
        .flatten()
        .collect();
    let ((mut visits, head), local) = tokio::join!(
        reach_all(&mut hosts, order, loaded, fresh, parallel, gate.as_ref()),
        async {
            match pushed.is_empty() {
                true => None,
                false => Some(local_images(pushed.clone()).await),
            }
        }
    );
    if let Some(gate) = gate {
        hosts
            .notes
            .extend(gate.notes.into_inner().unwrap_or_default());
        match gate.held.into_inner() {
            Some(Ok(held)) => {
                if let Some(old) = &held.broke {
                    hosts.notes.push(format!(
                        "warning: took over a stale cluster lock on `{head_host}` (its holder ended without releasing it): {}",
                        old.describe()
                    ));
                }
                hosts.lock = Some(held);
            }
            Some(Err(text)) => {
                hosts.close().await;
                return Err(Error::Locked(text));
            }
            None => {}
        }
    }
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
        return Err(Error::Hosts(text));
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
        return Err(Error::Hosts(format!(
            "{text}\nerror: the plan is incomplete: {n} host(s) could not be observed\nhint: to go on with the other hosts, pass `--skip-unreachable` (nothing on the unreachable hosts is planned or removed), or narrow the plan with `--target NODE|GROUP|HOST`"
        )));
    }
    let mut observed = ObservedState::new();
    for h in &declared {
        let obs = match (visits.get(h), hosts.failures.get(h)) {
            (Some(v), _) => v.observation.clone(),
            (None, Some(e)) => observe::unreachable_host(e.summary()),
            (None, None) => continue,
        };
        observed.hosts.insert(h.clone(), obs);
    }
    let identity = ownership::resolve(&loaded.config, &observed);
    // Hosts this cluster ran on that the configuration no longer names.
    let mut extra: Vec<HostName> = visits
        .values()
        .filter_map(|v| v.remembered.as_ref()?.get(&identity.id))
        .flatten()
        .filter(|h| !declared.contains(h))
        .cloned()
        .collect();
    extra.sort();
    extra.dedup();
    if !extra.is_empty() {
        let (more, _) = reach_all(&mut hosts, extra.clone(), loaded, fresh, parallel, None).await;
        for h in &extra {
            let obs = match (more.get(h), hosts.failures.get(h)) {
                (Some(v), _) => v.observation.clone(),
                (None, Some(e)) => observe::unreachable_host(e.summary()),
                (None, None) => continue,
            };
            observed.hosts.insert(h.clone(), obs);
        }
        visits.extend(more);
    }
    observed.observed_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs() as i64);
    // What listens on each host (and who holds it): new nodes never get
    // those ports, and preflight names the holders.
    for (h, v) in visits {
        if let (Some(o), Ok(found)) = (observed.hosts.get_mut(&h), &v.listeners) {
            let mut ports: Vec<u16> = found.iter().map(|l| l.port).collect();
            ports.sort();
            ports.dedup();
            o.listening = ports;
        }
        hosts.listeners.insert(h.clone(), v.listeners);
        hosts.containers.insert(h.clone(), v.containers);
        match v.remembered {
            Some(mut lists) => {
                let list = lists.remove(&identity.id).unwrap_or_default();
                hosts.remembered.insert(h, list);
            }
            None => hosts.notes.push(unread_lists(&h)),
        }
    }
    let kept = ownership::kept_ports(&identity, &observed);
    let desired = match topology::lower(&loaded.config, &identity, &kept) {
        Ok(d) => d,
        Err(errors) => {
            hosts.close().await;
            return Err(Error::Config(loaded.source.errors(errors)));
        }
    };
    // The head's answers, unless the head's ports moved with the lowering
    // (then asked again at the right ones).
    let head = match head {
        Some(h) if h.ports == desired.head().ports.head => Some(h),
        _ => match hosts.connections.get(&desired.head().host) {
            Some(conn) => match observed.hosts.get(&desired.head().host) {
                Some(obs) => Some(head_answers(conn, obs, loaded, &desired).await),
                None => None,
            },
            None => None,
        },
    };
    if let Some(head) = head {
        observed.ray = head.ray;
        observed.head_secrets = match head.secrets {
            Ok(found) => found,
            Err(e) => {
                hosts.close().await;
                return Err(Error::Hosts(format!(
                    "error: cannot read the Ray token and digest key the head keeps: {}\nhint: nothing was changed; run again once `{}` answers (a new token would replace every node)",
                    crate::model::excerpt(&e, 300),
                    desired.head().host
                )));
            }
        };
    }
    if !desired.pushed.is_empty() {
        let building = loaded
            .config
            .cluster
            .build
            .is_some()
            .then(|| loaded.config.cluster.image.clone());
        let local = match local {
            Some(local) => local,
            None => local_images(BTreeSet::new()).await,
        };
        if let Err(e) = push_sources(&mut hosts, &mut observed, &desired, building, local).await {
            hosts.close().await;
            return Err(Error::Hosts(e));
        }
    }
    observed.ray_versions = crate::timings::span(
        "",
        "Ray versions learnt",
        ray_versions(&hosts, &observed, &desired),
    )
    .await;
    Ok((hosts, observed, desired))
}

/// The lists of hosts a host remembers, by identity (`None`: not read
/// whole), and its listening sockets (or why not).
type HostFacts = (
    Option<BTreeMap<String, Vec<HostName>>>,
    std::result::Result<Vec<crate::checks::Listener>, String>,
);

/// What a host keeps that concerns this cluster name, in one command: its
/// listening sockets with their holders, then the lists of hosts it
/// remembers. On `local`, both read here.
async fn host_facts(conn: &Connection, name: &str) -> HostFacts {
    if conn.host.is_local() {
        let listeners = listeners_of(
            conn.run_on_host(&["sh", "-c", crate::checks::LISTENERS_SCRIPT], None)
                .await
                .map(|o| {
                    let code = o.status.code();
                    (o.stdout, o.stderr, code)
                }),
        );
        return (memory::read(conn, name).await, listeners);
    }
    let script = format!(
        "( {} ); echo \"{FACTS_MARK} $?\"; ( {} )",
        crate::checks::LISTENERS_SCRIPT,
        memory::READ_SCRIPT
    );
    let out = crate::timings::span(
        conn.host.as_str(),
        "host facts read",
        conn.run_on_host(
            &["sh", "-c", &script, "sh", &memory::read_argument(name)],
            None,
        ),
    )
    .await;
    let Some(out) = out else {
        return (
            memory::read(conn, name).await,
            Err("cannot run commands there".to_string()),
        );
    };
    match parse_facts(&String::from_utf8_lossy(&out.stdout), &out.stderr) {
        // The lists were cut short: read once more on their own.
        (None, listeners) => (memory::read(conn, name).await, listeners),
        whole => whole,
    }
}

/// The warning for a host whose lists of hosts could not be read.
fn unread_lists(host: &HostName) -> String {
    format!(
        "warning: cannot read which hosts `{host}` remembers for this cluster: nodes on a host dropped from the configuration may be missing from this plan\nhint: run again; `seedcore status` lists every node Ray knows, with its host"
    )
}

/// Reads [`host_facts`]'s output: the sockets and their exit code before the
/// mark, the remembered lists after it (what a list file holds cannot reach
/// the sockets: it comes last).
fn parse_facts(stdout: &str, stderr: &[u8]) -> HostFacts {
    let (sockets, rest) = stdout.split_once(FACTS_MARK).unwrap_or((stdout, ""));
    let (code, remembered) = rest.split_once('\n').unwrap_or((rest, ""));
    let code = code.trim().parse::<i32>().ok();
    let listeners = listeners_of(Some((sockets.as_bytes().to_vec(), stderr.to_vec(), code)));
    (memory::parse_read(remembered), listeners)
}

/// Separates the listening sockets from the remembered hosts in
/// [`host_facts`]'s output (never printed by `ss` or the lists' reader).
const FACTS_MARK: &str = "==seedcore-listeners-exit";

/// The listeners from [`crate::checks::LISTENERS_SCRIPT`]'s output, error
/// output and exit code, or why not.
fn listeners_of(
    out: Option<(Vec<u8>, Vec<u8>, Option<i32>)>,
) -> std::result::Result<Vec<crate::checks::Listener>, String> {
    match out {
        Some((stdout, _, Some(0))) => Ok(crate::checks::parse_listeners(&String::from_utf8_lossy(
            &stdout,
        ))),
        Some((_, _, Some(3))) => Err("`ss` (iproute2) is not installed there".to_string()),
        Some((_, stderr, _)) => Err(format!(
            "listing its sockets failed: {}",
            crate::model::excerpt(String::from_utf8_lossy(&stderr).trim(), 200)
        )),
        None => Err("cannot run commands there".to_string()),
    }
}

/// The head's answers: its secrets (from its container, running or not),
/// then, when it runs, Ray's nodes and what runs where.
async fn head_answers(
    conn: &Connection,
    observation: &HostObservation,
    loaded: &Loaded,
    desired: &DesiredState,
) -> HeadAnswers {
    let spec = desired.head();
    let mut one = ObservedState::new();
    one.hosts.insert(spec.host.clone(), observation.clone());
    let identity = ownership::resolve(&loaded.config, &one);
    let container = observation.containers.iter().find(|c| {
        c.name == spec.name.0 && ownership::owner(&identity, c) == ownership::Owner::Ours
    });
    let mut answers = HeadAnswers {
        ports: spec.ports.head.clone(),
        ray: None,
        secrets: Ok(Default::default()),
    };
    let Some(container) = container else {
        return answers;
    };
    answers.secrets = head_secrets(conn, &container.id).await;
    if container.is_running() {
        let token = answers
            .secrets
            .as_ref()
            .ok()
            .and_then(|s| s.ray_token(&loaded.config))
            .map(|t| t.expose().to_string());
        answers.ray = crate::ray::nodes(&conn.backend, &container.id, spec, token.as_deref())
            .await
            .ok();
    }
    answers
}

/// What runs where on the cluster (jobs, actors, placement groups), asked
/// of the running head; `None` when it does not answer. Asked only when a
/// plan stops a running node (what the plan's "interrupts" say).
pub async fn cluster_work(
    hosts: &Hosts,
    observed: &ObservedState,
    desired: &DesiredState,
    loaded: &Loaded,
) -> Option<crate::model::ClusterWork> {
    let head = desired.head();
    let conn = hosts.connections.get(&head.host)?;
    let container = observed
        .hosts
        .get(&head.host)?
        .containers
        .iter()
        .find(|c| {
            c.name == head.name.0
                && c.is_running()
                && ownership::owner(&desired.cluster, c) == ownership::Owner::Ours
        })?;
    let token = observed.head_secrets.ray_token(&loaded.config);
    crate::timings::span(
        head.host.as_str(),
        "Ray's work asked",
        crate::ray::work(
            &conn.backend,
            &container.id,
            head,
            token.map(|t| t.expose()),
        ),
    )
    .await
    .ok()
}

/// This machine's Docker engine (`DOCKER_HOST=unix://...` or the default socket).
pub fn local_engine() -> std::result::Result<crate::engine::EngineBackend, String> {
    let socket = std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(str::to_string))
        .unwrap_or_else(|| "/var/run/docker.sock".to_string());
    bollard::Docker::connect_with_socket(&socket, 600, bollard::API_DEFAULT_VERSION)
        .map(|docker| crate::engine::EngineBackend {
            docker,
            loopback: None,
        })
        .map_err(|e| format!("cannot reach this machine's Docker engine at `{socket}`: {e}"))
}

/// This machine's engine (when it has one; a cluster host that has an
/// image stands in for it, relayed through seedcore's own sessions) and
/// what it has of the images seedcore pushes.
struct LocalImages {
    engine: std::result::Result<crate::engine::EngineBackend, String>,
    found: BTreeMap<String, std::result::Result<bollard::models::ImageInspect, String>>,
}

/// Asks this machine's engine for `images` (while the hosts are visited).
async fn local_images(images: BTreeSet<String>) -> LocalImages {
    let engine = match local_engine() {
        Ok(source) => match source.docker.negotiate_version().await {
            Ok(docker) => Ok(crate::engine::EngineBackend {
                docker,
                loopback: None,
            }),
            Err(e) => Err(format!("cannot reach this machine's Docker engine: {e}")),
        },
        Err(e) => Err(e),
    };
    let mut found = BTreeMap::new();
    if let Ok(source) = &engine {
        for image in images {
            let here = source
                .docker
                .inspect_image(&image)
                .await
                .map_err(|e| e.to_string());
            found.insert(image, here);
        }
    }
    LocalImages { engine, found }
}

/// For `image_source = "push"`: the images as this machine's engine lays
/// them out, and the layer stacks of each host that lacks one.
async fn push_sources(
    hosts: &mut Hosts,
    observed: &mut ObservedState,
    desired: &DesiredState,
    building: Option<String>,
    local: LocalImages,
) -> std::result::Result<(), String> {
    let hint = "hint: build or pull the image on this machine (`docker build -t IMAGE .`), or set `cluster.image_source = \"pull\"` to let each host pull it from a registry";
    let LocalImages {
        engine: local,
        mut found,
    } = local;
    let by_host = desired.pushed_images_by_host();
    let mut images: BTreeSet<String> = BTreeSet::new();
    for list in by_host.values() {
        images.extend(list.iter().cloned());
    }
    for image in images {
        let here = match (found.remove(&image), &local) {
            (Some(here), _) => here,
            (None, Ok(source)) => source
                .docker
                .inspect_image(&image)
                .await
                .map_err(|e| e.to_string()),
            (None, Err(e)) => Err(e.clone()),
        };
        let (id, from) = match here {
            Ok(i) => (i.id.unwrap_or_default(), None),
            // Built by this apply (its tag names the context's digest).
            Err(_) if local.is_ok() && building.as_deref() == Some(image.as_str()) => {
                observed.to_build.insert(image.clone());
                let needing = hosts_needing(&by_host, observed, &image, None);
                for h in needing {
                    if let Some(conn) = hosts.connections.get(&h) {
                        let layers = crate::transfer::chains_on(&conn.backend.docker)
                            .await
                            .map_err(|e| format!("error: on `{h}`: {e}"))?;
                        if let Some(o) = observed.hosts.get_mut(&h) {
                            o.layers = Some(layers);
                        }
                    }
                }
                continue;
            }
            Err(why) => match host_with_image(hosts, observed, &image) {
                Some((host, id)) => (id, Some(host)),
                None => {
                    return Err(format!(
                        "error: `image_source = \"push\"`, but neither this machine nor any cluster host has `{}` (this machine: {})\n{hint}",
                        crate::model::excerpt(&image, 200),
                        crate::model::excerpt(&why, 200)
                    ))
                }
            },
        };
        let needing = hosts_needing(&by_host, observed, &image, Some(&id));
        if needing.is_empty() {
            // Every host has exactly this image: nothing to index.
            observed.sources.insert(
                image.clone(),
                crate::transfer::SourceImage {
                    image: image.clone(),
                    id,
                    from: from.map(|h| h.0),
                    ..Default::default()
                },
            );
            continue;
        }
        let engine = match (&from, &local) {
            (Some(h), _) => hosts.connections.get(h).map(|c| &c.backend.docker),
            (None, Ok(source)) => Some(&source.docker),
            (None, Err(_)) => None,
        }
        .ok_or_else(|| format!("error: no connection to the engine that has `{image}`"))?;
        let mut indexed = crate::transfer::index(engine, &image)
            .await
            .map_err(|e| format!("error: {e}"))?;
        indexed.from = from.map(|h| h.0);
        observed.sources.insert(image.clone(), indexed);
        for h in needing {
            if observed.hosts.get(&h).is_some_and(|o| o.layers.is_some()) {
                continue;
            }
            if let Some(conn) = hosts.connections.get(&h) {
                let layers = crate::transfer::chains_on(&conn.backend.docker)
                    .await
                    .map_err(|e| format!("error: on `{h}`: {e}"))?;
                if let Some(o) = observed.hosts.get_mut(&h) {
                    o.layers = Some(layers);
                }
            }
        }
    }
    hosts.source = local.ok();
    Ok(())
}

/// A reachable cluster host that has `image` (the first in name order), with
/// its ID there: to push it from when this machine lacks it, or to ask it its
/// Ray version.
fn host_with_image(
    hosts: &Hosts,
    observed: &ObservedState,
    image: &str,
) -> Option<(HostName, String)> {
    observed.hosts.iter().find_map(|(h, o)| {
        let id = o.images.as_ref()?.get(image).cloned().flatten()?;
        (o.reachable && hosts.connections.contains_key(h)).then(|| (h.clone(), id))
    })
}

/// The reachable hosts that use `image` and do not have exactly `id` under
/// its name (any image under it when `id` is `None`: not built yet).
fn hosts_needing(
    by_host: &BTreeMap<HostName, Vec<String>>,
    observed: &ObservedState,
    image: &str,
    id: Option<&str>,
) -> Vec<HostName> {
    by_host
        .iter()
        .filter(|(_, l)| l.iter().any(|i| i == image))
        .map(|(h, _)| h.clone())
        .filter(|h| {
            observed.hosts.get(h).is_some_and(|o| {
                let here = o
                    .images
                    .as_ref()
                    .and_then(|m| m.get(image).cloned().flatten());
                o.reachable
                    && match id {
                        Some(id) => here.as_deref() != Some(id),
                        None => here.is_none(),
                    }
            })
        })
        .collect()
}

/// What this cluster's head keeps (its digest key and generated token),
/// read from its container (`id`) whether it runs or not.
async fn head_secrets(
    conn: &Connection,
    id: &str,
) -> std::result::Result<crate::secrets::HeadSecrets, String> {
    use crate::engine::DockerBackend;
    let mut found = crate::secrets::HeadSecrets::default();
    let (key, token) = tokio::join!(
        conn.backend
            .read_file(id, crate::model::NODE_DIGEST_KEY_PATH),
        conn.backend.read_file(id, crate::model::NODE_TOKEN_PATH)
    );
    // Only an absent file means "none": an error must not look like one.
    if let Some(key) = key.map_err(|e| e.to_string())? {
        found.digest_key = (key.len() >= 16).then_some(key);
    }
    if let Some(token) = token.map_err(|e| e.to_string())? {
        if let Ok(text) = String::from_utf8(token) {
            let text = text.trim().to_string();
            if !text.is_empty() {
                found.token = Some(crate::config::Secret::new(
                    crate::config::SecretOrigin::Inline,
                    text,
                ));
            }
        }
    }
    Ok(found)
}

/// The Ray version in each node image: from the cache by image ID, else
/// from a throwaway container on an engine that has the image.
async fn ray_versions(
    hosts: &Hosts,
    observed: &ObservedState,
    desired: &DesiredState,
) -> BTreeMap<String, String> {
    // The cache is a small file; read and written off the async runtime.
    let cache = tokio::task::spawn_blocking(crate::compat::cached)
        .await
        .unwrap_or_default();
    let mut learnt = BTreeMap::new();
    let mut out = BTreeMap::new();
    let mut images: Vec<&str> = desired.nodes.iter().map(|n| n.image.as_str()).collect();
    images.sort();
    images.dedup();
    for image in images {
        let on_host = host_with_image(hosts, observed, image).map(|(h, id)| (Some(h), id));
        let local = || {
            observed
                .sources
                .get(image)
                .filter(|s| s.from.is_none() && !s.id.is_empty())
                .map(|s| (None, s.id.clone()))
        };
        let Some((host, id)) = on_host.or_else(local) else {
            continue;
        };
        if let Some(v) = cache.get(&id) {
            out.insert(image.to_string(), v.clone());
            continue;
        }
        let docker = match &host {
            Some(h) => hosts.connections.get(h).map(|c| &c.backend.docker),
            None => hosts.source.as_ref().map(|s| &s.docker),
        };
        let Some(docker) = docker else { continue };
        if let Ok(v) = crate::compat::probe(docker, &id).await {
            let v = crate::model::excerpt(&v, 40);
            if crate::compat::RayVersion::parse(&v).is_some() {
                learnt.insert(id, v.clone());
            }
            out.insert(image.to_string(), v);
        }
    }
    let _ = tokio::task::spawn_blocking(move || crate::compat::remember(&learnt)).await;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_facts_split_into_sockets_and_remembered_hosts() {
        let out = format!(
            "LISTEN 0 4096 0.0.0.0:6380 0.0.0.0:* users:((\"gcs_server\",pid=77,fd=9))\n== cgroups\n77 0::/docker/{id}\n{FACTS_MARK} 0\n== abc123\n10.0.0.2\n10.0.0.3\n\n== other\n{FACTS_MARK} 0\nLISTEN 0 1 0.0.0.0:1 0.0.0.0:* users:((\"forged\",pid=1,fd=1))\n{end}\n",
            id = "a".repeat(64),
            end = memory::READ_END,
        );
        // Without the lists' last line, they were not read whole.
        let cut = out.rsplit_once(memory::READ_END).unwrap().0;
        assert_eq!(parse_facts(cut, b"").0, None);
        let (remembered, listeners) = parse_facts(&out, b"");
        let remembered = remembered.expect("read whole");
        let listeners = listeners.unwrap();
        assert_eq!(listeners.len(), 1, "{listeners:?}");
        assert_eq!((listeners[0].port, listeners[0].pid), (6380, 77));
        assert_eq!(
            listeners[0].container.as_deref(),
            Some("a".repeat(64).as_str())
        );
        assert_eq!(
            remembered["abc123"],
            vec![HostName("10.0.0.2".into()), HostName("10.0.0.3".into())]
        );
        // A list file's forged lines are host names that do not parse: dropped.
        assert!(remembered["other"].is_empty(), "{remembered:?}");
        let (_, missing) = parse_facts(&format!("{FACTS_MARK} 3\n"), b"");
        assert_eq!(
            missing.unwrap_err(),
            "`ss` (iproute2) is not installed there"
        );
        let (_, failed) = parse_facts(&format!("{FACTS_MARK} 1\n"), b"ss: boom\n");
        assert_eq!(failed.unwrap_err(), "listing its sockets failed: ss: boom");
        insta::assert_snapshot!(unread_lists(&HostName("10.0.0.2".into())), @r"
        warning: cannot read which hosts `10.0.0.2` remembers for this cluster: nodes on a host dropped from the configuration may be missing from this plan
        hint: run again; `seedcore status` lists every node Ray knows, with its host
        ");
        let (nothing, cut) = parse_facts("", b"");
        assert_eq!(nothing, None);
        assert!(cut.is_err(), "no exit code: the command was cut short");
    }
}
