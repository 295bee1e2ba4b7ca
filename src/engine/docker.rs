//! The bollard implementation of [`DockerBackend`], on a local socket or one
//! forwarded over SSH.

use super::*;
use bollard::Docker;
use futures_util::stream::{BoxStream, StreamExt};
use std::collections::HashMap;

/// The bollard implementation, on a local socket or one forwarded over SSH.
#[derive(Debug, Clone)]
pub struct EngineBackend {
    pub docker: Docker,
    /// The host's own loopback (Ray's dashboard), when the backend reaches
    /// a cluster host; `None` for an engine used only for images.
    pub loopback: Option<std::sync::Arc<crate::transport::Loopback>>,
}

/// An engine's description from its `version` and `info` answers.
pub fn engine_info(
    version: bollard::models::SystemVersion,
    info: bollard::models::SystemInfo,
) -> EngineInfo {
    EngineInfo {
        id: info.id.unwrap_or_default(),
        version: version.version.unwrap_or_default(),
        api_version: version.api_version.unwrap_or_default(),
        cpus: info.ncpu.unwrap_or(0).max(0) as u32,
        memory_bytes: info.mem_total.unwrap_or(0).max(0) as u64,
    }
}

impl EngineBackend {
    /// Every container (running or not) that `keep` accepts by name and labels.
    async fn list(
        &self,
        keep: impl Fn(&str, &BTreeMap<String, String>) -> bool,
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
            if !keep(&name, &labels) {
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
                created: c.created,
                image_id: c.image_id.clone(),
                labels,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

impl DockerBackend for EngineBackend {
    async fn describe(&self) -> Result<EngineInfo> {
        let (version, info) = tokio::join!(self.docker.version(), self.docker.info());
        Ok(engine_info(version?, info?))
    }

    async fn all_containers(&self) -> Result<Vec<ObservedContainer>> {
        self.list(|_, _| true).await
    }

    async fn list_containers(
        &self,
        cluster: &str,
        names: &[String],
    ) -> Result<Vec<ObservedContainer>> {
        let all = self.list(|_, _| true).await?;
        Ok(all
            .into_iter()
            .filter(|c| crate::observe::concerns(c, cluster, names))
            .collect())
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
        use bollard::query_parameters::CreateContainerOptions;
        let body = container_body(spec, labels);
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

    async fn receive_image(
        &self,
        source: &EngineBackend,
        image: &crate::transfer::SourceImage,
        has: &std::collections::BTreeSet<String>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<u64> {
        crate::transfer::push(&source.docker, &self.docker, image, has, progress)
            .await
            .map_err(BackendError::other)
    }

    async fn put_files(&self, container: &str, files: &[ContainerFile]) -> Result<()> {
        let tar =
            tar_of(files).map_err(|e| BackendError::other(format!("cannot pack files: {e}")))?;
        self.docker
            .upload_to_container(
                container,
                Some(bollard::query_parameters::UploadToContainerOptions {
                    path: "/".to_string(),
                    // Owned by the container's user (an image that runs as
                    // `ray` must read its token), not by root.
                    copy_uidgid: Some("1".to_string()),
                    ..Default::default()
                }),
                bollard::body_full(tar.into()),
            )
            .await?;
        Ok(())
    }

    async fn read_file(&self, container: &str, path: &str) -> Result<Option<Vec<u8>>> {
        use futures_util::TryStreamExt;
        let stream = self.docker.download_from_container(
            container,
            Some(bollard::query_parameters::DownloadFromContainerOptions {
                path: path.to_string(),
            }),
        );
        let chunks: std::result::Result<Vec<_>, _> = stream.try_collect().await;
        let bytes: Vec<u8> = match chunks {
            Ok(chunks) => chunks.into_iter().flat_map(|c| c.to_vec()).collect(),
            Err(e) => {
                let e = BackendError::from(e);
                return if e.kind == ErrorKind::NotFound {
                    Ok(None)
                } else {
                    Err(e)
                };
            }
        };
        let mut archive = tar::Archive::new(bytes.as_slice());
        let entries = archive.entries().map_err(|e| {
            BackendError::other(format!("cannot read the archive of `{path}`: {e}"))
        })?;
        for entry in entries {
            let mut entry = entry.map_err(|e| {
                BackendError::other(format!("cannot read the archive of `{path}`: {e}"))
            })?;
            if entry.header().entry_type().is_file() {
                use std::io::Read;
                let mut out = Vec::new();
                entry
                    .by_ref()
                    .take(1 << 20)
                    .read_to_end(&mut out)
                    .map_err(|e| BackendError::other(format!("cannot read `{path}`: {e}")))?;
                return Ok(Some(out));
            }
        }
        Ok(None)
    }

    async fn loopback_get(
        &self,
        port: u16,
        path: &str,
        bearer: Option<&str>,
    ) -> Result<(u16, Vec<u8>)> {
        let loopback = self.loopback.as_ref().ok_or_else(|| {
            BackendError::other("this engine's host ports are not reachable from here")
        })?;
        loopback
            .get(port, path, bearer, std::time::Duration::from_secs(15))
            .await
            .map_err(BackendError::other)
    }

    async fn loopback_listens(&self, port: u16) -> Result<bool> {
        let loopback = self.loopback.as_ref().ok_or_else(|| {
            BackendError::other("this engine's host ports are not reachable from here")
        })?;
        loopback.listens(port).await.map_err(BackendError::other)
    }

    fn fallback_due(&self, answered: bool) -> bool {
        self.loopback
            .as_ref()
            .is_none_or(|l| l.fallback_due(answered))
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

/// A tar archive of files (and their directories, 0700), owned by root.
fn tar_of(files: &[ContainerFile]) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    for f in files {
        let rel = f.path.trim_start_matches('/');
        if let Some((dir, _)) = rel.rsplit_once('/') {
            // Only seedcore's own directory: system ones (`/run`) keep their modes.
            if dir.starts_with("run/seedcore") && dirs.insert(dir.to_string()) {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o700);
                h.set_uid(0);
                h.set_gid(0);
                h.set_size(0);
                h.set_mtime(0);
                builder.append_data(&mut h, format!("{dir}/"), std::io::empty())?;
            }
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(f.mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(f.bytes.len() as u64);
        h.set_mtime(0);
        builder.append_data(&mut h, rel, f.bytes.as_slice())?;
    }
    builder.into_inner()
}

/// What the engine is asked to create for a node: its image, command,
/// environment, labels, limits (CPUs, `/dev/shm`, memory) and devices.
pub fn container_body(
    spec: &NodeSpec,
    labels: &BTreeMap<String, String>,
) -> bollard::models::ContainerCreateBody {
    use bollard::models::{
        ContainerCreateBody, DeviceRequest, HostConfig, RestartPolicy, RestartPolicyNameEnum,
    };
    let device_requests = spec.gpus.as_ref().map(|g| {
        let (count, device_ids) = match g {
            crate::config::Gpus::Count(n) => (Some(i64::from(*n)), None),
            crate::config::Gpus::All => (Some(-1), None),
            crate::config::Gpus::Devices(ids) => (None, Some(ids.clone())),
        };
        vec![DeviceRequest {
            driver: Some("nvidia".to_string()),
            count,
            device_ids,
            capabilities: Some(vec![vec!["gpu".to_string()]]),
            options: None,
        }]
    });
    ContainerCreateBody {
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
            memory: spec.memory_bytes.map(|m| m as i64),
            device_requests,
            ..Default::default()
        }),
        ..Default::default()
    }
}
