//! An in-memory cluster of fake engines, for executor tests. It journals
//! every call, holds container state, answers the Ray checks apply makes
//! (GCS port, `ray list nodes`) from the containers it runs, injects
//! failures and records the highest number of calls in flight.

use super::*;
use crate::model::{LABEL_CLUSTER, LABEL_NODE};
use futures_util::stream::{BoxStream, StreamExt};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone)]
struct FakeContainer {
    id: String,
    image: String,
    state: String,
    exit_code: Option<i64>,
    labels: BTreeMap<String, String>,
    cpus: u32,
}

#[derive(Debug, Default)]
struct State {
    hosts: BTreeMap<String, BTreeMap<String, FakeContainer>>,
    images: BTreeMap<String, Vec<String>>,
    journal: Vec<String>,
    /// Ray nodes listed ALIVE without a container: `(name, id, ip, cpus)`.
    ghosts: Vec<(String, String, String, u32)>,
    /// Containers whose Ray node never joins.
    unjoinable: Vec<String>,
    /// `(host, operation, container-or-image)` -> message.
    failures: HashMap<(String, String, String), String>,
    next_id: u64,
}

/// Every fake host, sharing one Ray "cluster".
#[derive(Debug, Clone, Default)]
pub struct FakeCluster {
    state: Arc<Mutex<State>>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
    /// Simulated latency of each call.
    pub latency: Duration,
}

/// One host of a [`FakeCluster`].
#[derive(Debug, Clone)]
pub struct FakeBackend {
    cluster: FakeCluster,
    host: String,
}

struct InFlight<'a>(&'a FakeCluster);
impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl FakeCluster {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a host holding `images`.
    pub fn add_host(&self, host: &str, images: &[&str]) {
        let mut s = self.state.lock().unwrap();
        s.hosts.entry(host.to_string()).or_default();
        s.images.insert(
            host.to_string(),
            images.iter().map(|i| i.to_string()).collect(),
        );
    }

    pub fn backend(&self, host: &str) -> FakeBackend {
        FakeBackend {
            cluster: self.clone(),
            host: host.to_string(),
        }
    }

    /// Makes `operation` (`create`, `start`, `stop`, `remove`, `pull`, `exec`)
    /// on `target` (a container or image name) fail on `host`.
    pub fn fail(&self, host: &str, operation: &str, target: &str, message: &str) {
        self.state.lock().unwrap().failures.insert(
            (host.to_string(), operation.to_string(), target.to_string()),
            message.to_string(),
        );
    }

    /// Every call made, as `host verb target` lines, in order.
    pub fn journal(&self) -> Vec<String> {
        self.state.lock().unwrap().journal.clone()
    }

    /// Forgets the highest count so far (e.g. after observing).
    pub fn reset_max_in_flight(&self) {
        self.max_in_flight.store(0, Ordering::SeqCst);
    }

    /// The most calls that were in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    /// Removes a container behind seedcore's back (`docker rm -f` by hand).
    pub fn forget(&self, host: &str, name: &str) {
        let mut s = self.state.lock().unwrap();
        s.hosts.get_mut(host).and_then(|h| h.remove(name));
    }

    /// Makes Ray list a node ALIVE that has no container (a killed node
    /// Ray has not noticed yet).
    pub fn add_ghost(&self, name: &str, id: &str, ip: &str, cpus: u32) {
        self.state.lock().unwrap().ghosts.push((
            name.to_string(),
            id.to_string(),
            ip.to_string(),
            cpus,
        ));
    }

    /// Makes a container's Ray node never join (e.g. a firewall).
    pub fn block_join(&self, name: &str) {
        self.state.lock().unwrap().unjoinable.push(name.to_string());
    }

    /// Simulates a container dying, e.g. `docker kill`.
    pub fn kill(&self, host: &str, name: &str, code: i64) {
        let mut s = self.state.lock().unwrap();
        if let Some(c) = s.hosts.get_mut(host).and_then(|h| h.get_mut(name)) {
            c.state = "exited".to_string();
            c.exit_code = Some(code);
        }
    }

    /// Container IDs by host and name.
    pub fn container_ids(&self) -> BTreeMap<(String, String), String> {
        let s = self.state.lock().unwrap();
        let mut out = BTreeMap::new();
        for (h, cs) in &s.hosts {
            for (n, c) in cs {
                out.insert((h.clone(), n.clone()), c.id.clone());
            }
        }
        out
    }

    fn enter(&self) -> InFlight<'_> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(self)
    }
}

impl FakeBackend {
    /// A container name for a name or an ID, as Docker accepts both.
    fn resolve(&self, name_or_id: &str) -> String {
        self.with(|s| {
            s.hosts
                .get(&self.host)
                .and_then(|h| h.iter().find(|(_, c)| c.id == name_or_id))
                .map(|(n, _)| n.clone())
                .unwrap_or_else(|| name_or_id.to_string())
        })
    }

    async fn call(&self, verb: &str, target: &str) -> Result<()> {
        let _guard = self.cluster.enter();
        {
            let mut s = self.cluster.state.lock().unwrap();
            s.journal.push(format!("{} {verb} {target}", self.host));
            if let Some(msg) =
                s.failures
                    .get(&(self.host.clone(), verb.to_string(), target.to_string()))
            {
                return Err(BackendError::other(msg.clone()));
            }
        }
        if !self.cluster.latency.is_zero() {
            tokio::time::sleep(self.cluster.latency).await;
        }
        Ok(())
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.cluster.state.lock().unwrap())
    }

    fn ray_nodes_json(&self) -> String {
        self.with(|s| {
            let mut nodes = Vec::new();
            for (name, id, ip, cpus) in &s.ghosts {
                nodes.push(serde_json::json!({
                    "node_id": id,
                    "node_ip": ip,
                    "node_name": name,
                    "state": "ALIVE",
                    "resources_total": {"CPU": f64::from(*cpus)},
                }));
            }
            for (host, cs) in &s.hosts {
                for (name, c) in cs {
                    if c.labels.contains_key(LABEL_NODE) && !s.unjoinable.contains(name) {
                        nodes.push(serde_json::json!({
                            "node_id": c.id,
                            "node_ip": host,
                            "node_name": name,
                            "state": if c.state == "running" { "ALIVE" } else { "DEAD" },
                            "resources_total": {"CPU": f64::from(c.cpus)},
                        }));
                    }
                }
            }
            serde_json::to_string(&nodes).unwrap()
        })
    }
}

impl DockerBackend for FakeBackend {
    async fn describe(&self) -> Result<EngineInfo> {
        self.call("describe", "-").await?;
        Ok(EngineInfo {
            id: format!("fake-{}", self.host),
            version: "fake".to_string(),
            api_version: "1.41".to_string(),
            cpus: 64,
            memory_bytes: 1 << 36,
        })
    }

    async fn list_containers(
        &self,
        cluster: &str,
        names: &[String],
    ) -> Result<Vec<ObservedContainer>> {
        self.call("list", "-").await?;
        Ok(self.with(|s| {
            s.hosts
                .get(&self.host)
                .map(|cs| {
                    cs.iter()
                        .filter(|(n, c)| {
                            c.labels.get(LABEL_CLUSTER).map(String::as_str) == Some(cluster)
                                || names.contains(n)
                        })
                        .map(|(n, c)| ObservedContainer {
                            name: n.clone(),
                            id: c.id.clone(),
                            image: c.image.clone(),
                            state: c.state.clone(),
                            exit_code: c.exit_code,
                            labels: c.labels.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default()
        }))
    }

    async fn image_id(&self, image: &str) -> Result<Option<String>> {
        self.call("inspect-image", image).await?;
        Ok(self.with(|s| {
            s.images
                .get(&self.host)
                .filter(|l| l.iter().any(|i| i == image))
                .map(|_| format!("sha256:{image}"))
        }))
    }

    async fn pull_image(&self, image: &str) -> Result<()> {
        self.call("pull", image).await?;
        self.with(|s| {
            s.images
                .entry(self.host.clone())
                .or_default()
                .push(image.to_string())
        });
        Ok(())
    }

    async fn create_container(
        &self,
        spec: &NodeSpec,
        labels: &BTreeMap<String, String>,
    ) -> Result<String> {
        self.call("create", spec.name.as_str()).await?;
        self.with(|s| {
            let has_image = s
                .images
                .get(&self.host)
                .is_some_and(|l| l.contains(&spec.image));
            if !has_image {
                return Err(BackendError {
                    kind: ErrorKind::NotFound,
                    message: format!("No such image: {}", spec.image),
                });
            }
            let host = s.hosts.entry(self.host.clone()).or_default();
            if host.contains_key(spec.name.as_str()) {
                return Err(BackendError {
                    kind: ErrorKind::Conflict,
                    message: format!(
                        "Conflict. The container name \"/{}\" is already in use",
                        spec.name
                    ),
                });
            }
            s.next_id += 1;
            let id = format!("{:064x}", s.next_id);
            let labels = labels.clone();
            s.hosts.get_mut(&self.host).unwrap().insert(
                spec.name.0.clone(),
                FakeContainer {
                    id: id.clone(),
                    image: spec.image.clone(),
                    state: "created".to_string(),
                    exit_code: None,
                    labels,
                    cpus: spec.cpus,
                },
            );
            Ok(id)
        })
    }

    async fn start_container(&self, name: &str) -> Result<()> {
        self.call("start", name).await?;
        self.with(
            |s| match s.hosts.get_mut(&self.host).and_then(|h| h.get_mut(name)) {
                Some(c) => {
                    c.state = "running".to_string();
                    c.exit_code = None;
                    Ok(())
                }
                None => Err(BackendError {
                    kind: ErrorKind::NotFound,
                    message: format!("No such container: {name}"),
                }),
            },
        )
    }

    async fn stop_container(&self, name: &str, _timeout_secs: u64) -> Result<()> {
        let name = &self.resolve(name);
        self.call("stop", name).await?;
        self.with(|s| {
            if let Some(c) = s.hosts.get_mut(&self.host).and_then(|h| h.get_mut(name)) {
                c.state = "exited".to_string();
                c.exit_code = Some(0);
            }
        });
        Ok(())
    }

    async fn remove_container(&self, name: &str) -> Result<()> {
        let name = &self.resolve(name);
        self.call("remove", name).await?;
        self.with(|s| {
            s.hosts.get_mut(&self.host).and_then(|h| h.remove(name));
        });
        Ok(())
    }

    async fn inspect_container(&self, name: &str) -> Result<Option<ContainerDetails>> {
        self.call("inspect", name).await?;
        Ok(self.with(|s| {
            s.hosts
                .get(&self.host)
                .and_then(|h| h.get(name))
                .map(|c| ContainerDetails {
                    state: c.state.clone(),
                    exit_code: c.exit_code,
                    started_at: None,
                    restart_count: 0,
                })
        }))
    }

    async fn exec(&self, container: &str, cmd: &[String]) -> Result<ExecOutput> {
        self.call("exec", container).await?;
        let running = self.with(|s| {
            s.hosts
                .get(&self.host)
                .and_then(|h| h.get(container))
                .is_some_and(|c| c.state == "running")
        });
        if !running {
            return Err(BackendError {
                kind: ErrorKind::Conflict,
                message: format!("Container {container} is not running"),
            });
        }
        let joined = cmd.join(" ");
        if joined == "ray stop" {
            // Ray leaves; the container's main process ends with it.
            self.with(|s| {
                if let Some(c) = s
                    .hosts
                    .get_mut(&self.host)
                    .and_then(|h| h.get_mut(container))
                {
                    c.state = "exited".to_string();
                    c.exit_code = Some(0);
                }
            });
        }
        if joined.contains("list nodes") || joined.contains("/api/v0/nodes") {
            return Ok(ExecOutput {
                exit_code: 0,
                stdout: self.ray_nodes_json(),
                stderr: String::new(),
            });
        }
        Ok(ExecOutput {
            exit_code: 0,
            stdout: String::new(),
            stderr: String::new(),
        })
    }

    fn logs(&self, container: &str, _options: LogOptions) -> BoxStream<'static, Result<String>> {
        let line = format!("fake log line of {container}\n");
        futures_util::stream::iter(vec![Ok(line)]).boxed()
    }
}
