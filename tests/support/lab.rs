//! The multi-host lab brought up by `tests/lab/lab up`: lab hosts `labhost1..N` at
//! `10.77.0.11`, `.12`, ..., each with its own sshd and dockerd (see `tests/lab/lab`).
//!
//! Lab tests never skip: [`Lab::require`] panics when the lab is not up, so a broken lab
//! fails the suite. Every command goes over real SSH with the lab key and strict host-key
//! checking against `.lab/ssh/known_hosts`, exactly as seedcore itself connects.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
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
