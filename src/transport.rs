//! Reaching each host's Docker engine: one multiplexed OpenSSH session per
//! host (the system `ssh`, so `~/.ssh/config`, ssh-agent, ProxyJump and
//! known_hosts behave as users expect), the engine's socket forwarded through
//! it to a private local socket, and bollard on top. A host written `local`
//! uses this machine's socket directly.
//!
//! Errors a user meets here carry the fix: unreachable host, refused key,
//! unknown or changed host key (with the exact `ssh-keyscan` / `ssh-keygen -R`
//! commands; checking is never disabled), missing or forbidden Docker socket,
//! engine too old.

use crate::config::{KnownHostsPolicy, SshConfig};
use crate::engine::EngineBackend;
use crate::model::{EngineInfo, HostName};
use futures_util::stream::{self, StreamExt};
use openssh::{ForwardType, KnownHosts, Session, SessionBuilder};
use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// The Docker socket on every host.
pub const REMOTE_DOCKER_SOCKET: &str = "/var/run/docker.sock";
/// Oldest engine API seedcore drives (Docker 20.10).
pub const MIN_API_VERSION: (u32, u32) = (1, 41);
/// New SSH handshakes at once: sshd's default `MaxStartups 10:30:100` drops more.
pub const MAX_HANDSHAKES: usize = 8;
/// Per-request timeout of engine calls (long ones: pulls, stops, logs).
const ENGINE_TIMEOUT_SECS: u64 = 600;
/// Seconds between SSH keepalives: with ssh's default of 3 unanswered ones,
/// a lost host is noticed within about 9 s (and its steps fail, naming it).
const SERVER_ALIVE_SECS: u64 = 3;
/// How long a kept connection may take to run `true` on its host before it
/// is taken for dead, closed, and replaced by a fresh one.
const KEPT_PROBE: Duration = Duration::from_secs(3);

/// Why a host's engine cannot be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportError {
    pub host: HostName,
    pub kind: TransportErrorKind,
    /// What ssh or the engine said.
    pub detail: String,
    pub hint: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportErrorKind {
    Unreachable,
    AuthRefused,
    HostKeyUnknown,
    HostKeyChanged,
    SocketMissing,
    SocketForbidden,
    EngineTooOld,
    Other,
}

impl TransportError {
    /// One line for plans and status tables.
    pub fn summary(&self) -> String {
        let what = match self.kind {
            TransportErrorKind::Unreachable => "unreachable",
            TransportErrorKind::AuthRefused => "SSH authentication refused",
            TransportErrorKind::HostKeyUnknown => "SSH host key unknown",
            TransportErrorKind::HostKeyChanged => "SSH host key CHANGED",
            TransportErrorKind::SocketMissing => "no Docker socket",
            TransportErrorKind::SocketForbidden => "Docker socket permission denied",
            TransportErrorKind::EngineTooOld => "Docker engine too old",
            TransportErrorKind::Other => "cannot reach the Docker engine",
        };
        format!("{what}: {}", self.detail)
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "error: `{}`: {}", self.host, self.summary())?;
        write!(f, "hint: {}", self.hint)
    }
}

impl std::error::Error for TransportError {}

/// Classifies what `ssh` printed into an error with its fix.
pub fn classify_ssh_error(host: &HostName, ssh: &SshConfig, text: &str) -> TransportError {
    let detail = text
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("@@@") && !l.starts_with("Warning: Permanently")
        })
        .collect::<Vec<_>>()
        .join(" ")
        .trim()
        .to_string();
    let known_hosts = ssh
        .known_hosts_file
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "~/.ssh/known_hosts".to_string());
    let port = ssh.port.unwrap_or(22);
    let keyscan_target = if port == 22 {
        host.0.clone()
    } else {
        format!("-p {port} {}", host.0)
    };
    let lower = text.to_ascii_lowercase();
    let (kind, hint) = if lower.contains("remote host identification has changed")
        || lower.contains("host key for") && lower.contains("has changed")
    {
        (
            TransportErrorKind::HostKeyChanged,
            format!(
                "the host presents a different key than `{known_hosts}` records: this can mean the machine was reinstalled, or that someone is intercepting the connection. Verify the new key with the host's owner, then replace the old one: `ssh-keygen -R {} -f {known_hosts}` and `ssh-keyscan {keyscan_target} >> {known_hosts}`",
                if port == 22 { host.0.clone() } else { format!("'[{}]:{port}'", host.0) }
            ),
        )
    } else if lower.contains("host key verification failed")
        || lower.contains("no ") && lower.contains("host key is known")
    {
        (
            TransportErrorKind::HostKeyUnknown,
            format!(
                "`{known_hosts}` has no key for this host. Add it after checking its fingerprint: `ssh-keyscan {keyscan_target} >> {known_hosts}` (or set `ssh.known_hosts = \"accept-new\"` to trust keys on first contact)"
            ),
        )
    } else if lower.contains("permission denied")
        || lower.contains("too many authentication failures")
    {
        (
            TransportErrorKind::AuthRefused,
            format!(
                "the host refused the key for user `{}`: check `ssh.user` and `ssh.identity_file`, that ssh-agent holds the key, and that its public half is in the user's `~/.ssh/authorized_keys` (try `ssh {}{} true`)",
                ssh.user.as_deref().unwrap_or("(your ssh default)"),
                ssh.user.as_deref().map(|u| format!("{u}@")).unwrap_or_default(),
                host.0
            ),
        )
    } else if lower.contains("timed out")
        || lower.contains("connection refused")
        || lower.contains("no route to host")
        || lower.contains("network is unreachable")
        || lower.contains("could not resolve")
        || lower.contains("name or service not known")
    {
        (
            TransportErrorKind::Unreachable,
            format!(
                "check that the host is up, that `{}` resolves from this machine, and that TCP port {port} is open to it (`ssh -p {port} {} true`)",
                host.0, host.0
            ),
        )
    } else {
        (
            TransportErrorKind::Other,
            format!(
                "run `ssh -v -p {port} {} true` to see why SSH fails",
                host.0
            ),
        )
    };
    TransportError {
        host: host.clone(),
        kind,
        detail,
        hint,
    }
}

/// An open connection to one host's engine.
pub struct Connection {
    pub host: HostName,
    pub engine: EngineInfo,
    pub backend: EngineBackend,
    session: Option<Arc<Session>>,
    /// The SSH master outlives this process (`ssh.persist`): closing the
    /// connection only cancels this process's forwards.
    kept: bool,
    // Removed (with the socket in it) when the connection goes.
    _forward_dir: Option<tempfile::TempDir>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("host", &self.host)
            .finish()
    }
}

impl Connection {
    /// Starts a program on the host over SSH (argv, quoted) with its stdin
    /// and stdout piped; it ends when its stdin closes or the session does.
    /// `None` for the `local` host or when it cannot be started.
    pub async fn spawn_on_host(&self, argv: &[&str]) -> Option<openssh::Child<&Session>> {
        let s = self.session.as_ref()?;
        let (program, args) = argv.split_first()?;
        let mut cmd = s.command(*program);
        cmd.args(args.iter().copied())
            .stdin(openssh::Stdio::piped())
            .stdout(openssh::Stdio::piped())
            .stderr(openssh::Stdio::null());
        cmd.spawn().await.ok()
    }

    /// Starts a long-lived program on the host (argv, quoted) with stdin and
    /// stdout piped, owning its handle on the session: it ends when its stdin
    /// closes (seedcore releasing it, or dying). `None` for the `local` host.
    pub async fn spawn_owned(&self, argv: &[&str]) -> Option<openssh::Child<Arc<Session>>> {
        let s = self.session.as_ref()?;
        let (program, args) = argv.split_first()?;
        let mut cmd = Session::to_command(Arc::clone(s), *program);
        cmd.args(args.iter().copied())
            .stdin(openssh::Stdio::piped())
            .stdout(openssh::Stdio::piped())
            .stderr(openssh::Stdio::null());
        cmd.spawn().await.ok()
    }

    /// Closes the SSH master and removes the forwarded socket; a kept master
    /// (`ssh.persist`) stays for the next command, without this one's forwards.
    pub async fn close(self) {
        if self.kept {
            if let (Some(s), Some(dir)) = (&self.session, &self._forward_dir) {
                cancel_forward(
                    s,
                    dir.path().join("docker.sock"),
                    PathBuf::from(REMOTE_DOCKER_SOCKET).into(),
                )
                .await;
                if let Some(l) = &self.backend.loopback {
                    l.cancel_forwards(s).await;
                }
            }
            return;
        }
        if let Some(s) = self.session {
            // A holder of another handle (a lock keeper) is gone by now.
            if let Ok(s) = Arc::try_unwrap(s) {
                let _ = s.close().await;
            }
        }
    }

    /// Runs a program on the host (not in a container) as an argument
    /// vector: every argument is quoted for the remote shell, never
    /// interpolated. `stdin` is fed to it. `None` for the `local` host or when
    /// the command could not be run.
    pub async fn run_on_host(
        &self,
        argv: &[&str],
        stdin: Option<&[u8]>,
    ) -> Option<std::process::Output> {
        if self.host.is_local() && stdin.is_none() {
            let (program, args) = argv.split_first()?;
            return tokio::process::Command::new(program)
                .args(args)
                .kill_on_drop(true)
                .output()
                .await
                .ok();
        }
        let s = self.session.as_ref()?;
        let (program, args) = argv.split_first()?;
        let mut cmd = s.command(*program);
        cmd.args(args.iter().copied());
        match stdin {
            None => cmd.output().await.ok(),
            Some(bytes) => {
                use tokio::io::AsyncWriteExt;
                cmd.stdin(openssh::Stdio::piped())
                    .stdout(openssh::Stdio::piped())
                    .stderr(openssh::Stdio::piped());
                let mut child = cmd.spawn().await.ok()?;
                if let Some(mut input) = child.stdin().take() {
                    input.write_all(bytes).await.ok()?;
                    input.shutdown().await.ok()?;
                }
                child.wait_with_output().await.ok()
            }
        }
    }
}

/// TCP ports on a host's own loopback (Ray's dashboard), reached through the
/// host's SSH connection: a private local socket per port, forwarded on
/// first use; on `local`, directly. Holds the session weakly, so closing the
/// connection still shuts its master down.
#[derive(Debug)]
pub struct Loopback {
    session: Option<std::sync::Weak<Session>>,
    dir: PathBuf,
    forwards: tokio::sync::Mutex<BTreeMap<u16, PathBuf>>,
    /// Some HTTP request through it got an answer: the way works, and a
    /// port that does not answer is not listening.
    answered: std::sync::atomic::AtomicBool,
    /// When a caller last fell back to asking from inside a container.
    fell_back: std::sync::Mutex<Option<std::time::Instant>>,
}

/// How often a caller may fall back to asking from inside a container
/// while the host's loopback has never answered (a process started there
/// costs the host's CPU, which a starting Ray needs).
const FALLBACK_EVERY: Duration = Duration::from_secs(2);

/// The largest answer read from a host port (Ray's state API lists at most
/// 10,000 entries of a kind).
const MAX_HTTP_BODY: usize = 64 << 20;

impl Loopback {
    /// The loopback of this machine (a host written `local`).
    pub fn local() -> Loopback {
        Loopback::new(None, PathBuf::new())
    }

    fn new(session: Option<std::sync::Weak<Session>>, dir: PathBuf) -> Loopback {
        Loopback {
            session,
            dir,
            forwards: Default::default(),
            answered: Default::default(),
            fell_back: Default::default(),
        }
    }

    /// Whether asking from inside a container is worth it now: the port
    /// answered with an error (`answered`), or the loopback never carried an
    /// answer; and nobody fell back in the last two seconds (the caller then
    /// does).
    pub fn fallback_due(&self, answered: bool) -> bool {
        if !answered && self.answered.load(std::sync::atomic::Ordering::Relaxed) {
            return false;
        }
        let mut last = self.fell_back.lock().unwrap_or_else(|e| e.into_inner());
        match *last {
            Some(at) if at.elapsed() < FALLBACK_EVERY => false,
            _ => {
                *last = Some(std::time::Instant::now());
                true
            }
        }
    }

    /// Whether something listens on `port` of the host's loopback: a
    /// connection that the far end closes at once is refused; one that
    /// stays open, or answers (an HTTP/2 server such as Ray's GCS answers
    /// the preface it is sent), listens.
    pub async fn listens(&self, port: u16) -> Result<bool, String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // The HTTP/2 client preface and an empty SETTINGS frame.
        const PREFACE: &[u8] =
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
        /// Whether the far end listens, and whether it answered.
        async fn answer<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
            mut stream: S,
        ) -> (bool, bool) {
            if stream.write_all(PREFACE).await.is_err() {
                return (false, false);
            }
            let mut buf = [0u8; 64];
            match tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => (false, false),
                Ok(Ok(_)) => (true, true),
                Err(_) => (true, false),
            }
        }
        let (listens, answered) = match &self.session {
            None => match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                Ok(stream) => answer(stream).await,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => (false, false),
                Err(e) => return Err(format!("cannot connect to port {port}: {e}")),
            },
            Some(session) => {
                let socket = self.forward(session, port).await?;
                let stream = tokio::net::UnixStream::connect(&socket)
                    .await
                    .map_err(|e| format!("cannot use the forwarded port {port}: {e}"))?;
                answer(stream).await
            }
        };
        // An answer came through: the way works, and a port that does not
        // answer later is not listening.
        if answered {
            self.answered
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(listens)
    }

    /// `GET path` on `port` of the host's loopback, with a bearer token when
    /// given: the status and the body (at most 64 MiB), within `timeout`.
    pub async fn get(
        &self,
        port: u16,
        path: &str,
        bearer: Option<&str>,
        timeout: Duration,
    ) -> Result<(u16, Vec<u8>), String> {
        let request = async {
            match &self.session {
                None => {
                    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
                        .await
                        .map_err(|e| format!("cannot connect to port {port}: {e}"))?;
                    http_get(stream, path, bearer).await
                }
                Some(session) => {
                    let socket = self.forward(session, port).await?;
                    let stream = tokio::net::UnixStream::connect(&socket)
                        .await
                        .map_err(|e| format!("cannot use the forwarded port {port}: {e}"))?;
                    http_get(stream, path, bearer).await
                }
            }
        };
        let result = tokio::time::timeout(timeout, request)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "no answer on port {port} within {}s",
                    timeout.as_secs()
                ))
            });
        if result.is_ok() {
            self.answered
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }

    /// Cancels the forwards set up on `session` (a kept master outlives them).
    async fn cancel_forwards(&self, session: &Session) {
        for (port, local) in self.forwards.lock().await.iter() {
            let remote = openssh::Socket::TcpSocket {
                host: "127.0.0.1".into(),
                port: *port,
            };
            cancel_forward(session, local.clone(), remote).await;
        }
    }

    /// The local socket forwarded to `port` on the host, set up once.
    async fn forward(
        &self,
        session: &std::sync::Weak<Session>,
        port: u16,
    ) -> Result<PathBuf, String> {
        let mut forwards = self.forwards.lock().await;
        if let Some(p) = forwards.get(&port) {
            return Ok(p.clone());
        }
        let session = session
            .upgrade()
            .ok_or_else(|| "the SSH connection is closed".to_string())?;
        let local = self.dir.join(format!("port-{port}.sock"));
        session
            .request_port_forward(
                ForwardType::Local,
                local.clone(),
                openssh::Socket::TcpSocket {
                    host: "127.0.0.1".into(),
                    port,
                },
            )
            .await
            .map_err(|e| format!("cannot forward port {port}: {}", error_chain(&e)))?;
        forwards.insert(port, local.clone());
        Ok(local)
    }
}

/// Cancels the forward of the local socket `local` to `remote` (best effort).
async fn cancel_forward(session: &Session, local: PathBuf, remote: openssh::Socket<'static>) {
    let cancel = session.close_port_forward(ForwardType::Local, local, remote);
    let _ = tokio::time::timeout(KEPT_PROBE, cancel).await;
}

/// One HTTP/1.1 `GET` over `stream`.
async fn http_get<S>(stream: S, path: &str, bearer: Option<&str>) -> Result<(u16, Vec<u8>), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::BodyExt;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    let driver = tokio::spawn(conn);
    // Ray's dashboard before 2.11 fails (HTTP 500) on a request without a
    // User-Agent.
    let mut request = hyper::Request::get(path)
        .header(hyper::header::HOST, "127.0.0.1")
        .header(
            hyper::header::USER_AGENT,
            concat!("seedcore/", env!("CARGO_PKG_VERSION")),
        );
    if let Some(token) = bearer {
        request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| format!("bad request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("no HTTP answer: {e}"))?;
    let status = response.status().as_u16();
    let body = http_body_util::Limited::new(response.into_body(), MAX_HTTP_BODY)
        .collect()
        .await
        .map_err(|e| format!("cannot read the HTTP answer: {e}"))?
        .to_bytes()
        .to_vec();
    driver.abort();
    Ok((status, body))
}

/// Opens connections: one SSH master per host, under a short private
/// control directory; masters left by a process that died are closed first.
pub struct Transport {
    ssh: SshConfig,
    control_dir: PathBuf,
    handshakes: Arc<Semaphore>,
}

/// The short base directory for control sockets (unix socket paths are limited
/// to 108 bytes and ssh appends its own).
fn control_base() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
        let p = PathBuf::from(dir).join("seedcore");
        if p.as_os_str().len() < 40 {
            return p;
        }
    }
    let uid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0);
    PathBuf::from(format!("/tmp/seedcore-{uid}"))
}

fn make_private_dir(p: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(p)?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700))
}

impl Transport {
    pub async fn new(ssh: &SshConfig) -> std::io::Result<Transport> {
        let base = control_base();
        make_private_dir(&base)?;
        close_stale_masters(&base).await;
        let control_dir = base.join(format!("p{}", std::process::id()));
        make_private_dir(&control_dir)?;
        watch_over(&control_dir);
        Ok(Transport {
            ssh: ssh.clone(),
            control_dir,
            handshakes: Arc::new(Semaphore::new(MAX_HANDSHAKES)),
        })
    }

    /// Connects to one host's engine: [`Transport::open`], then
    /// [`Transport::describe`].
    pub async fn connect(&self, host: &HostName) -> Result<Connection, TransportError> {
        let mut conn = self.open(host).await?;
        match self.describe(&conn).await {
            Ok(engine) => {
                conn.engine = engine;
                Ok(conn)
            }
            Err(e) => {
                conn.close().await;
                Err(e)
            }
        }
    }

    /// Opens the SSH connection to one host and forwards its engine's socket
    /// (nothing asked of the engine yet: its description is empty until
    /// [`Transport::describe`]). Commands on the host can start at once.
    pub async fn open(&self, host: &HostName) -> Result<Connection, TransportError> {
        if host.is_local() {
            if !Path::new(REMOTE_DOCKER_SOCKET).exists() {
                return Err(TransportError {
                    host: host.clone(),
                    kind: TransportErrorKind::SocketMissing,
                    detail: format!("`{REMOTE_DOCKER_SOCKET}` does not exist"),
                    hint: "start Docker on this machine (`sudo systemctl start docker`, or `dockerd &`)"
                        .to_string(),
                });
            }
            let docker = bollard::Docker::connect_with_socket(
                REMOTE_DOCKER_SOCKET,
                ENGINE_TIMEOUT_SECS,
                bollard::API_DEFAULT_VERSION,
            )
            .map_err(|e| self.other(host, e.to_string()))?;
            return Ok(Connection {
                host: host.clone(),
                engine: EngineInfo::default(),
                backend: EngineBackend {
                    docker,
                    loopback: Some(Arc::new(Loopback::local())),
                },
                session: None,
                kept: false,
                _forward_dir: None,
            });
        }
        let (session, kept) = self.session(host).await?;
        let forward_dir = match tempfile::Builder::new()
            .prefix("f")
            .tempdir_in(&self.control_dir)
        {
            Ok(d) => d,
            Err(e) => {
                let _ = session.close().await;
                return Err(self.other(host, format!("cannot create a socket directory: {e}")));
            }
        };
        let local = forward_dir.path().join("docker.sock");
        let forwarded = crate::timings::span(
            host.as_str(),
            "docker socket forwarded",
            session.request_port_forward(
                ForwardType::Local,
                local.clone(),
                PathBuf::from(REMOTE_DOCKER_SOCKET),
            ),
        )
        .await;
        if let Err(e) = forwarded {
            let _ = session.close().await;
            return Err(self.other(host, format!("cannot forward the Docker socket: {e}")));
        }
        let docker = match bollard::Docker::connect_with_socket(
            &local.display().to_string(),
            ENGINE_TIMEOUT_SECS,
            bollard::API_DEFAULT_VERSION,
        ) {
            Ok(d) => d,
            Err(e) => {
                let _ = session.close().await;
                return Err(self.other(host, e.to_string()));
            }
        };
        let session = Arc::new(session);
        let backend = EngineBackend {
            docker,
            loopback: Some(Arc::new(Loopback::new(
                Some(Arc::downgrade(&session)),
                forward_dir.path().to_path_buf(),
            ))),
        };
        Ok(Connection {
            host: host.clone(),
            engine: EngineInfo::default(),
            backend,
            session: Some(session),
            kept,
            _forward_dir: Some(forward_dir),
        })
    }

    /// Asks an opened connection's engine its version (the health check)
    /// and description, over two channels at once; refuses an engine older
    /// than seedcore drives, and says why an engine does not answer.
    pub async fn describe(&self, conn: &Connection) -> Result<EngineInfo, TransportError> {
        let host = &conn.host;
        let docker = &conn.backend.docker;
        let (version, info) = crate::timings::span(host.as_str(), "engine asked", async {
            tokio::join!(docker.version(), docker.info())
        })
        .await;
        let version = match (version, &conn.session) {
            (Ok(v), _) => v,
            (Err(e), Some(session)) => {
                return Err(self.diagnose_socket(host, session, e.to_string()).await)
            }
            (Err(e), None) => {
                let text = e.to_string();
                return Err(if text.to_ascii_lowercase().contains("permission denied") {
                    TransportError {
                        host: host.clone(),
                        kind: TransportErrorKind::SocketForbidden,
                        detail: text,
                        hint: "add your user to the `docker` group (`sudo usermod -aG docker $USER`, then log in again)".to_string(),
                    }
                } else {
                    self.other(host, text)
                });
            }
        };
        let info = info.map_err(|e| self.other(host, e.to_string()))?;
        self.check_engine(host, version, info)
    }

    /// The engine's description, refused when its API is older than seedcore drives.
    fn check_engine(
        &self,
        host: &HostName,
        version: bollard::models::SystemVersion,
        info: bollard::models::SystemInfo,
    ) -> Result<EngineInfo, TransportError> {
        let engine = crate::engine::engine_info(version, info);
        let parse = |s: &str| -> Option<(u32, u32)> {
            let (a, b) = s.split_once('.')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        };
        if let Some(v) = parse(&engine.api_version) {
            if v < MIN_API_VERSION {
                return Err(TransportError {
                    host: host.clone(),
                    kind: TransportErrorKind::EngineTooOld,
                    detail: format!(
                        "Docker {} speaks API {}; seedcore needs {}.{} (Docker 20.10) or newer",
                        engine.version, engine.api_version, MIN_API_VERSION.0, MIN_API_VERSION.1
                    ),
                    hint: "upgrade Docker on this host".to_string(),
                });
            }
        }
        Ok(engine)
    }

    /// The SSH connection to a host: with `ssh.persist`, a master kept by an
    /// earlier command when it still answers, else a new one kept in turn
    /// (`true` when kept); without it, a master of this process alone, and
    /// masters an earlier command kept for this host are closed.
    async fn session(&self, host: &HostName) -> Result<(Session, bool), TransportError> {
        let kept_dir = kept_dir(&control_base(), &self.ssh, host);
        if self.ssh.persist_secs == 0 {
            if kept_dir.exists() {
                close_masters(&kept_dir).await;
            }
            let s = crate::timings::span(
                host.as_str(),
                "ssh handshake",
                self.open_session(host, None),
            )
            .await?;
            return Ok((s, false));
        }
        if let Err(e) = make_private_dir(&kept_dir) {
            return Err(TransportError {
                host: host.clone(),
                kind: TransportErrorKind::Other,
                detail: format!(
                    "cannot create `{}` for its kept connection: {e}",
                    kept_dir.display()
                ),
                hint: "make that directory yours and writable (mode 0700), or set `ssh.persist = 0` to keep no connection".to_string(),
            });
        }
        if let Some(s) = crate::timings::span(
            host.as_str(),
            "kept ssh connection tried",
            reuse_kept(&kept_dir),
        )
        .await
        {
            return Ok((s, true));
        }
        let s = crate::timings::span(
            host.as_str(),
            "ssh handshake",
            self.open_session(host, Some(&kept_dir)),
        )
        .await?;
        Ok((s, true))
    }

    /// A new SSH master for `host`; in `keep` (a directory of its own for
    /// this destination), one that outlives this process for
    /// `ssh.persist` idle seconds.
    async fn open_session(
        &self,
        host: &HostName,
        keep: Option<&Path>,
    ) -> Result<Session, TransportError> {
        let mut builder = SessionBuilder::default();
        if let Some(user) = &self.ssh.user {
            builder.user(user.clone());
        }
        if let Some(port) = self.ssh.port {
            builder.port(port);
        }
        builder
            .known_hosts_check(match self.ssh.known_hosts {
                KnownHostsPolicy::Strict => KnownHosts::Strict,
                KnownHostsPolicy::AcceptNew => KnownHosts::Add,
            })
            .connect_timeout(Duration::from_secs(self.ssh.connect_timeout_secs))
            .server_alive_interval(Duration::from_secs(SERVER_ALIVE_SECS))
            .control_directory(&self.control_dir);
        if let Some(key) = &self.ssh.identity_file {
            builder.keyfile(key);
        }
        if let Some(kh) = &self.ssh.known_hosts_file {
            builder.user_known_hosts_file(kh);
        }
        let persist = std::num::NonZeroUsize::new(self.ssh.persist_secs as usize);
        let kept = keep.zip(persist).is_some();
        if let (Some(dir), Some(secs)) = (keep, persist) {
            builder
                .control_directory(dir)
                .control_persist(openssh::ControlPersist::IdleFor(secs));
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let permit = self.handshakes.acquire().await.expect("never closed");
            let connect = async {
                if kept {
                    // Its directory is kept: the master outlives this process.
                    let dir = builder.launch_master(host.as_str()).await?.keep();
                    Ok(Session::resume_mux(
                        dir.join("master").into_boxed_path(),
                        Some(dir.join("log").into_boxed_path()),
                    ))
                } else {
                    builder.connect_mux(host.as_str()).await
                }
            };
            let result = tokio::time::timeout(
                Duration::from_secs(self.ssh.connect_timeout_secs + 5),
                connect,
            )
            .await;
            drop(permit);
            let text = match result {
                Ok(Ok(session)) => return Ok(session),
                Ok(Err(e)) => error_chain(&e),
                Err(_) => format!(
                    "connect to host {} port {}: Connection timed out",
                    host,
                    self.ssh.port.unwrap_or(22)
                ),
            };
            // sshd drops handshakes beyond MaxStartups: retry those, with jitter.
            let transient = text.contains("kex_exchange_identification")
                || text.contains("Connection reset")
                || text.contains("Connection closed by remote host");
            if transient && attempt < 4 {
                let jitter = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.subsec_millis() % 250)
                    .unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(250 * attempt + u64::from(jitter))).await;
                continue;
            }
            return Err(classify_ssh_error(host, &self.ssh, &text));
        }
    }

    async fn diagnose_socket(
        &self,
        host: &HostName,
        session: &Session,
        detail: String,
    ) -> TransportError {
        let probe = format!(
            "if [ ! -S {s} ]; then echo missing; elif [ ! -r {s} ] || [ ! -w {s} ]; then echo denied; else echo ok; fi",
            s = REMOTE_DOCKER_SOCKET
        );
        let verdict = session
            .shell(&probe)
            .output()
            .await
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let user = self.ssh.user.clone().unwrap_or_else(|| "$USER".to_string());
        match verdict.as_str() {
            "missing" => TransportError {
                host: host.clone(),
                kind: TransportErrorKind::SocketMissing,
                detail: format!("`{REMOTE_DOCKER_SOCKET}` does not exist on the host"),
                hint: "install and start Docker on the host (`sudo systemctl enable --now docker`)".to_string(),
            },
            "denied" => TransportError {
                host: host.clone(),
                kind: TransportErrorKind::SocketForbidden,
                detail: format!("user `{user}` may not use `{REMOTE_DOCKER_SOCKET}`"),
                hint: format!("on the host: `sudo usermod -aG docker {user}` (then reconnect)"),
            },
            _ => TransportError {
                host: host.clone(),
                kind: TransportErrorKind::Other,
                detail: format!("the Docker engine did not answer through SSH: {detail}"),
                hint: "check that sshd allows socket forwarding (`AllowStreamLocalForwarding yes`) and that dockerd is running (`docker info` on the host)".to_string(),
            },
        }
    }

    fn other(&self, host: &HostName, detail: String) -> TransportError {
        TransportError {
            host: host.clone(),
            kind: TransportErrorKind::Other,
            detail,
            hint: format!("run `docker info` on `{host}` to check the engine"),
        }
    }

    /// Connects to every host at once (at most `parallel` at a time).
    pub async fn connect_all(
        &self,
        hosts: &[HostName],
        parallel: usize,
    ) -> BTreeMap<HostName, Result<Connection, TransportError>> {
        stream::iter(hosts.iter().cloned())
            .map(|h| async move {
                let c = self.connect(&h).await;
                (h, c)
            })
            .buffer_unordered(parallel.max(1))
            .collect()
            .await
    }

    /// Removes this process's control directory once every session is gone.
    /// A master still in it keeps it, so that a later run can close it.
    pub fn cleanup(&self) {
        let _ = std::fs::remove_dir(&self.control_dir);
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.cleanup();
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let t = s.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        source = s.source();
    }
    text
}

/// Once this process is gone, however it ended (even `SIGKILL`), closes the
/// SSH masters it left in its control directory within about a second, and
/// removes the directory (with the forwarded Docker sockets in it).
const WATCHDOG: &str = r#"pid=$1; dir=$2
while kill -0 "$pid" 2>/dev/null; do sleep 1; done
for m in "$dir"/.*/master "$dir"/*/master; do
  [ -S "$m" ] && ssh -o BatchMode=yes -S "$m" -O exit seedcore >/dev/null 2>&1
done
rm -rf "$dir""#;

/// Starts the watchdog once per process, in its own process group (so a
/// signal to seedcore's group does not take it along).
fn watch_over(control_dir: &Path) {
    static STARTED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    STARTED.get_or_init(|| {
        use std::os::unix::process::CommandExt;
        let _ = std::process::Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("seedcore-watchdog")
            .arg(std::process::id().to_string())
            .arg(control_dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn();
    });
}

/// The directory of the connections kept for one destination: one per login
/// (user, host, port, key, known-hosts file and policy), so a command never
/// uses a connection made with other settings. Short: a socket path is at
/// most 108 bytes, and ssh appends its own.
fn kept_dir(base: &Path, ssh: &SshConfig, host: &HostName) -> PathBuf {
    use sha2::{Digest, Sha256};
    let login = format!(
        "{}\0{}\0{}\0{}\0{}\0{:?}",
        ssh.user.as_deref().unwrap_or(""),
        host,
        ssh.port.map(|p| p.to_string()).unwrap_or_default(),
        ssh.identity_file
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        ssh.known_hosts_file
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        ssh.known_hosts,
    );
    let digest = Sha256::digest(login.as_bytes());
    base.join("k").join(crate::model::hex(&digest[..8]))
}

/// The masters in `dir` (each in a directory of its own that openssh names
/// `.ssh-connection…`), as `(its directory, its socket)`.
fn masters_in(dir: &Path) -> Vec<(PathBuf, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut masters: Vec<(PathBuf, PathBuf)> = entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".ssh-connection")
        })
        .map(|e| (e.path(), e.path().join("master")))
        .collect();
    masters.sort();
    masters
}

/// A kept master of `dir` that still runs commands on its host; the others
/// are closed and forgotten.
async fn reuse_kept(dir: &Path) -> Option<Session> {
    for (conn_dir, master) in masters_in(dir) {
        if master.exists() {
            let session = Session::resume_mux(master.clone().into_boxed_path(), None);
            let answered = tokio::time::timeout(KEPT_PROBE, async {
                session.check().await.ok()?;
                session.command("true").status().await.ok()
            })
            .await;
            if matches!(answered, Ok(Some(status)) if status.success()) {
                return Some(session);
            }
            exit_master(&master).await;
        }
        // Ended by ssh once idle for `ssh.persist` seconds, or dead.
        let _ = tokio::fs::remove_dir_all(conn_dir).await;
    }
    None
}

/// Closes the masters in `dir` and removes it, with what they leave.
async fn close_masters(dir: &Path) {
    for (_, master) in masters_in(dir) {
        if master.exists() {
            exit_master(&master).await;
        }
    }
    let _ = tokio::fs::remove_dir_all(dir).await;
}

/// Ends an SSH master at once (`ssh -O exit`), whatever it was doing.
async fn exit_master(master: &Path) {
    let mut exit = tokio::process::Command::new("ssh");
    exit.args(["-o", "BatchMode=yes", "-S"])
        .arg(master)
        .args(["-O", "exit", "seedcore"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let _ = tokio::time::timeout(KEPT_PROBE, exit.status()).await;
}

/// Closes SSH masters whose seedcore process is gone (e.g. killed), so they
/// don't live forever.
async fn close_stale_masters(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(pid) = name.strip_prefix('p').and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        close_masters(&entry.path()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_port_of_the_loopback_listens_or_not() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let l = Loopback::local();
        assert_eq!(l.listens(port).await, Ok(true));
        drop(listener);
        assert_eq!(l.listens(port).await, Ok(false));
    }

    /// Ray's dashboard before 2.11 answers HTTP 500 to a request without a
    /// User-Agent (seen with Ray 2.10.0): the request carries one.
    #[tokio::test]
    async fn a_get_on_the_loopback_names_its_user_agent() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                request.extend_from_slice(&buf[..n]);
            }
            let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
            let (status, body) = if text.contains("\r\nuser-agent: seedcore/") {
                ("200 OK", "{}")
            } else {
                ("500 Internal Server Error", "Server got itself in trouble")
            };
            let answer = format!(
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(answer.as_bytes()).await.unwrap();
            text
        });
        let l = Loopback::local();
        let got = l
            .get(
                port,
                "/api/v0/nodes?limit=1",
                Some("t0ken"),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        let request = server.await.unwrap();
        assert_eq!(got, (200, b"{}".to_vec()), "{request}");
        assert!(
            request.starts_with("get /api/v0/nodes?limit=1 http/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.contains("\r\nauthorization: bearer t0ken\r\n"),
            "{request}"
        );
    }

    #[test]
    fn falling_back_is_rationed_and_stops_once_the_loopback_answered() {
        let l = Loopback::local();
        assert!(l.fallback_due(false), "the first question may fall back");
        assert!(!l.fallback_due(false), "not again within two seconds");
        assert!(!l.fallback_due(true), "not even after an error answer");
        *l.fell_back.lock().unwrap() = Some(std::time::Instant::now() - FALLBACK_EVERY);
        assert!(l.fallback_due(false), "two seconds later it may");
        l.answered.store(true, std::sync::atomic::Ordering::Relaxed);
        *l.fell_back.lock().unwrap() = None;
        assert!(
            !l.fallback_due(false),
            "never for no answer once the loopback has answered"
        );
        assert!(
            l.fallback_due(true),
            "an error answer may be asked about from inside"
        );
    }

    fn ssh() -> SshConfig {
        SshConfig {
            user: Some("root".into()),
            port: None,
            identity_file: None,
            known_hosts: KnownHostsPolicy::Strict,
            known_hosts_file: Some(PathBuf::from("/k")),
            max_parallel: 8,
            connect_timeout_secs: 5,
            persist_secs: 0,
        }
    }

    #[test]
    fn ssh_errors_are_classified_with_their_fix() {
        let h = HostName("10.0.0.5".into());
        let cases = [
            ("No ED25519 host key is known for 10.0.0.5 and you have requested strict checking.\r\nHost key verification failed.", TransportErrorKind::HostKeyUnknown, "ssh-keyscan 10.0.0.5 >> /k"),
            ("@@@@@\r\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\r\nHost key verification failed.", TransportErrorKind::HostKeyChanged, "ssh-keygen -R 10.0.0.5 -f /k"),
            ("root@10.0.0.5: Permission denied (publickey).", TransportErrorKind::AuthRefused, "authorized_keys"),
            ("ssh: connect to host 10.0.0.5 port 22: Connection refused", TransportErrorKind::Unreachable, "TCP port 22"),
        ];
        for (text, kind, hint) in cases {
            let e = classify_ssh_error(&h, &ssh(), text);
            assert_eq!(e.kind, kind, "{text}");
            assert!(e.hint.contains(hint), "{}", e.hint);
            assert!(!e.hint.contains("StrictHostKeyChecking=no"));
        }
    }
}
