//! Safety against the real lab: the cluster lock (two applies at once, a stale lock),
//! signals in the middle of an apply (SIGINT, SIGTERM, SIGKILL), Ray token
//! authentication with secrets that never leak, and a Docker engine restarted under
//! its nodes. Every check is made against what the lab hosts' sshd, dockerd and Ray
//! report.
//!
//! The tests drive the cluster `seedlab` of `.lab/seedcore.toml` (head and one local
//! worker on labhost1, a worker on labhost2 and labhost3). They are serialized; each
//! begins from the converged base cluster and leaves it converged.
//!
//! Run: `cargo test --test lab_safety -- --nocapture --test-threads=1` (after
//! `tests/lab/lab up`). Without the lab, every test fails. Do not run it at the same
//! time as the other lab suites: they drive the same cluster.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::thread::sleep;
use std::time::{Duration, Instant};

use support::lab::{run_until, run_with_timeout, Lab, RayNode, Run};

const HEAD: &str = "seedlab-ray-head";
const LOCAL1: &str = "seedlab-ray-local-10.77.0.11-1";
const REMOTE12: &str = "seedlab-ray-remote-10.77.0.12-1";
const REMOTE13: &str = "seedlab-ray-remote-10.77.0.13-1";
const BASE: [(usize, &str); 4] = [(1, HEAD), (1, LOCAL1), (2, REMOTE12), (3, REMOTE13)];
const LOCK_INFO: &str = "/var/lib/seedcore/locks/seedlab.info";

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn alive_names(nodes: &[RayNode]) -> BTreeSet<String> {
    nodes
        .iter()
        .filter(|n| n.alive())
        .map(|n| n.node_name.clone())
        .collect()
}

/// Applies the base configuration and waits until Ray lists every node ALIVE.
fn converge(lab: &Lab) {
    lab.seedcore(&["apply", "--auto-approve"]).expect_ok();
    wait_whole(lab);
}

fn wait_whole(lab: &Lab) {
    let want: BTreeSet<String> = BASE.iter().map(|(_, n)| n.to_string()).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let nodes = lab.try_ray_nodes(1, HEAD);
        let up = nodes.as_ref().map(|n| alive_names(n)).unwrap_or_default();
        if want.is_subset(&up) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Ray does not list every base node ALIVE after 120 s: {nodes:?}"
        );
        sleep(Duration::from_secs(1));
    }
}

/// Restores the base cluster when dropped (also after a failed assertion).
struct Restore<'a>(&'a Lab);

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        let _ = self.0.ssh(1, &format!("rm -f {LOCK_INFO}"));
        let run = self.0.seedcore(&["apply", "--auto-approve"]);
        if run.code() != Some(0) {
            eprintln!("restoring the base cluster: {}", run.output());
        }
    }
}

fn assert_contains(run: &Run, needle: &str) {
    assert!(
        run.output().contains(needle),
        "`{}` ({}) should print {needle:?}:\n{}",
        run.what,
        run.status,
        run.output()
    );
}

/// SSH masters (and their forwarded sockets) of the seedcore process `pid`.
fn masters_of(pid: u32) -> Vec<String> {
    let out = Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .expect("ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("ssh ") && l.contains(&format!("/p{pid}/")))
        .map(str::to_string)
        .collect()
}

fn lock_status(lab: &Lab) -> Run {
    lab.seedcore(&["lock", "status"])
}

// ------------------------------------------------------------------ 6. two applies at once

#[test]
fn two_applies_at_once_one_proceeds_and_the_other_names_the_holder() {
    let _serial = serial();
    let lab = Lab::require();
    converge(&lab);
    let _restore = Restore(&lab);

    // A restart of the whole cluster holds the lock for ~20 s.
    let first = lab.seedcore_command(&["restart", "--all", "--auto-approve"]);
    let first = std::thread::spawn(move || run_until(first, Duration::from_secs(240)).0);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = lock_status(&lab);
        if status.code() == Some(1) {
            assert_contains(&status, "running `restart`");
            assert_contains(&status, "its holder is running");
            break;
        }
        assert!(Instant::now() < deadline, "the restart never took the lock");
        sleep(Duration::from_millis(300));
    }
    let second = lab.seedcore(&["apply", "--auto-approve"]);
    second.expect_code(1);
    assert_contains(&second, "error: the cluster is locked by ");
    assert_contains(&second, "running `restart`");
    assert_contains(&second, "nothing was changed");
    assert_contains(&second, "--lock-timeout");
    assert!(
        !second
            .output()
            .contains("will perform the following actions"),
        "the refused apply planned anyway:\n{}",
        second.output()
    );
    // Waiting for the lock: it proceeds once the restart is done, and finds nothing to do.
    let waiting = lab.seedcore(&["apply", "--auto-approve", "--lock-timeout", "4m"]);
    let first = first.join().expect("the restart thread");
    first.expect_ok();
    waiting.expect_ok();
    assert_contains(&waiting, "No changes.");
    eprintln!(
        "restart: {:.1?}; apply waiting for the lock: {:.1?}",
        first.elapsed, waiting.elapsed
    );
    let status = lock_status(&lab);
    status.expect_ok();
    assert_contains(&status, "is not locked");

    // The audit trail on the head names both, with their outcomes.
    let history = lab.seedcore(&["history", "-n", "5"]);
    history.expect_ok();
    let text = history.output();
    assert!(
        text.lines()
            .any(|l| l.contains(" restart ") && l.ends_with(" ok")),
        "history lacks the restart:\n{text}"
    );
    let trail = lab.ssh_ok(1, "tail -n 3 /var/log/seedcore/seedlab.log");
    assert!(
        trail.contains("command=restart") && trail.contains("by=") && trail.contains("changes="),
        "{trail}"
    );

    // What a holder that ended without releasing left (a host rebooted) is reported as
    // stale, never as a held lock, and the next apply takes over.
    let ghost = format!(
        "mkdir -p /var/lib/seedcore/locks && touch /var/lib/seedcore/locks/seedlab.lock && printf 'by=ghost@gone\\npid=1\\ncommand=apply\\nsince=2026-01-01T00:00:00Z\\nkeeper=999999\\n' > {LOCK_INFO}"
    );
    lab.ssh_ok(1, &ghost);
    let status = lock_status(&lab);
    status.expect_ok();
    assert_contains(&status, "STALE");
    assert_contains(&status, "ghost@gone");
    let apply = lab.seedcore(&["apply", "--auto-approve"]);
    apply.expect_ok();
    assert_contains(&apply, "took over a stale cluster lock");
    let status = lock_status(&lab);
    status.expect_ok();
    assert!(
        !status.output().contains("ghost@gone"),
        "{}",
        status.output()
    );
    // And `lock release` removes it by hand.
    lab.ssh_ok(1, &ghost);
    let release = lab.seedcore(&["lock", "release"]);
    release.expect_ok();
    assert_contains(&release, "Released the lock");
    lock_status(&lab).expect_ok();
}

// ------------------------------------------------------------------ 7. signals mid-apply

#[test]
fn signals_mid_apply_exit_with_a_summary_and_leave_nothing_behind() {
    let _serial = serial();
    let lab = Lab::require();
    converge(&lab);
    let _restore = Restore(&lab);

    for (signal, code) in [("INT", 130), ("TERM", 143)] {
        let mut cmd = lab.seedcore_command(&["restart", "--all", "--auto-approve"]);
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let child = cmd.spawn().expect("seedcore restart");
        let pid = child.id();
        // The head is replaced and waited for in the first ~12 s: mid-apply.
        sleep(Duration::from_secs(5));
        Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .expect("kill");
        let began = Instant::now();
        let out = child.wait_with_output().expect("wait");
        let took = began.elapsed();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "SIG{signal}: exit {:?} {took:.1?} after the signal",
            out.status.code()
        );
        assert_eq!(out.status.code(), Some(code), "SIG{signal}:\n{text}");
        assert!(
            took < Duration::from_secs(20),
            "SIG{signal}: took {took:?}\n{text}"
        );
        assert!(
            text.contains(&format!("Interrupted (SIG{signal})")) && text.contains("step(s) done"),
            "SIG{signal}: no summary:\n{text}"
        );
        sleep(Duration::from_secs(3));
        assert_eq!(
            masters_of(pid),
            Vec::<String>::new(),
            "SIG{signal}: SSH masters left"
        );
        let status = lock_status(&lab);
        status.expect_ok();
        let history = lab.ssh_ok(1, "tail -n 1 /var/log/seedcore/seedlab.log");
        assert!(
            history.contains(&format!("outcome=interrupted (SIG{signal})")),
            "{history}"
        );
        // The next apply converges.
        converge(&lab);
    }

    // SIGKILL: no chance to clean up; the lock keeper and the SSH watchdog do it.
    let mut cmd = lab.seedcore_command(&["restart", "--all", "--auto-approve"]);
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().expect("seedcore restart");
    let pid = child.id();
    sleep(Duration::from_secs(5));
    assert!(
        !masters_of(pid).is_empty(),
        "no SSH master to leave behind?"
    );
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let killed = Instant::now();
    loop {
        let left = masters_of(pid);
        if left.is_empty() {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "SSH masters still running 30 s after SIGKILL: {left:?}"
        );
        sleep(Duration::from_millis(250));
    }
    eprintln!("SIGKILL: masters gone {:.1?} later", killed.elapsed());
    let deadline = Instant::now() + Duration::from_secs(30);
    while lock_status(&lab).code() != Some(0) {
        assert!(
            Instant::now() < deadline,
            "the lock outlived SIGKILL by 30 s"
        );
        sleep(Duration::from_secs(1));
    }
    converge(&lab);
}

// ------------------------------------------------------------------ 9. token auth, secrets

const PLANTED_INLINE: &str = "hf_PLANTED_inline_6c1f0e93";
const PLANTED_ENV: &str = "PLANTED_env_value_51d2a7";
const PLANTED_FILE: &str = "PLANTED_file_value_0b9e44";

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn secret_config(lab: &Lab, dir: &Path, inline: &str) -> PathBuf {
    let file = dir.join("api-key");
    std::fs::write(&file, format!("{PLANTED_FILE}\n")).expect("secret file");
    let base = std::fs::read_to_string(lab.config_path()).expect("lab config");
    let text = format!(
        "{base}\n[cluster.env]\nHF_TOKEN = {{ value = \"{inline}\", secret = true }}\nAPI_KEY = {{ env = \"SEEDCORE_LAB_API_KEY\" }}\nDB_PASSWORD = {{ file = \"{}\" }}\nPLAIN_SETTING = \"visible-value\"\n",
        file.display()
    );
    let path = dir.join("seedcore.toml");
    std::fs::write(&path, text).expect("config");
    path
}

fn run_with(lab: &Lab, config: &Path, args: &[&str]) -> Run {
    let mut cmd = lab.seedcore_command_with(config, args);
    cmd.env("SEEDCORE_LAB_API_KEY", PLANTED_ENV);
    run_with_timeout(cmd, Duration::from_secs(300))
}

#[test]
fn token_auth_refuses_clients_without_it_and_no_secret_leaks() {
    let _serial = serial();
    let lab = Lab::require();
    converge(&lab);
    let _restore = Restore(&lab);
    let dir = scratch("lab-safety-secrets");
    let config = secret_config(&lab, &dir, PLANTED_INLINE);
    let saved = dir.join("plan.json");

    let mut runs = vec![
        run_with(&lab, &config, &["validate"]),
        run_with(&lab, &config, &["plan"]),
        run_with(&lab, &config, &["plan", "--output", "json"]),
        run_with(&lab, &config, &["plan", "--output", "markdown"]),
        run_with(&lab, &config, &["plan", "--out", saved.to_str().unwrap()]),
    ];
    let plan = &runs[1];
    assert_contains(plan, "env.HF_TOKEN");
    assert_contains(plan, "(sensitive)");
    assert_contains(plan, "visible-value");
    let apply = run_with(&lab, &config, &["apply", saved.to_str().unwrap()]);
    apply.expect_ok();
    runs.push(apply);
    wait_whole(&lab);
    runs.push(run_with(&lab, &config, &["status"]));
    runs.push(run_with(&lab, &config, &["status", "--output", "json"]));
    runs.push(run_with(&lab, &config, &["history"]));
    runs.push(run_with(&lab, &config, &["env"]));
    let again = run_with(&lab, &config, &["plan"]);
    assert_contains(&again, "No changes.");
    runs.push(again);

    let token = lab
        .docker_ok(1, &["exec", HEAD, "cat", "/run/seedcore/auth_token"])
        .trim()
        .to_string();
    assert_eq!(token.len(), 64, "a generated token is 64 hex digits");
    let mut places: Vec<(String, String)> =
        runs.iter().map(|r| (r.what.clone(), r.output())).collect();
    places.push((
        "the saved plan".to_string(),
        std::fs::read_to_string(&saved).expect("saved plan"),
    ));
    for (k, node) in BASE {
        places.push((
            format!("docker inspect {node}"),
            lab.docker_ok(k, &["inspect", node]),
        ));
    }
    places.push((
        "the audit trail".to_string(),
        lab.ssh_ok(1, "cat /var/log/seedcore/seedlab.log"),
    ));
    for (what, text) in &places {
        for secret in [PLANTED_INLINE, PLANTED_ENV, PLANTED_FILE, token.as_str()] {
            assert!(
                !text.contains(secret),
                "{what} shows a secret value ({}...)",
                &secret[..8]
            );
        }
    }
    // Each node got its secrets and the token, as files (0400) and in Ray's environment.
    for (k, node) in BASE {
        let files = lab.docker_ok(k, &["exec", node, "ls", "-l", "/run/seedcore"]);
        assert!(
            files.contains("-r-------- 1 root root") && files.contains("auth_token"),
            "{node}: {files}"
        );
        let env = lab.ssh(
            k,
            &format!(
                "docker exec {node} sh -c 'for p in /proc/[0-9]*; do tr \"\\0\" \"\\n\" < $p/environ 2>/dev/null; done' | grep -c -x -e 'HF_TOKEN={PLANTED_INLINE}' -e 'API_KEY={PLANTED_ENV}' -e 'DB_PASSWORD={PLANTED_FILE}' | tr -d ' '"
            ),
        );
        let found: usize = String::from_utf8_lossy(&env.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        assert!(
            found >= 3,
            "{node}: Ray's processes lack the secrets ({found})"
        );
    }

    // A client without the token is refused; with it, accepted.
    let probe = |with_token: bool| -> String {
        let env = if with_token {
            ""
        } else {
            "-e RAY_AUTH_MODE=disabled -e RAY_AUTH_TOKEN_PATH="
        };
        let out = lab.ssh(
            2,
            &format!(
                "docker exec {env} {REMOTE12} timeout 90 python3 -c \"
import urllib.request, urllib.error
try:
    urllib.request.urlopen('http://10.77.0.11:8265/api/v0/nodes', timeout=10); print('dashboard=open')
except urllib.error.HTTPError as e: print('dashboard=%d' % e.code)
import ray
try:
    ray.init('ray://10.77.0.11:10001'); print('client=accepted nodes=%d' % len(ray.nodes()))
except Exception as e: print('client=refused', type(e).__name__)
\" 2>/dev/null"
            ),
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let without = probe(false);
    assert!(without.contains("dashboard=401"), "{without}");
    assert!(without.contains("client=refused"), "{without}");
    // With the token: accepted (the client server may still be settling after
    // the apply: a few tries).
    let accepted = || {
        let mut with = String::new();
        for _ in 0..4 {
            with = probe(true);
            if with.contains("client=accepted nodes=4") {
                break;
            }
            sleep(Duration::from_secs(5));
        }
        with
    };
    let with = accepted();
    assert!(with.contains("client=accepted nodes=4"), "{with}");

    // Rotating the generated token: every node restarts with a new one.
    let rotate = run_with(
        &lab,
        &config,
        &["restart", "--rotate-token", "--auto-approve"],
    );
    rotate.expect_ok();
    assert_contains(&rotate, "A new Ray token is generated");
    wait_whole(&lab);
    let rotated = lab
        .docker_ok(1, &["exec", HEAD, "cat", "/run/seedcore/auth_token"])
        .trim()
        .to_string();
    assert_ne!(rotated, token, "the token did not change");
    assert!(!rotate.output().contains(&rotated) && !rotate.output().contains(&token));
    for (k, node) in BASE {
        let t = lab.docker_ok(k, &["exec", node, "cat", "/run/seedcore/auth_token"]);
        assert_eq!(t.trim(), rotated, "{node} has another token");
    }
    let with = accepted();
    assert!(
        with.contains("client=accepted nodes=4"),
        "after rotation: {with}"
    );
    run_with(&lab, &config, &["plan"]).expect_ok();
    assert_contains(&run_with(&lab, &config, &["plan"]), "No changes.");

    // Another secret value: every node is replaced, its value shown nowhere.
    let changed = secret_config(&lab, &dir, "hf_PLANTED_rotated_77aa01");
    let plan = run_with(&lab, &changed, &["plan"]);
    assert_contains(&plan, "env.HF_TOKEN changed (sensitive)");
    assert_contains(&plan, "Plan: 4 to add, 0 to change, 4 to destroy.");
    assert!(!plan.output().contains("hf_PLANTED_rotated_77aa01"));
    assert!(!plan.output().contains(PLANTED_INLINE));
}

// ------------------------------------------------------------------ 2. a restarted engine

#[test]
fn a_restarted_docker_engine_brings_its_nodes_back_and_the_plan_is_empty() {
    let _serial = serial();
    let lab = Lab::require();
    converge(&lab);
    let _restore = Restore(&lab);
    let before = lab.container(3, REMOTE13).expect("the worker on labhost3");
    lab.lab_ok(&["kill-docker", "3"]);
    lab.lab_ok(&["start-docker", "3"]);
    let began = Instant::now();
    let deadline = began + Duration::from_secs(120);
    loop {
        let c = lab.container(3, REMOTE13);
        let up = lab
            .try_ray_nodes(1, HEAD)
            .map(|n| alive_names(&n).contains(REMOTE13))
            .unwrap_or(false);
        if c.as_ref().is_some_and(|c| c.status == "running") && up {
            let c = c.unwrap();
            assert_eq!(
                c.id, before.id,
                "the same container came back (restart policy)"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{REMOTE13} did not come back within 120 s: {c:?}"
        );
        sleep(Duration::from_secs(1));
    }
    eprintln!(
        "back and ALIVE {:.1?} after dockerd restarted",
        began.elapsed()
    );
    let plan = lab.seedcore(&["plan"]);
    plan.expect_ok();
    assert_contains(&plan, "No changes.");
}
