//! One host's Docker engine, behind [`DockerBackend`]: the bollard
//! implementation ([`EngineBackend`]) used for real hosts, and an in-memory
//! [`fake::FakeCluster`] that journals calls, holds state, simulates Ray
//! membership and injects failures, for executor tests.

use crate::model::{EngineInfo, NodeSpec, ObservedContainer};
use bollard::Docker;
use futures_util::stream::{BoxStream, StreamExt};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;

/// What went wrong talking to an engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendError {
    pub kind: ErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    Conflict,
    /// The engine or the tunnel to it went away.
    Unreachable,
    Other,
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for BackendError {}

impl BackendError {
    pub fn other(message: impl Into<String>) -> Self {
        BackendError {
            kind: ErrorKind::Other,
            message: message.into(),
        }
    }
}

impl From<bollard::errors::Error> for BackendError {
    fn from(e: bollard::errors::Error) -> Self {
        use bollard::errors::Error as E;
        match e {
            E::DockerResponseServerError {
                status_code,
                message,
            } => BackendError {
                kind: match status_code {
                    404 => ErrorKind::NotFound,
                    409 => ErrorKind::Conflict,
                    _ => ErrorKind::Other,
                },
                message: format!("Docker engine: {} ({status_code})", message.trim()),
            },
            E::HyperResponseError { .. } | E::IOError { .. } | E::RequestTimeoutError => {
                BackendError {
                    kind: ErrorKind::Unreachable,
                    message: format!("lost the Docker engine: {e}"),
                }
            }
            other => BackendError::other(other.to_string()),
        }
    }
}

pub type Result<T> = std::result::Result<T, BackendError>;

/// Output of a command run inside a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i64,
    pub stdout: String,
    pub stderr: String,
}

/// Container details beyond the listing (for status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerDetails {
    pub state: String,
    pub exit_code: Option<i64>,
    pub started_at: Option<String>,
    pub restart_count: i64,
}

/// Which log lines to fetch.
#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    pub follow: bool,
    /// Last N lines; `None` for all.
    pub tail: Option<u64>,
    /// Unix seconds.
    pub since: Option<i64>,
}

/// One host's Docker engine.
pub trait DockerBackend: Send + Sync {
    /// Engine version, API version, CPUs and memory.
    fn describe(&self) -> impl Future<Output = Result<EngineInfo>> + Send;
    /// Containers labelled with `cluster`, and any container named in `names`.
    fn list_containers(
        &self,
        cluster: &str,
        names: &[String],
    ) -> impl Future<Output = Result<Vec<ObservedContainer>>> + Send;
    /// The image's ID, or `None` when the host lacks it.
    fn image_id(&self, image: &str) -> impl Future<Output = Result<Option<String>>> + Send;
    fn pull_image(&self, image: &str) -> impl Future<Output = Result<()>> + Send;
    /// Creates (not starts) a node's container; returns its ID.
    fn create_container(
        &self,
        spec: &NodeSpec,
        labels: &BTreeMap<String, String>,
    ) -> impl Future<Output = Result<String>> + Send;
    fn start_container(&self, name: &str) -> impl Future<Output = Result<()>> + Send;
    fn stop_container(
        &self,
        name: &str,
        timeout_secs: u64,
    ) -> impl Future<Output = Result<()>> + Send;
    fn remove_container(&self, name: &str) -> impl Future<Output = Result<()>> + Send;
    fn inspect_container(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<ContainerDetails>>> + Send;
    /// Runs a command in a running container and collects its output.
    fn exec(
        &self,
        container: &str,
        cmd: &[String],
    ) -> impl Future<Output = Result<ExecOutput>> + Send;
    /// A container's log lines (stdout and stderr interleaved).
    fn logs(&self, container: &str, options: LogOptions) -> BoxStream<'static, Result<String>>;
}

/// Parses the exit code from Docker's status text, e.g. `Exited (137) 5 minutes ago`.
pub fn exit_code_from_status(status: &str) -> Option<i64> {
    let rest = status.strip_prefix("Exited (")?;
    rest.split(')').next()?.parse().ok()
}

/// The bollard implementation, on a local socket or one forwarded over SSH.
#[derive(Debug, Clone)]
pub struct EngineBackend {
    pub docker: Docker,
}

impl DockerBackend for EngineBackend {
    async fn describe(&self) -> Result<EngineInfo> {
        let version = self.docker.version().await?;
        let info = self.docker.info().await?;
        Ok(EngineInfo {
            id: info.id.unwrap_or_default(),
            version: version.version.unwrap_or_default(),
            api_version: version.api_version.unwrap_or_default(),
            cpus: info.ncpu.unwrap_or(0).max(0) as u32,
            memory_bytes: info.mem_total.unwrap_or(0).max(0) as u64,
        })
    }

    async fn list_containers(
        &self,
        cluster: &str,
        names: &[String],
    ) -> Result<Vec<ObservedContainer>> {
        use bollard::query_parameters::ListContainersOptions;
        let list = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                ..Default::default()
            }))
            .await?;
        let mut out = Vec::new();
        for c in list {
            let name = c
                .names
                .as_ref()
                .and_then(|n| n.first())
                .map(|n| n.trim_start_matches('/').to_string())
                .unwrap_or_default();
            let labels: BTreeMap<String, String> =
                c.labels.clone().unwrap_or_default().into_iter().collect();
            let ours = labels.get(crate::model::LABEL_CLUSTER).map(String::as_str) == Some(cluster);
            if !ours && !names.contains(&name) {
                continue;
            }
            let state = c.state.map(|s| s.to_string()).unwrap_or_default();
            let exit_code = c.status.as_deref().and_then(exit_code_from_status);
            out.push(ObservedContainer {
                name,
                id: c.id.unwrap_or_default(),
                image: c.image.unwrap_or_default(),
                state,
                exit_code,
                labels,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn image_id(&self, image: &str) -> Result<Option<String>> {
        match self.docker.inspect_image(image).await {
            Ok(i) => Ok(i.id),
            Err(e) => {
                let e = BackendError::from(e);
                if e.kind == ErrorKind::NotFound {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    async fn pull_image(&self, image: &str) -> Result<()> {
        use bollard::query_parameters::CreateImageOptions;
        // A reference without a tag would pull every tag of the repository.
        let last = image.rsplit('/').next().unwrap_or(image);
        let tag = (!last.contains(':') && !image.contains('@')).then(|| "latest".to_string());
        let mut stream = self.docker.create_image(
            Some(CreateImageOptions {
                from_image: Some(image.to_string()),
                tag,
                ..Default::default()
            }),
            None,
            None,
        );
        while let Some(item) = stream.next().await {
            item?;
        }
        Ok(())
    }

    async fn create_container(
        &self,
        spec: &NodeSpec,
        labels: &BTreeMap<String, String>,
    ) -> Result<String> {
        use bollard::models::{
            ContainerCreateBody, HostConfig, RestartPolicy, RestartPolicyNameEnum,
        };
        use bollard::query_parameters::CreateContainerOptions;
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: Some(spec.command.clone()),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(labels.clone().into_iter().collect::<HashMap<_, _>>()),
            hostname: None,
            host_config: Some(HostConfig {
                network_mode: Some(spec.network_mode.clone()),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                    maximum_retry_count: None,
                }),
                init: Some(spec.init),
                nano_cpus: Some(i64::from(spec.cpus) * 1_000_000_000),
                shm_size: Some(spec.shm_size_bytes as i64),
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(spec.name.0.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await?;
        Ok(created.id)
    }

    async fn start_container(&self, name: &str) -> Result<()> {
        self.docker
            .start_container(
                name,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await?;
        Ok(())
    }

    async fn stop_container(&self, name: &str, timeout_secs: u64) -> Result<()> {
        use bollard::query_parameters::StopContainerOptions;
        match self
            .docker
            .stop_container(
                name,
                Some(StopContainerOptions {
                    t: Some(timeout_secs as i32),
                    signal: None,
                }),
            )
            .await
        {
            Ok(()) => Ok(()),
            // 304: already stopped.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn remove_container(&self, name: &str) -> Result<()> {
        use bollard::query_parameters::RemoveContainerOptions;
        self.docker
            .remove_container(
                name,
                Some(RemoveContainerOptions {
                    force: true,
                    v: false,
                    link: false,
                }),
            )
            .await?;
        Ok(())
    }

    async fn inspect_container(&self, name: &str) -> Result<Option<ContainerDetails>> {
        match self
            .docker
            .inspect_container(
                name,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
        {
            Ok(c) => {
                let state = c.state.unwrap_or_default();
                Ok(Some(ContainerDetails {
                    state: state.status.map(|s| s.to_string()).unwrap_or_default(),
                    exit_code: state.exit_code,
                    started_at: state.started_at,
                    restart_count: c.restart_count.unwrap_or(0),
                }))
            }
            Err(e) => {
                let e = BackendError::from(e);
                if e.kind == ErrorKind::NotFound {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    async fn exec(&self, container: &str, cmd: &[String]) -> Result<ExecOutput> {
        use bollard::exec::{StartExecOptions, StartExecResults};
        use bollard::models::ExecConfig;
        let exec = self
            .docker
            .create_exec(
                container,
                ExecConfig {
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    cmd: Some(cmd.to_vec()),
                    ..Default::default()
                },
            )
            .await?;
        let (mut stdout, mut stderr) = (String::new(), String::new());
        if let StartExecResults::Attached {
            output: mut out, ..
        } = self
            .docker
            .start_exec(
                &exec.id,
                Some(StartExecOptions {
                    detach: false,
                    tty: false,
                    output_capacity: Some(1 << 20),
                }),
            )
            .await?
        {
            while let Some(chunk) = out.next().await {
                match chunk? {
                    bollard::container::LogOutput::StdErr { message } => {
                        stderr.push_str(&String::from_utf8_lossy(&message))
                    }
                    other => stdout.push_str(&other.to_string()),
                }
            }
        }
        let inspect = self.docker.inspect_exec(&exec.id).await?;
        Ok(ExecOutput {
            exit_code: inspect.exit_code.unwrap_or(-1),
            stdout,
            stderr,
        })
    }

    fn logs(&self, container: &str, options: LogOptions) -> BoxStream<'static, Result<String>> {
        let docker = self.docker.clone();
        let container = container.to_string();
        let stream = async_stream_logs(docker, container, options);
        stream.boxed()
    }
}

fn async_stream_logs(
    docker: Docker,
    container: String,
    options: LogOptions,
) -> impl futures_util::Stream<Item = Result<String>> + Send + 'static {
    use bollard::query_parameters::LogsOptions;
    let opts = LogsOptions {
        follow: options.follow,
        stdout: true,
        stderr: true,
        since: options.since.unwrap_or(0).clamp(0, i64::from(i32::MAX)) as i32,
        until: 0,
        timestamps: false,
        tail: options
            .tail
            .map(|n| n.to_string())
            .unwrap_or_else(|| "all".to_string()),
    };
    // The docker handle must live as long as the stream: move it in.
    futures_util::stream::once(async move { docker })
        .flat_map(move |docker| docker.logs(&container, Some(opts.clone())))
        .map(|item| item.map(|o| o.to_string()).map_err(BackendError::from))
}

pub mod fake {
    //! An in-memory cluster of fake engines, for executor tests. It journals
    //! every call, holds container state, answers the Ray checks apply makes
    //! (GCS port, `ray list nodes`) from the containers it runs, injects
    //! failures and records the highest number of calls in flight.

    use super::*;
    use crate::model::{LABEL_CLUSTER, LABEL_NODE};
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

        fn logs(
            &self,
            container: &str,
            _options: LogOptions,
        ) -> BoxStream<'static, Result<String>> {
            let line = format!("fake log line of {container}\n");
            futures_util::stream::iter(vec![Ok(line)]).boxed()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_come_from_the_status_text() {
        assert_eq!(
            exit_code_from_status("Exited (137) 5 minutes ago"),
            Some(137)
        );
        assert_eq!(exit_code_from_status("Up 3 hours"), None);
    }
}
