//! The multi-host lab brought up by `tests/lab/lab up`: lab hosts `labhost1..N` at
//! `10.77.0.11`, `.12`, ..., each with its own sshd and dockerd (see `tests/lab/lab`).
//!
//! Lab tests never skip: [`Lab::require`] panics when the lab is not up, so a broken lab
//! fails the suite. Every command goes over real SSH with the lab key and strict host-key
//! checking against `.lab/ssh/known_hosts`, exactly as seedcore itself connects.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// A handle on the running lab.
pub struct Lab {
    root: PathBuf,
}

/// One node as Ray's state API (`ray list nodes --format json`) reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct RayNode {
    pub node_id: String,
    /// `--node-name` (seedcore sets it to the container name).
    pub node_name: String,
    pub node_ip: String,
    pub state: String,
    /// `resources_total.CPU` (0 when absent).
    pub cpus: f64,
    pub is_head: bool,
}

impl RayNode {
    pub fn alive(&self) -> bool {
        self.state == "ALIVE"
    }
}

impl Lab {
    /// The lab, checked once per test binary (`.lab/seedcore.toml` exists and
    /// `tests/lab/lab status` passes). Panics with the reason otherwise.
    pub fn require() -> Lab {
        static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
        let lab = Lab {
            root: PathBuf::from(env!("CARGO_MANIFEST_DIR")),
        };
        if let Err(why) = CHECK.get_or_init(|| lab.check()) {
            panic!("lab is not up: run tests/lab/lab up\n{why}");
        }
        lab
    }

    fn check(&self) -> Result<(), String> {
        if !self.config_path().is_file() {
            return Err(format!("{} is missing", self.config_path().display()));
        }
        let out = Command::new(self.root.join("tests/lab/lab"))
            .arg("status")
            .output()
            .map_err(|e| format!("cannot run tests/lab/lab status: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("`tests/lab/lab status` failed:\n{}", text(&out)))
        }
    }

    pub fn repo_root(&self) -> &Path {
        &self.root
    }

    /// `.lab/seedcore.toml`: a cluster across the lab (head on labhost1).
    pub fn config_path(&self) -> PathBuf {
        self.root.join(".lab/seedcore.toml")
    }

    /// The address of labhost`k` (1-based).
    pub fn host_ip(&self, k: usize) -> String {
        assert!(k >= 1, "lab hosts are numbered from 1");
        format!("10.77.0.{}", 10 + k)
    }

    /// Runs `cmd` (a shell command line) on labhost`k` over SSH.
    pub fn ssh(&self, k: usize, cmd: &str) -> Output {
        let ssh_dir = self.root.join(".lab/ssh");
        Command::new("ssh")
            .args(["-F", "/dev/null", "-i"])
            .arg(ssh_dir.join("id_ed25519"))
            .args(["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"])
            .args(["-o", "StrictHostKeyChecking=yes", "-o"])
            .arg(format!(
                "UserKnownHostsFile={}",
                ssh_dir.join("known_hosts").display()
            ))
            .args(["-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR"])
            .arg(format!("root@{}", self.host_ip(k)))
            .args(["--", cmd])
            .output()
            .expect("cannot run ssh")
    }

    /// Like [`Lab::ssh`], but panics unless the command succeeds; returns its stdout.
    pub fn ssh_ok(&self, k: usize, cmd: &str) -> String {
        let out = self.ssh(k, cmd);
        assert!(
            out.status.success(),
            "on labhost{k}: `{cmd}` failed ({}):\n{}",
            out.status,
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `docker ARGS...` on labhost`k` (its own dockerd) over SSH.
    pub fn docker(&self, k: usize, args: &[&str]) -> Output {
        self.ssh(k, &docker_command(args))
    }

    /// Like [`Lab::docker`], but panics unless the command succeeds; returns its stdout.
    pub fn docker_ok(&self, k: usize, args: &[&str]) -> String {
        self.ssh_ok(k, &docker_command(args))
    }

    /// Ray's node list as seen from `container` (a Ray head) on labhost`k_head`.
    pub fn try_ray_nodes(&self, k_head: usize, container: &str) -> Result<Vec<RayNode>, String> {
        let out = self.docker(
            k_head,
            &[
                "exec", container, "ray", "list", "nodes", "--format", "json",
            ],
        );
        if !out.status.success() {
            return Err(format!(
                "ray list nodes failed ({}):\n{}",
                out.status,
                text(&out)
            ));
        }
        parse_ray_nodes(&String::from_utf8_lossy(&out.stdout))
    }

    /// Like [`Lab::try_ray_nodes`], but panics on failure.
    pub fn ray_nodes(&self, k_head: usize, container: &str) -> Vec<RayNode> {
        self.try_ray_nodes(k_head, container)
            .unwrap_or_else(|e| panic!("on labhost{k_head}, {container}: {e}"))
    }

    /// Polls [`Lab::try_ray_nodes`] until at least `alive` nodes are ALIVE; panics with
    /// the last answer after `timeout`.
    pub fn wait_for_alive(
        &self,
        k_head: usize,
        container: &str,
        alive: usize,
        timeout: Duration,
    ) -> Vec<RayNode> {
        let start = Instant::now();
        loop {
            let last = self.try_ray_nodes(k_head, container);
            if let Ok(nodes) = &last {
                if nodes.iter().filter(|n| n.alive()).count() >= alive {
                    return nodes.clone();
                }
            }
            if start.elapsed() > timeout {
                panic!(
                    "{alive} ALIVE Ray node(s) expected within {timeout:?} \
                     (head {container} on labhost{k_head}); last answer: {last:?}"
                );
            }
            sleep(Duration::from_secs(1));
        }
    }
}

impl Lab {
    /// `seedcore -c .lab/seedcore.toml ARGS...`, the binary under test, with
    /// `HEAD_IP_OVERRIDE` and `SEEDCORE_ENV` removed from its environment and stdin closed (not a terminal).
    pub fn seedcore_command(&self, args: &[&str]) -> Command {
        self.seedcore_command_with(&self.config_path(), args)
    }

    /// Like [`Lab::seedcore_command`] with another configuration file.
    pub fn seedcore_command_with(&self, config: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_seedcore"));
        cmd.arg("-c")
            .arg(config)
            .args(args)
            .env_remove("HEAD_IP_OVERRIDE")
            .env_remove("SEEDCORE_ENV")
            .env("NO_COLOR", "1")
            .current_dir(&self.root)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs seedcore (see [`Lab::seedcore_command`]); panics if it runs longer than 5 minutes.
    pub fn seedcore(&self, args: &[&str]) -> Run {
        run_with_timeout(self.seedcore_command(args), Duration::from_secs(300))
    }

    /// Runs seedcore with another configuration file (see [`Lab::seedcore_command_with`]);
    /// panics if it runs longer than 5 minutes.
    pub fn seedcore_with(&self, config: &Path, args: &[&str]) -> Run {
        run_with_timeout(
            self.seedcore_command_with(config, args),
            Duration::from_secs(300),
        )
    }

    /// Runs `tests/lab/lab ARGS...` and panics unless it succeeds.
    pub fn lab_ok(&self, args: &[&str]) {
        let out = Command::new(self.root.join("tests/lab/lab"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("cannot run tests/lab/lab");
        assert!(
            out.status.success(),
            "`tests/lab/lab {}` failed ({}):\n{}",
            args.join(" "),
            out.status,
            text(&out)
        );
    }

    /// The container `name` on labhost`k` as `docker inspect` reports it, or `None`
    /// when there is no such container.
    pub fn container(&self, k: usize, name: &str) -> Option<ContainerState> {
        let out = self.docker(
            k,
            &[
                "inspect",
                "-f",
                "{{.Id}}|{{.State.Status}}|{{.State.ExitCode}}|{{.RestartCount}}|{{.State.StartedAt}}|{{index .Config.Labels \"io.seedcore.cluster\"}}",
                name,
            ],
        );
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("No such"),
                "docker inspect {name} on labhost{k} failed ({}): {err}",
                out.status
            );
            return None;
        }
        let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let f: Vec<&str> = line.split('|').collect();
        assert_eq!(f.len(), 6, "unexpected docker inspect output: {line}");
        Some(ContainerState {
            id: f[0].to_string(),
            status: f[1].to_string(),
            exit_code: f[2].parse().unwrap_or(-1),
            restart_count: f[3].parse().unwrap_or(-1),
            started_at: f[4].to_string(),
            cluster_label: if f[5] == "<no value>" {
                String::new()
            } else {
                f[5].to_string()
            },
        })
    }

    /// The command (`Config.Cmd`, the argument vector) of container `name` on labhost`k`.
    pub fn container_command(&self, k: usize, name: &str) -> Vec<String> {
        let json = self.docker_ok(k, &["inspect", "-f", "{{json .Config.Cmd}}", name]);
        serde_json::from_str(json.trim()).unwrap_or_else(|e| {
            panic!("Config.Cmd of {name} on labhost{k} is not a list ({e}): {json}")
        })
    }

    /// Whether something listens on TCP `port` on labhost`k` (its own network namespace,
    /// which host-network containers share), per `ss`.
    pub fn listening(&self, k: usize, port: u16) -> bool {
        let out = self.ssh_ok(k, &format!("ss -Hltn 'sport = :{port}'"));
        !out.trim().is_empty()
    }

    /// Names of every container (running or not) on labhost`k` carrying `label`
    /// (`key=value`).
    pub fn containers_with_label(&self, k: usize, label: &str) -> Vec<String> {
        let filter = format!("label={label}");
        self.docker_ok(
            k,
            &["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"],
        )
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
    }

    /// Makes sure labhost`k`'s dockerd has `image`, loading it from the machine's dockerd
    /// (where `tests/lab/lab up` built it) when missing.
    pub fn ensure_image(&self, k: usize, image: &str) {
        if self
            .docker(k, &["image", "inspect", image])
            .status
            .success()
        {
            return;
        }
        let script = format!(
            "set -o pipefail; docker save {img} | docker exec -i labhost{k} docker load -q",
            img = shell_quote(image)
        );
        let out = Command::new("bash")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .output()
            .expect("cannot run bash");
        assert!(
            out.status.success(),
            "loading {image} into labhost{k} failed ({}):\n{}",
            out.status,
            text(&out)
        );
    }
}

/// A container as `docker inspect` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerState {
    pub id: String,
    /// `running`, `exited`, ...
    pub status: String,
    pub exit_code: i64,
    pub restart_count: i64,
    pub started_at: String,
    /// The `io.seedcore.cluster` label (empty when absent).
    pub cluster_label: String,
}

/// A finished command: exit status, captured output and wall time.
#[derive(Debug)]
pub struct Run {
    pub what: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// stdout followed by stderr.
    pub fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// Panics (showing both streams) unless the command exited with `code`.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code(),
            Some(code),
            "`{}` exited with {} after {:.1?}, expected {code}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.what,
            self.status,
            self.elapsed,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Panics unless the command exited 0.
    pub fn expect_ok(&self) -> &Self {
        self.expect_code(0)
    }
}

/// Runs `cmd` with captured stdout/stderr; kills it and panics (with what it printed)
/// when it runs longer than `timeout`.
pub fn run_with_timeout(cmd: Command, timeout: Duration) -> Run {
    let (run, stopped) = run_until(cmd, timeout);
    if stopped {
        panic!(
            "`{}` did not finish within {timeout:?}; killed\n--- stdout:\n{}\n--- stderr:\n{}",
            run.what, run.stdout, run.stderr
        );
    }
    run
}

/// Runs `cmd` with captured stdout/stderr. When it runs longer than `deadline`, it is
/// interrupted (SIGINT, as Ctrl-C; SIGKILL 10 s later if it is still running) and the
/// second value is `true`; the [`Run`] then holds what it printed until it ended.
pub fn run_until(mut cmd: Command, deadline: Duration) -> (Run, bool) {
    let what = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{what}`: {e}"));
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    });
    let mut interrupted: Option<Instant> = None;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            break status;
        }
        match interrupted {
            None if start.elapsed() > deadline => {
                let _ = Command::new("kill")
                    .args(["-INT", &child.id().to_string()])
                    .stderr(Stdio::null())
                    .status();
                interrupted = Some(Instant::now());
            }
            Some(at) if at.elapsed() > Duration::from_secs(10) => {
                let _ = child.kill();
                break child.wait().expect("wait for child");
            }
            _ => {}
        }
        sleep(Duration::from_millis(50));
    };
    let elapsed = start.elapsed();
    let run = Run {
        what,
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
        elapsed,
    };
    (run, interrupted.is_some())
}

/// Runs its closure when dropped (also while unwinding from a failed assertion).
pub struct OnDrop<F: FnMut()>(pub F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

/// Parses the JSON array printed by `ray list nodes --format json`.
pub fn parse_ray_nodes(json: &str) -> Result<Vec<RayNode>, String> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("not JSON ({e}): {json}"))?;
    let nodes = value
        .as_array()
        .ok_or_else(|| format!("not a JSON array: {json}"))?;
    Ok(nodes
        .iter()
        .map(|n| RayNode {
            node_id: n["node_id"].as_str().unwrap_or_default().to_string(),
            node_name: n["node_name"].as_str().unwrap_or_default().to_string(),
            node_ip: n["node_ip"].as_str().unwrap_or_default().to_string(),
            state: n["state"].as_str().unwrap_or_default().to_string(),
            cpus: n["resources_total"]["CPU"].as_f64().unwrap_or(0.0),
            is_head: n["is_head_node"].as_bool().unwrap_or(false),
        })
        .collect())
}

fn docker_command(args: &[&str]) -> String {
    std::iter::once("docker".to_string())
        .chain(args.iter().map(|a| shell_quote(a)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_=.,:/@%+".contains(&b));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
