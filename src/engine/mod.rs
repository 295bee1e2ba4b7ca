//! One host's Docker engine, behind [`DockerBackend`]: the bollard
//! implementation ([`docker::EngineBackend`]) used for real hosts, and, with
//! the `test-support` feature, an in-memory [`fake::FakeCluster`] that
//! journals calls, holds state and speaks Ray (GCS probe, membership, drain)
//! from a script, for executor tests.

pub mod docker;
#[cfg(any(test, feature = "test-support"))]
pub mod fake;

pub use docker::{engine_info, EngineBackend};

use crate::model::{EngineInfo, NodeSpec, ObservedContainer};
use futures_util::stream::BoxStream;
use std::collections::BTreeMap;
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

/// A file handed to a container before it starts (the Ray token, the
/// secret environment). Its `Debug` never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct ContainerFile {
    pub path: String,
    pub bytes: Vec<u8>,
    pub mode: u32,
}

impl std::fmt::Debug for ContainerFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({} bytes, {:04o})",
            self.path,
            self.bytes.len(),
            self.mode
        )
    }
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
    /// Every container on the host, whoever made it (to name who holds a port).
    fn all_containers(&self) -> impl Future<Output = Result<Vec<ObservedContainer>>> + Send;
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
    /// Puts files into a container (created or running), owned by root.
    fn put_files(
        &self,
        container: &str,
        files: &[ContainerFile],
    ) -> impl Future<Output = Result<()>> + Send;
    /// A file's bytes from a container, running or not; `None` when the
    /// container or the file is absent.
    fn read_file(
        &self,
        container: &str,
        path: &str,
    ) -> impl Future<Output = Result<Option<Vec<u8>>>> + Send;
    /// Receives an image from `source` (the engine of the machine running
    /// seedcore), without the layers whose chain IDs are in `has`; checks
    /// its ID, then tags it. Returns the bytes sent.
    fn receive_image(
        &self,
        source: &EngineBackend,
        image: &crate::transfer::SourceImage,
        has: &std::collections::BTreeSet<String>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> impl Future<Output = Result<u64>> + Send;
    /// Runs a command in a running container and collects its output.
    fn exec(
        &self,
        container: &str,
        cmd: &[String],
    ) -> impl Future<Output = Result<ExecOutput>> + Send;
    /// A container's log lines (stdout and stderr interleaved).
    fn logs(&self, container: &str, options: LogOptions) -> BoxStream<'static, Result<String>>;
    /// `GET path` on `port` of the host's own loopback (Ray's dashboard, which
    /// the head's host network puts there), with a bearer token when given:
    /// the HTTP status and the body. Through the host's SSH connection; no
    /// process is started on the host.
    fn loopback_get(
        &self,
        port: u16,
        path: &str,
        bearer: Option<&str>,
    ) -> impl Future<Output = Result<(u16, Vec<u8>)>> + Send;
    /// Whether something listens on `port` of the host's loopback (cheap:
    /// no process is started; it cannot tell who listens).
    fn loopback_listens(&self, port: u16) -> impl Future<Output = Result<bool>> + Send;
    /// Whether a question the loopback could not answer is worth asking
    /// from inside a container now (at most every two seconds). `answered`:
    /// the port answered with an error, so asking from inside may do better.
    /// Otherwise never once the loopback has carried an answer: a port that
    /// does not answer is not listening yet.
    fn fallback_due(&self, answered: bool) -> bool;
}

/// Parses the exit code from Docker's status text, e.g. `Exited (137) 5 minutes ago`.
pub fn exit_code_from_status(status: &str) -> Option<i64> {
    let rest = status.strip_prefix("Exited (")?;
    rest.split(')').next()?.parse().ok()
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
