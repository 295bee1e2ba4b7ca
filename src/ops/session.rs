//! A session with the hosts: one SSH connection per host (the Docker socket
//! forwarded through it), the observation of every host that concerns this
//! cluster, and the desired state settled against it (the cluster's identity,
//! the ports running nodes keep). Every operation that talks to the hosts
//! opens one; closing it shuts every SSH master down.

use super::{Error, Result};
use crate::config::Loaded;
use crate::engine::EngineBackend;
use crate::memory;
use crate::model::{DesiredState, HostName, ObservedState};
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
    /// The cluster lock, for operations that change the cluster.
    pub lock: Option<crate::lock::Held>,
    /// Said about the lock (a stale one broken, none taken).
    pub lock_notes: Vec<String>,
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
            .chain(self.lock_notes.iter().cloned())
            .collect()
    }

    /// Releases the lock (if held), then closes every connection.
    pub async fn close(mut self) {
        if let Some(lock) = self.lock.take() {
            lock.release().await;
        }
        let start = crate::timings::now();
        for (_, c) in self.connections {
            c.close().await;
        }
        crate::timings::record("", "connections closed", start);
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
        lock: None,
        lock_notes: Vec::new(),
        source: None,
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
    if let Some(request) = lock {
        let head = &fresh.head().host;
        match hosts.connections.get(head) {
            Some(conn) if !head.is_local() => {
                match crate::timings::span(
                    head.as_str(),
                    "cluster lock taken",
                    crate::lock::acquire(conn, &fresh.cluster.name, request),
                )
                .await
                {
                    Ok(held) => {
                        if let Some(old) = &held.broke {
                            hosts.lock_notes.push(format!(
                                "warning: took over a stale cluster lock on `{head}` (its holder ended without releasing it): {}",
                                old.describe()
                            ));
                        }
                        hosts.lock = Some(held);
                    }
                    Err(e) => {
                        hosts.close().await;
                        return Err(Error::Locked(e.to_string()));
                    }
                }
            }
            Some(_) => hosts.lock_notes.push(
                "warning: the head runs on this machine (`local`): no cluster lock is taken"
                    .to_string(),
            ),
            None => hosts.lock_notes.push(format!(
                "warning: `{head}` (the head's host) is unreachable: no cluster lock is taken"
            )),
        }
    }
    let lists: Vec<BTreeMap<String, Vec<HostName>>> = stream::iter(hosts.connections.values())
        .map(|conn| {
            crate::timings::span(
                conn.host.as_str(),
                "remembered hosts read",
                memory::read(conn, &fresh.cluster.name),
            )
        })
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
    // What listens on each host (and who holds it): new nodes never get
    // those ports, and preflight names the holders.
    hosts.listeners = stream::iter(hosts.connections.iter())
        .map(|(h, conn)| async move {
            let found =
                crate::timings::span(h.as_str(), "listening sockets listed", listeners(conn)).await;
            (h.clone(), found)
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    for (h, found) in &hosts.listeners {
        if let (Some(o), Ok(found)) = (observed.hosts.get_mut(h), found) {
            let mut ports: Vec<u16> = found.iter().map(|l| l.port).collect();
            ports.sort();
            ports.dedup();
            o.listening = ports;
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
    // Three questions to the head, at once: Ray's nodes, its work, its secrets.
    let head_host = desired.head().host.as_str();
    let (ray, work, secrets) = tokio::join!(
        crate::timings::span(
            head_host,
            "Ray's nodes asked",
            ray_view(&hosts, &observed, &desired)
        ),
        crate::timings::span(
            head_host,
            "Ray's work asked",
            ray_work(&hosts, &observed, &desired)
        ),
        crate::timings::span(
            head_host,
            "head's secrets read",
            head_secrets(&hosts, &observed, &desired)
        )
    );
    observed.work = ray.as_ref().and(work);
    observed.ray = ray;
    observed.head_secrets = match secrets {
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
    if !desired.pushed.is_empty() {
        let building = loaded
            .config
            .cluster
            .build
            .is_some()
            .then(|| loaded.config.cluster.image.clone());
        if let Err(e) = push_sources(&mut hosts, &mut observed, &desired, building).await {
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

/// This machine's Docker engine (`DOCKER_HOST=unix://...` or the default socket).
pub fn local_engine() -> std::result::Result<crate::engine::EngineBackend, String> {
    let socket = std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(str::to_string))
        .unwrap_or_else(|| "/var/run/docker.sock".to_string());
    bollard::Docker::connect_with_socket(&socket, 600, bollard::API_DEFAULT_VERSION)
        .map(|docker| crate::engine::EngineBackend { docker })
        .map_err(|e| format!("cannot reach this machine's Docker engine at `{socket}`: {e}"))
}

/// For `image_source = "push"`: the images as this machine's engine lays
/// them out, and the layer stacks of each host that lacks one.
async fn push_sources(
    hosts: &mut Hosts,
    observed: &mut ObservedState,
    desired: &DesiredState,
    building: Option<String>,
) -> std::result::Result<(), String> {
    let hint = "hint: build or pull the image on this machine (`docker build -t IMAGE .`), or set `cluster.image_source = \"pull\"` to let each host pull it from a registry";
    // This machine's engine, when it has one; a cluster host that has an
    // image stands in for it (relayed through seedcore's own sessions).
    let local = match local_engine() {
        Ok(source) => match source.docker.negotiate_version().await {
            Ok(docker) => Ok(crate::engine::EngineBackend { docker }),
            Err(e) => Err(format!("cannot reach this machine's Docker engine: {e}")),
        },
        Err(e) => Err(e),
    };
    let by_host = desired.pushed_images_by_host();
    let mut images: BTreeSet<String> = BTreeSet::new();
    for list in by_host.values() {
        images.extend(list.iter().cloned());
    }
    for image in images {
        let here = match &local {
            Ok(source) => source
                .docker
                .inspect_image(&image)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.clone()),
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
/// read from its container whether it runs or not.
async fn head_secrets(
    hosts: &Hosts,
    observed: &ObservedState,
    desired: &DesiredState,
) -> std::result::Result<crate::secrets::HeadSecrets, String> {
    use crate::engine::DockerBackend;
    let mut found = crate::secrets::HeadSecrets::default();
    let head = desired.head();
    let Some(conn) = hosts.connections.get(&head.host) else {
        return Ok(found);
    };
    let Some(container) = observed.hosts.get(&head.host).and_then(|o| {
        o.containers.iter().find(|c| {
            c.name == head.name.0 && ownership::owner(&desired.cluster, c) == ownership::Owner::Ours
        })
    }) else {
        return Ok(found);
    };
    // Only an absent file means "none": an error must not look like one.
    if let Some(key) = conn
        .backend
        .read_file(&container.id, crate::model::NODE_DIGEST_KEY_PATH)
        .await
        .map_err(|e| e.to_string())?
    {
        found.digest_key = (key.len() >= 16).then_some(key);
    }
    if let Some(token) = conn
        .backend
        .read_file(&container.id, crate::model::NODE_TOKEN_PATH)
        .await
        .map_err(|e| e.to_string())?
    {
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

/// A host's listening TCP sockets with their processes and containers.
async fn listeners(conn: &Connection) -> std::result::Result<Vec<crate::checks::Listener>, String> {
    match conn
        .run_on_host(&["sh", "-c", crate::checks::LISTENERS_SCRIPT], None)
        .await
    {
        Some(o) if o.status.success() => Ok(crate::checks::parse_listeners(
            &String::from_utf8_lossy(&o.stdout),
        )),
        Some(o) if o.status.code() == Some(3) => {
            Err("`ss` (iproute2) is not installed there".to_string())
        }
        Some(o) => Err(format!(
            "listing its sockets failed: {}",
            crate::model::excerpt(String::from_utf8_lossy(&o.stderr).trim(), 200)
        )),
        None => Err("cannot run commands there".to_string()),
    }
}

/// Ray's node list from this cluster's head, when its container runs.
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

/// What runs on the cluster, when its head answers (`None`: unknown).
async fn ray_work(
    hosts: &Hosts,
    observed: &ObservedState,
    desired: &DesiredState,
) -> Option<crate::model::ClusterWork> {
    let head = desired.head();
    let conn = hosts.connections.get(&head.host)?;
    let container = running_head(observed, desired)?;
    crate::ray::work(&conn.backend, &container, head).await.ok()
}

/// The ID of this cluster's running head container.
fn running_head(observed: &ObservedState, desired: &DesiredState) -> Option<String> {
    let head = desired.head();
    observed
        .hosts
        .get(&head.host)?
        .containers
        .iter()
        .find(|c| {
            c.name == head.name.0
                && c.is_running()
                && ownership::owner(&desired.cluster, c) == ownership::Owner::Ours
        })
        .map(|c| c.id.clone())
}

async fn ray_view(
    hosts: &Hosts,
    observed: &ObservedState,
    desired: &DesiredState,
) -> Option<Vec<crate::ray::RayNode>> {
    let head = desired.head();
    let conn = hosts.connections.get(&head.host)?;
    let container = running_head(observed, desired)?;
    crate::ray::nodes(&conn.backend, &container, head)
        .await
        .ok()
}
