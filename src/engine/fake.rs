//! An in-memory cluster of fake engines that speaks Ray, for executor tests
//! (behind the `test-support` feature).
//!
//! It journals every call (exec with its argv), holds container state, and
//! answers what apply asks of Ray from a script: the head's GCS probe
//! (answering after N probes, or never), `ray drain-node` (recorded; the node
//! leaves Ray when its container stops), and the node list (`ray list nodes`
//! or the state API) with each node's real address (`127.0.0.1` for
//! `local`). Calls that name a container by name rather than by ID are marked
//! `(by name)` in the journal, so a test can hold apply to acting by ID.

use super::*;
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
    command: Vec<String>,
    /// Files put into it (path -> bytes).
    files: BTreeMap<String, Vec<u8>>,
}

impl FakeContainer {
    /// The Ray node this container runs, if its command starts Ray.
    fn ray_node_name(&self) -> Option<String> {
        let joined = self.command.join(" ");
        if !joined.contains("ray start") {
            return None;
        }
        joined
            .split_whitespace()
            .find_map(|w| w.strip_prefix("--node-name="))
            .map(str::to_string)
    }
}

/// How the head's GCS answers probes.
#[derive(Debug, Clone, Copy)]
enum Gcs {
    /// Refuses this many more probes, then answers.
    After(usize),
    Never,
}

impl Default for Gcs {
    fn default() -> Self {
        Gcs::After(0)
    }
}

#[derive(Debug, Default)]
struct State {
    hosts: BTreeMap<String, BTreeMap<String, FakeContainer>>,
    images: BTreeMap<String, Vec<String>>,
    journal: Vec<String>,
    /// Ray nodes listed ALIVE without a container: `(name, id, ip, cpus)`.
    ghosts: Vec<(String, String, String, u32)>,
    /// Ray nodes that never join (by node name).
    unjoinable: Vec<String>,
    /// Ray node IDs asked to drain, in order.
    drained: Vec<String>,
    /// Extra log lines, by container name.
    logs: BTreeMap<String, String>,
    /// Hosts cut off: every call fails as a lost connection does.
    partitioned: Vec<String>,
    gcs: Gcs,
    /// The head's container exits right after its GCS first answers.
    head_dies_after_gcs: bool,
    /// `(host, operation, container-or-image name)` -> message.
    failures: HashMap<(String, String, String), String>,
    /// `(host, operation, container-or-image name)` that never answer.
    stalls: Vec<(String, String, String)>,
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

/// The address Ray reports for nodes on `host`.
fn address(host: &str) -> String {
    if host == "local" {
        "127.0.0.1".to_string()
    } else {
        host.to_string()
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

    /// Makes `operation` on `target` never answer on `host` (a stop of a
    /// node that does not exit: Docker's answer would come at the timeout).
    pub fn stall(&self, host: &str, operation: &str, target: &str) {
        self.state.lock().unwrap().stalls.push((
            host.to_string(),
            operation.to_string(),
            target.to_string(),
        ));
    }

    /// The head's GCS refuses `n` probes before it answers.
    pub fn gcs_ready_after(&self, n: usize) {
        self.state.lock().unwrap().gcs = Gcs::After(n);
    }

    /// The head's GCS never answers.
    pub fn gcs_never(&self) {
        self.state.lock().unwrap().gcs = Gcs::Never;
    }

    /// The head's container exits (code 1) right after its GCS first
    /// answers: a raylet that could not bind its port, say.
    pub fn head_dies_once_gcs_answers(&self) {
        self.state.lock().unwrap().head_dies_after_gcs = true;
    }

    /// Every call made, as `host verb target` lines, in order. Exec lines
    /// carry the argv: `host exec target: ARGV`.
    pub fn journal(&self) -> Vec<String> {
        self.state.lock().unwrap().journal.clone()
    }

    /// Cuts a host off: every call to its engine fails as over a lost SSH
    /// connection.
    pub fn partition(&self, host: &str) {
        self.state
            .lock()
            .unwrap()
            .partitioned
            .push(host.to_string());
    }

    /// Makes a container's log carry `text` (a failure Ray prints, say).
    pub fn log_line(&self, name: &str, text: &str) {
        self.state
            .lock()
            .unwrap()
            .logs
            .insert(name.to_string(), text.to_string());
    }

    /// Ray node IDs that `ray drain-node` was asked to drain, in order.
    pub fn drained(&self) -> Vec<String> {
        self.state.lock().unwrap().drained.clone()
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

    /// Starts a container behind seedcore's back (`docker run` by hand), with
    /// any labels; running Ray when `command` is a `ray start`. Returns its ID.
    pub fn add_container(
        &self,
        host: &str,
        name: &str,
        image: &str,
        labels: &[(&str, &str)],
        command: &[&str],
    ) -> String {
        let mut s = self.state.lock().unwrap();
        s.next_id += 1;
        let id = format!("{:064x}", s.next_id + 0xf000);
        s.hosts.entry(host.to_string()).or_default().insert(
            name.to_string(),
            FakeContainer {
                id: id.clone(),
                image: image.to_string(),
                state: "running".to_string(),
                exit_code: None,
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                cpus: 1,
                command: command.iter().map(|c| c.to_string()).collect(),
                files: BTreeMap::new(),
            },
        );
        id
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

    /// Makes a Ray node never join (e.g. a firewall), by node name.
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

    /// A container's state (`running`, `exited`...), if it exists.
    pub fn state_of(&self, host: &str, name: &str) -> Option<String> {
        let s = self.state.lock().unwrap();
        s.hosts
            .get(host)
            .and_then(|h| h.get(name))
            .map(|c| c.state.clone())
    }

    /// The Ray node ID the fake reports for a container.
    pub fn ray_node_id(container_id: &str) -> String {
        format!(
            "ray-{}",
            &container_id[container_id.len().saturating_sub(12)..]
        )
    }

    fn enter(&self) -> InFlight<'_> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(self)
    }
}

impl FakeBackend {
    /// The container name for a name or an ID (as Docker accepts both), and
    /// how it was named: `""` by ID, `" (by name)"`, or `" (no such container)"`.
    fn resolve(&self, name_or_id: &str) -> (String, &'static str) {
        self.with(|s| {
            let host = s.hosts.get(&self.host);
            if let Some((n, _)) = host.and_then(|h| h.iter().find(|(_, c)| c.id == name_or_id)) {
                return (n.clone(), "");
            }
            if host.is_some_and(|h| h.contains_key(name_or_id)) {
                return (name_or_id.to_string(), " (by name)");
            }
            (name_or_id.to_string(), " (no such container)")
        })
    }

    /// Journals a call on a container and applies injected failures.
    async fn call_on(&self, verb: &str, target: &str, extra: &str) -> Result<String> {
        let (name, how) = if verb == "create" {
            (target.to_string(), "")
        } else {
            self.resolve(target)
        };
        self.call(verb, &name, &format!("{how}{extra}")).await?;
        Ok(name)
    }

    async fn call(&self, verb: &str, target: &str, suffix: &str) -> Result<()> {
        let _guard = self.cluster.enter();
        let stalled;
        {
            let mut s = self.cluster.state.lock().unwrap();
            s.journal
                .push(format!("{} {verb} {target}{suffix}", self.host));
            if s.partitioned.contains(&self.host) {
                return Err(BackendError {
                    kind: ErrorKind::Unreachable,
                    message: "lost the Docker engine: client error (SendRequest)".to_string(),
                });
            }
            if let Some(msg) =
                s.failures
                    .get(&(self.host.clone(), verb.to_string(), target.to_string()))
            {
                return Err(BackendError::other(msg.clone()));
            }
            stalled = s.stalls.iter().any(|(h, v, t)| {
                (h.as_str(), v.as_str(), t.as_str()) == (self.host.as_str(), verb, target)
            });
        }
        if stalled {
            std::future::pending::<()>().await;
        }
        if !self.cluster.latency.is_zero() {
            tokio::time::sleep(self.cluster.latency).await;
        }
        Ok(())
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.cluster.state.lock().unwrap())
    }

    /// Every container of this host, as a listing reports it.
    fn containers(&self) -> Vec<ObservedContainer> {
        self.with(|s| {
            s.hosts
                .get(&self.host)
                .map(|cs| {
                    cs.iter()
                        .map(|(n, c)| ObservedContainer {
                            name: n.clone(),
                            id: c.id.clone(),
                            image: c.image.clone(),
                            state: c.state.clone(),
                            exit_code: c.exit_code,
                            created: None,
                            image_id: Some(format!("sha256:{}", c.image)),
                            labels: c.labels.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default()
        })
    }

    fn not_found(name: &str) -> BackendError {
        BackendError {
            kind: ErrorKind::NotFound,
            message: format!("No such container: {name}"),
        }
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
                for c in cs.values() {
                    let Some(node_name) = c.ray_node_name() else {
                        continue;
                    };
                    if s.unjoinable.contains(&node_name) {
                        continue;
                    }
                    nodes.push(serde_json::json!({
                        "node_id": FakeCluster::ray_node_id(&c.id),
                        "node_ip": address(host),
                        "node_name": node_name,
                        "state": if c.state == "running" { "ALIVE" } else { "DEAD" },
                        "resources_total": {"CPU": f64::from(c.cpus)},
                    }));
                }
            }
            serde_json::to_string(&nodes).unwrap()
        })
    }
}

impl DockerBackend for FakeBackend {
    async fn describe(&self) -> Result<EngineInfo> {
        self.call("describe", "-", "").await?;
        Ok(EngineInfo {
            id: format!("fake-{}", self.host),
            version: "fake".to_string(),
            api_version: "1.41".to_string(),
            cpus: 64,
            memory_bytes: 1 << 36,
        })
    }

    async fn all_containers(&self) -> Result<Vec<ObservedContainer>> {
        self.call("list-all", "-", "").await?;
        Ok(self.containers())
    }

    async fn list_containers(
        &self,
        cluster: &str,
        names: &[String],
    ) -> Result<Vec<ObservedContainer>> {
        self.call("list", "-", "").await?;
        Ok(self
            .containers()
            .into_iter()
            .filter(|c| c.cluster() == Some(cluster) || names.contains(&c.name))
            .collect())
    }

    async fn image_id(&self, image: &str) -> Result<Option<String>> {
        self.call("inspect-image", image, "").await?;
        Ok(self.with(|s| {
            s.images
                .get(&self.host)
                .filter(|l| l.iter().any(|i| i == image))
                .map(|_| format!("sha256:{image}"))
        }))
    }

    async fn pull_image(&self, image: &str) -> Result<()> {
        self.call("pull", image, "").await?;
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
        self.call_on("create", spec.name.as_str(), "").await?;
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
            s.hosts.get_mut(&self.host).unwrap().insert(
                spec.name.0.clone(),
                FakeContainer {
                    id: id.clone(),
                    image: spec.image.clone(),
                    state: "created".to_string(),
                    exit_code: None,
                    labels: labels.clone(),
                    cpus: spec.cpus,
                    command: spec.command.clone(),
                    files: BTreeMap::new(),
                },
            );
            Ok(id)
        })
    }

    async fn start_container(&self, target: &str) -> Result<()> {
        let name = self.call_on("start", target, "").await?;
        self.with(
            |s| match s.hosts.get_mut(&self.host).and_then(|h| h.get_mut(&name)) {
                Some(c) => {
                    c.state = "running".to_string();
                    c.exit_code = None;
                    Ok(())
                }
                None => Err(Self::not_found(&name)),
            },
        )
    }

    async fn stop_container(&self, target: &str, _timeout_secs: u64) -> Result<()> {
        let name = self.call_on("stop", target, "").await?;
        self.with(
            |s| match s.hosts.get_mut(&self.host).and_then(|h| h.get_mut(&name)) {
                Some(c) => {
                    c.state = "exited".to_string();
                    c.exit_code = Some(0);
                    Ok(())
                }
                None => Err(Self::not_found(&name)),
            },
        )
    }

    async fn remove_container(&self, target: &str) -> Result<()> {
        let name = self.call_on("remove", target, "").await?;
        self.with(|s| {
            s.hosts
                .get_mut(&self.host)
                .and_then(|h| h.remove(&name))
                .map(|_| ())
                .ok_or_else(|| Self::not_found(&name))
        })
    }

    async fn inspect_container(&self, target: &str) -> Result<Option<ContainerDetails>> {
        let name = self.call_on("inspect", target, "").await?;
        Ok(self.with(|s| {
            s.hosts
                .get(&self.host)
                .and_then(|h| h.get(&name))
                .map(|c| ContainerDetails {
                    state: c.state.clone(),
                    exit_code: c.exit_code,
                    started_at: None,
                    restart_count: 0,
                })
        }))
    }

    async fn receive_image(
        &self,
        _source: &crate::engine::EngineBackend,
        image: &crate::transfer::SourceImage,
        has: &std::collections::BTreeSet<String>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<u64> {
        let bytes = image.bytes_for(has);
        self.call(
            "receive-image",
            &image.image,
            &format!(
                " ({} of {} layers)",
                image.missing(has).count(),
                image.layers.len()
            ),
        )
        .await?;
        progress(bytes);
        self.with(|s| {
            s.images
                .entry(self.host.clone())
                .or_default()
                .push(image.image.clone())
        });
        Ok(bytes)
    }

    async fn put_files(&self, target: &str, files: &[ContainerFile]) -> Result<()> {
        let listed: Vec<String> = files.iter().map(|f| format!("{f:?}")).collect();
        let name = self
            .call_on("put-files", target, &format!(": {}", listed.join(", ")))
            .await?;
        self.with(
            |s| match s.hosts.get_mut(&self.host).and_then(|h| h.get_mut(&name)) {
                Some(c) => {
                    for f in files {
                        c.files.insert(f.path.clone(), f.bytes.clone());
                    }
                    Ok(())
                }
                None => Err(Self::not_found(&name)),
            },
        )
    }

    async fn read_file(&self, target: &str, path: &str) -> Result<Option<Vec<u8>>> {
        let name = self
            .call_on("read-file", target, &format!(": {path}"))
            .await?;
        Ok(self.with(|s| {
            s.hosts
                .get(&self.host)
                .and_then(|h| h.get(&name))
                .and_then(|c| c.files.get(path).cloned())
        }))
    }

    async fn exec(&self, target: &str, cmd: &[String]) -> Result<ExecOutput> {
        let joined = cmd.join(" ");
        let name = self.call_on("exec", target, &format!(": {joined}")).await?;
        let running = self.with(|s| {
            s.hosts
                .get(&self.host)
                .and_then(|h| h.get(&name))
                .is_some_and(|c| c.state == "running")
        });
        if !running {
            return Err(BackendError {
                kind: ErrorKind::Conflict,
                message: format!("Container {name} is not running"),
            });
        }
        let ok = |stdout: String| ExecOutput {
            exit_code: 0,
            stdout,
            stderr: String::new(),
        };
        if joined.contains("/proc/net/tcp") {
            // The GCS probe: answers per the script.
            let answers = self.with(|s| {
                let answers = match s.gcs {
                    Gcs::Never => false,
                    Gcs::After(0) => true,
                    Gcs::After(n) => {
                        s.gcs = Gcs::After(n - 1);
                        false
                    }
                };
                if answers && s.head_dies_after_gcs {
                    s.head_dies_after_gcs = false;
                    if let Some(c) = s.hosts.get_mut(&self.host).and_then(|h| h.get_mut(&name)) {
                        c.state = "exited".to_string();
                        c.exit_code = Some(1);
                    }
                }
                answers
            });
            return Ok(ExecOutput {
                exit_code: if answers { 0 } else { 1 },
                stdout: String::new(),
                stderr: if answers {
                    String::new()
                } else {
                    "Connection refused".to_string()
                },
            });
        }
        if cmd.get(1).map(String::as_str) == Some("drain-node") {
            let id = cmd
                .iter()
                .find_map(|a| a.strip_prefix("--node-id="))
                .unwrap_or_default()
                .to_string();
            self.with(|s| s.drained.push(id));
            return Ok(ok(String::new()));
        }
        if joined.contains("list nodes") || joined.contains("/api/v0/nodes") {
            return Ok(ok(self.ray_nodes_json()));
        }
        Ok(ok(String::new()))
    }

    async fn loopback_get(
        &self,
        port: u16,
        path: &str,
        bearer: Option<&str>,
    ) -> Result<(u16, Vec<u8>)> {
        let target = format!(":{port}");
        self.call("get", &target, &format!(" {path}")).await?;
        // The head's dashboard listens on the host of a running head.
        let head = self.with(|s| {
            s.hosts.get(&self.host).and_then(|h| {
                h.values()
                    .find(|c| {
                        let joined = c.command.join(" ");
                        c.state == "running"
                            && joined.contains("ray start --head")
                            && joined.contains(&format!("--dashboard-port={port}"))
                    })
                    .map(|c| c.files.get(crate::model::NODE_TOKEN_PATH).cloned())
            })
        });
        let Some(token) = head else {
            return Err(BackendError::other(format!(
                "cannot use the forwarded port {port}: Connection refused"
            )));
        };
        if let Some(token) = token {
            let expected = String::from_utf8_lossy(&token).trim().to_string();
            if bearer != Some(expected.as_str()) {
                return Ok((401, b"Unauthorized: invalid or missing token".to_vec()));
            }
        }
        let body = if path.starts_with("/api/v0/nodes") {
            let nodes: serde_json::Value = serde_json::from_str(&self.ray_nodes_json()).unwrap();
            serde_json::json!({"result": true, "msg": "", "data": {"result": {"result": nodes}}})
        } else if path.starts_with("/api/v0/") {
            serde_json::json!({"result": true, "msg": "", "data": {"result": {"result": []}}})
        } else {
            return Ok((404, b"Not Found".to_vec()));
        };
        Ok((200, body.to_string().into_bytes()))
    }

    /// Something listens on every port: the GCS probe run in the head (the
    /// fake's script) decides.
    async fn loopback_listens(&self, port: u16) -> Result<bool> {
        self.call("listens", &format!(":{port}"), "").await?;
        Ok(true)
    }

    fn fallback_due(&self, _answered: bool) -> bool {
        true
    }

    fn logs(&self, container: &str, _options: LogOptions) -> BoxStream<'static, Result<String>> {
        let (name, how) = self.resolve(container);
        let extra = self.with(|s| {
            s.journal.push(format!("{} logs {name}{how}", self.host));
            s.logs.get(&name).cloned().unwrap_or_default()
        });
        let line = format!("fake log line of {name}\n{extra}");
        futures_util::stream::iter(vec![Ok(line)]).boxed()
    }
}
