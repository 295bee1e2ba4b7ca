//! Real-lab tests of what a user meets at the transport: SSH host keys unknown
//! or changed, a refused key, a refused connection, a stopped Docker engine,
//! and a saved plan that went stale. Each error must carry its fix.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use support::lab::{Lab, OnDrop};

/// One test at a time: some stop an engine or a worker that the others observe.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A scratch directory under the target directory, fresh per test.
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The lab config with some lines replaced, written to `dir/seedcore.toml`.
fn config_with(lab: &Lab, dir: &std::path::Path, edits: &[(&str, &str)]) -> PathBuf {
    let mut text = std::fs::read_to_string(lab.config_path()).unwrap();
    for (from, to) in edits {
        assert!(
            text.contains(from),
            "`{from}` not in the lab config:\n{text}"
        );
        text = text.replace(from, to);
    }
    let path = dir.join("seedcore.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn seedcore(config: &std::path::Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_seedcore"))
        .arg("-c")
        .arg(config)
        .args(args)
        .env_remove("HEAD_IP_OVERRIDE")
        .env("NO_COLOR", "1")
        .output()
        .expect("seedcore runs");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The line `KEY = ...` of the lab config, as written there (`tests/lab/lab up` writes
/// absolute paths, which need not be under this checkout: `.lab` may be a symlink).
fn config_line(lab: &Lab, key: &str) -> String {
    let text = std::fs::read_to_string(lab.config_path()).unwrap();
    let prefix = format!("{key} = ");
    text.lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no `{key}` line in the lab config:\n{text}"))
        .to_string()
}

fn known_hosts_line(lab: &Lab) -> String {
    config_line(lab, "known_hosts_file")
}

fn keygen(path: &std::path::Path) {
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "ssh-keygen failed");
}

#[test]
fn an_unknown_host_key_is_refused_with_the_keyscan_fix() {
    let _serial = serial();
    let lab = Lab::require();
    let dir = scratch("unknown-key");
    let empty = dir.join("known_hosts");
    std::fs::write(&empty, "").unwrap();
    let config = config_with(
        &lab,
        &dir,
        &[(
            &known_hosts_line(&lab),
            &format!("known_hosts_file = \"{}\"", empty.display()),
        )],
    );
    let (code, out) = seedcore(&config, &["plan"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("SSH host key unknown"), "{out}");
    assert!(
        out.contains(&format!("ssh-keyscan 10.77.0.11 >> {}", empty.display())),
        "{out}"
    );
    assert!(!out.contains("StrictHostKeyChecking=no"), "{out}");
    // Strict means strict: nothing was written to the file.
    assert_eq!(std::fs::read_to_string(&empty).unwrap(), "");
}

#[test]
fn accept_new_trusts_a_first_key_when_configured() {
    let _serial = serial();
    let lab = Lab::require();
    let dir = scratch("accept-new");
    let file = dir.join("known_hosts");
    std::fs::write(&file, "").unwrap();
    let config = config_with(
        &lab,
        &dir,
        &[
            (
                &known_hosts_line(&lab),
                &format!("known_hosts_file = \"{}\"", file.display()),
            ),
            ("known_hosts = \"strict\"", "known_hosts = \"accept-new\""),
        ],
    );
    let (code, out) = seedcore(&config, &["observe"]);
    assert_eq!(code, 0, "{out}");
    for ip in ["10.77.0.11", "10.77.0.12", "10.77.0.13"] {
        // The names may be hashed: ask ssh-keygen.
        let found = Command::new("ssh-keygen")
            .args(["-F", ip, "-f"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            found.status.success(),
            "{ip} was not added to {}",
            file.display()
        );
    }
}

#[test]
fn a_changed_host_key_is_refused_with_the_keygen_fix() {
    let _serial = serial();
    let lab = Lab::require();
    let dir = scratch("changed-key");
    keygen(&dir.join("impostor"));
    let impostor = std::fs::read_to_string(dir.join("impostor.pub")).unwrap();
    let key: Vec<&str> = impostor.split_whitespace().take(2).collect();
    let file = dir.join("known_hosts");
    let real = std::fs::read_to_string(lab.repo_root().join(".lab/ssh/known_hosts")).unwrap();
    // Every real key of 10.77.0.11 replaced by the impostor's.
    let mut text: String = real
        .lines()
        .filter(|l| !l.starts_with("10.77.0.11 "))
        .map(|l| format!("{l}\n"))
        .collect();
    text.push_str(&format!("10.77.0.11 {} {}\n", key[0], key[1]));
    std::fs::write(&file, text).unwrap();
    let config = config_with(
        &lab,
        &dir,
        &[(
            &known_hosts_line(&lab),
            &format!("known_hosts_file = \"{}\"", file.display()),
        )],
    );
    let (code, out) = seedcore(&config, &["plan"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("SSH host key CHANGED"), "{out}");
    assert!(
        out.contains(&format!("ssh-keygen -R 10.77.0.11 -f {}", file.display())),
        "{out}"
    );
    assert!(!out.contains("StrictHostKeyChecking=no"), "{out}");
}

#[test]
fn a_refused_key_and_a_refused_connection_say_what_to_check() {
    let _serial = serial();
    let lab = Lab::require();
    let dir = scratch("refused");
    keygen(&dir.join("stranger"));
    let identity = config_line(&lab, "identity_file");
    let config = config_with(
        &lab,
        &dir,
        &[(
            &identity,
            &format!("identity_file = \"{}\"", dir.join("stranger").display()),
        )],
    );
    let (code, out) = seedcore(&config, &["plan"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("SSH authentication refused"), "{out}");
    assert!(out.contains("authorized_keys"), "{out}");

    // Nothing listens on port 1 of loopback: refused at once.
    let loopback = dir.join("loopback.toml");
    std::fs::write(
        &loopback,
        "[ssh]\nport = 1\n[head]\nhost = \"127.0.0.1\"\n[workers.local]\nhosts = [\"127.0.0.1\"]\n",
    )
    .unwrap();
    let (code, out) = seedcore(&loopback, &["plan"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("unreachable"), "{out}");
    assert!(out.contains("TCP port 1 is open"), "{out}");
}

#[test]
fn a_stopped_docker_engine_is_named_with_its_host() {
    let _serial = serial();
    let lab = Lab::require();
    lab.lab_ok(&["kill-docker", "3"]);
    let _restore = OnDrop(|| lab.lab_ok(&["start-docker", "3"]));
    let run = lab.seedcore(&["plan"]);
    run.expect_code(1);
    let out = run.output();
    assert!(out.contains("`10.77.0.13`"), "{out}");
    assert!(out.contains("hint:"), "{out}");
    assert!(out.contains("the plan is incomplete"), "{out}");
    // The other hosts were fine and are not blamed.
    assert!(!out.contains("`10.77.0.12`:"), "{out}");
}

#[test]
fn a_saved_plan_is_refused_once_a_host_changed() {
    let _serial = serial();
    let lab = Lab::require();
    lab.seedcore(&["apply", "--auto-approve"]).expect_ok();
    let dir = scratch("planfile");
    let planfile = dir.join("plan.json");
    let planfile_arg = planfile.display().to_string();
    lab.seedcore(&["plan", "--out", &planfile_arg]).expect_ok();
    // Nothing changed: the saved plan applies (as a no-op).
    lab.seedcore(&["apply", &planfile_arg]).expect_ok();

    // A worker stopped by hand makes the saved plan stale.
    let worker = "seedlab-ray-remote-10.77.0.12-1";
    lab.docker_ok(2, &["stop", worker]);
    let _repair = OnDrop(|| {
        lab.seedcore(&["apply", "--auto-approve"]);
    });
    let run = lab.seedcore(&["apply", &planfile_arg]);
    run.expect_code(1);
    for needle in [
        "error: the saved plan is stale: the hosts changed since it was made:".to_string(),
        "`10.77.0.12`".to_string(),
        format!("container {worker}: state running -> exited"),
        "nothing was changed".to_string(),
    ] {
        assert!(
            run.stderr.contains(&needle),
            "the refusal should say {needle:?}:\n{}",
            run.output()
        );
    }
    // Only the host that changed is named.
    for other in ["`10.77.0.11`", "`10.77.0.13`"] {
        assert!(
            !run.stderr.contains(other),
            "{other} did not change:\n{}",
            run.output()
        );
    }
    // And it was left alone.
    let state = lab.container(2, worker).expect("still there");
    assert_eq!(state.status, "exited", "{state:?}");

    // A changed configuration is refused too.
    let run = lab.seedcore(&["apply", &planfile_arg, "--set", "workers.remote.cpus=2"]);
    run.expect_code(1);
    assert!(
        run.stderr
            .contains("the configuration or its overrides changed since it was saved"),
        "{}",
        run.output()
    );
}

#[test]
fn a_local_host_uses_this_machines_engine_without_ssh() {
    let _serial = serial();
    // The lab's own dockerd runs on this machine: plan a cluster on it.
    let _lab = Lab::require();
    let dir = scratch("local");
    let config = dir.join("seedcore.toml");
    std::fs::write(
        &config,
        "[cluster]\nname = \"localtest\"\nimage = \"seedcore-ray:lab\"\n[ssh]\nport = 1\n[head]\nhost = \"local\"\n[workers.here]\nhosts = [\"local\"]\n",
    )
    .unwrap();
    let (code, out) = seedcore(&config, &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("local  Docker "), "{out}");
    assert!(
        out.contains("localtest-ray-head on local will be created"),
        "{out}"
    );
    assert!(
        out.contains("--node-ip-address             = \"127.0.0.1\""),
        "{out}"
    );
    assert!(
        out.contains("Plan: 2 to add, 0 to change, 0 to destroy."),
        "{out}"
    );
}

/// `seedcore -vv -c CONFIG plan` with its control directory under `base`:
/// (exit code, output, the hosts whose timings show a new SSH handshake).
fn plan_kept(base: &std::path::Path, config: &std::path::Path) -> (i32, String, Vec<String>) {
    let out = Command::new(env!("CARGO_BIN_EXE_seedcore"))
        .arg("-vv")
        .arg("-c")
        .arg(config)
        .arg("plan")
        .env_remove("HEAD_IP_OVERRIDE")
        .env("NO_COLOR", "1")
        .env("XDG_RUNTIME_DIR", base)
        .output()
        .expect("seedcore runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut handshakes: Vec<String> = text
        .lines()
        .filter(|l| l.trim_end().ends_with("ssh handshake"))
        .filter_map(|l| l.split_whitespace().rev().nth(2).map(str::to_string))
        .collect();
    handshakes.sort();
    (out.status.code().unwrap_or(-1), text, handshakes)
}

/// The SSH masters kept under `base`, as (pid, host).
fn kept_masters(base: &std::path::Path) -> Vec<(u32, String)> {
    let needle = format!("{}/seedcore/k/", base.display());
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).to_string())
            .collect();
        if args.first().is_some_and(|a| a == "ssh") && args.iter().any(|a| a.contains(&needle)) {
            let host = args.iter().rev().find(|a| !a.is_empty()).cloned().unwrap();
            found.push((pid, host));
        }
    }
    found.sort_by(|a, b| a.1.cmp(&b.1));
    found
}

/// The unix sockets a process listens on.
fn listening_sockets(pid: u32) -> Vec<String> {
    let out = Command::new("ss")
        .args(["-xlpn"])
        .output()
        .expect("ss runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("pid={pid},")))
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .collect()
}

/// With `ssh.persist`, a command's connections outlive it and the next
/// command uses them (no handshake), leaving no forward behind; a kept
/// connection that died is replaced; `persist = 0` closes them.
#[test]
fn kept_connections_serve_the_next_command_and_a_dead_one_is_replaced() {
    let lab = Lab::require();
    let _serial = serial();
    let dir = scratch("kept-connections");
    // A short control directory of the test's own (socket paths are short).
    let base = PathBuf::from(format!("/tmp/sck-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let kept = config_with(
        &lab,
        &dir,
        &[(
            "known_hosts = \"strict\"",
            "known_hosts = \"strict\"\npersist = 30",
        )],
    );
    let hosts: Vec<String> = (1..=3).map(|k| lab.host_ip(k)).collect();
    let cleanup_base = base.clone();
    let _cleanup = OnDrop(move || {
        for (pid, _) in kept_masters(&cleanup_base) {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
        let _ = std::fs::remove_dir_all(&cleanup_base);
    });

    let (code, out, handshakes) = plan_kept(&base, &kept);
    assert!(code == 0, "{out}");
    assert_eq!(handshakes, hosts, "{out}");
    let first = kept_masters(&base);
    assert_eq!(
        first.iter().map(|(_, h)| h.clone()).collect::<Vec<_>>(),
        hosts,
        "a master per host outlives the command"
    );

    // The next command uses them: no handshake, and no forward left behind
    // (each master listens on its control socket only).
    let (code, out, handshakes) = plan_kept(&base, &kept);
    assert!(code == 0, "{out}");
    assert!(handshakes.is_empty(), "handshakes: {handshakes:?}\n{out}");
    assert!(out.contains("kept ssh connection tried"), "{out}");
    assert_eq!(kept_masters(&base), first, "the same masters");
    for (pid, host) in &first {
        let sockets = listening_sockets(*pid);
        assert!(
            sockets.len() == 1 && sockets[0].contains("/master"),
            "{host}'s master still listens on {sockets:?}"
        );
    }

    // One dies: its host gets a new connection, the others keep theirs.
    let (dead_pid, dead_host) = first[1].clone();
    assert!(Command::new("kill")
        .args(["-9", &dead_pid.to_string()])
        .status()
        .unwrap()
        .success());
    let (code, out, handshakes) = plan_kept(&base, &kept);
    assert!(code == 0, "{out}");
    assert_eq!(handshakes, vec![dead_host.clone()], "{out}");
    let now = kept_masters(&base);
    assert_eq!(now.len(), 3, "{now:?}");
    assert!(
        now.contains(&first[0]) && now.contains(&first[2]),
        "{now:?}"
    );

    // `persist = 0`: the kept connections are closed, and nothing is kept.
    let (code, out, handshakes) = plan_kept(&base, &lab.config_path());
    assert!(code == 0, "{out}");
    assert_eq!(handshakes, hosts, "{out}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !kept_masters(&base).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(kept_masters(&base), vec![], "closed with persist = 0");
    let left: Vec<_> = std::fs::read_dir(base.join("seedcore/k"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

/// A kept connection that cannot have its directory is refused before any
/// connection is tried, with the way out (no lab needed: nothing is sent).
#[test]
fn a_kept_connection_without_its_directory_says_how_to_go_on() {
    let dir = scratch("kept-no-dir");
    let base = PathBuf::from(format!("/tmp/sck-nodir-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(base.join("seedcore")).unwrap();
    std::fs::write(base.join("seedcore/k"), "not a directory").unwrap();
    let cleanup = base.clone();
    let _cleanup = OnDrop(move || {
        let _ = std::fs::remove_dir_all(&cleanup);
    });
    let config = dir.join("seedcore.toml");
    std::fs::write(
        &config,
        "[cluster]\nname = \"kx\"\nimage = \"ray:test\"\n[ssh]\nuser = \"root\"\npersist = 30\n[head]\nhost = \"127.0.0.1\"\n",
    )
    .unwrap();
    let (code, out, handshakes) = plan_kept(&base, &config);
    assert_eq!(code, 1, "{out}");
    assert!(handshakes.is_empty(), "{out}");
    let shown: String = out
        .lines()
        .filter(|l| l.starts_with("error:") || l.starts_with("hint:"))
        .map(|l| l.replace(&base.display().to_string(), "$XDG_RUNTIME_DIR"))
        .collect::<Vec<_>>()
        .join("\n");
    insta::assert_snapshot!(shown);
}
