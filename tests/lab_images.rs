//! Images without a registry, against the real lab: with `image_source = "push"`, seedcore
//! moves the image from this machine's dockerd to lab hosts that lack it, only the layers
//! each host lacks, checks the image ID on arrival and tags it only then.
//!
//! The tests drive the cluster `seedlab` of `.lab/seedcore.toml` and leave it converged,
//! with the lab image back on every host. Run: `cargo test --test lab_images --
//! --nocapture --test-threads=1` (after `tests/lab/lab up`). Without the lab, every test
//! fails. Do not run it at the same time as the other lab suites.

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use support::lab::{run_with_timeout, Lab, Run};

const IMAGE: &str = "seedcore-ray:lab";
/// The lab image plus one small layer, built on this machine by the test.
const ONE_MORE: &str = "seedcore-push:one";
const HEAD: &str = "seedlab-ray-head";
const BASE: [&str; 4] = [
    HEAD,
    "seedlab-ray-local-10.77.0.11-1",
    "seedlab-ray-remote-10.77.0.12-1",
    "seedlab-ray-remote-10.77.0.13-1",
];

/// One test at a time: they drive the same cluster.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The lab's own config: it pushes (`image_source = "push"`), as `lab up` writes it.
fn push_config(lab: &Lab) -> PathBuf {
    let path = lab.config_path();
    let text = std::fs::read_to_string(&path).expect("lab config");
    assert!(text.contains("image_source = \"push\"\n"), "{text}");
    path
}

fn run(lab: &Lab, config: &std::path::Path, args: &[&str]) -> Run {
    run_with_timeout(
        lab.seedcore_command_with(config, args),
        Duration::from_secs(600),
    )
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

/// Bytes a push step reported sending (`... push ... sent 1.2 MiB (image ...)`).
fn sent_bytes(run: &Run, host: &str) -> Vec<f64> {
    run.output()
        .lines()
        .filter(|l| l.contains(&format!(" {host} (push): push: sent ")) && l.contains("checked"))
        .filter_map(|l| {
            let after = l.split(": sent ").nth(1)?;
            let mut parts = after.split_whitespace();
            let n: f64 = parts.next()?.parse().ok()?;
            let unit = parts.next()?;
            let mult = match unit {
                "B" => 1.0,
                "KiB" => 1024.0,
                "MiB" => 1024.0 * 1024.0,
                "GiB" => 1024.0 * 1024.0 * 1024.0,
                _ => return None,
            };
            Some(n * mult)
        })
        .collect()
}

fn wait_whole(lab: &Lab) {
    let want: BTreeSet<String> = BASE.iter().map(|n| n.to_string()).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let up: BTreeSet<String> = lab
            .try_ray_nodes(1, HEAD)
            .map(|n| {
                n.into_iter()
                    .filter(|x| x.alive())
                    .map(|x| x.node_name)
                    .collect()
            })
            .unwrap_or_default();
        if want.is_subset(&up) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Ray does not list every node ALIVE"
        );
        sleep(Duration::from_secs(1));
    }
}

/// Puts the lab image back on every host and converges the base cluster.
struct Restore<'a>(&'a Lab);

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        for k in 1..=3 {
            self.0.ensure_image(k, IMAGE);
        }
        let run = self.0.seedcore(&["apply", "--auto-approve"]);
        if run.code() != Some(0) {
            eprintln!("restoring the base cluster: {}", run.output());
        }
    }
}

fn build_one_more() {
    let out = Command::new("bash")
        .args([
            "-c",
            &format!(
                "printf 'FROM {IMAGE}\\nRUN echo one-layer > /opt/seedcore-push-test\\n' | docker build -q -t {ONE_MORE} -"
            ),
        ])
        .output()
        .expect("docker build");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn local_size(image: &str) -> f64 {
    let out = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Size}}", image])
        .output()
        .expect("docker inspect");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0.0)
}

#[test]
fn push_moves_only_missing_layers_and_never_tags_a_partial_image() {
    let _serial = serial();
    let lab = Lab::require();
    let config = push_config(&lab);
    let _restore = Restore(&lab);
    build_one_more();

    // Lab hosts without the image: apply pushes it to every host.
    lab.seedcore(&["destroy", "--auto-approve"]).expect_ok();
    for k in 1..=3 {
        let _ = lab.docker(k, &["rmi", "-f", IMAGE, ONE_MORE]);
        let _ = lab.docker(k, &["image", "prune", "-af"]);
        assert!(!lab.docker(k, &["image", "inspect", IMAGE]).status.success());
    }
    let plan = run(&lab, &config, &["plan"]);
    plan.expect_ok();
    for ip in ["10.77.0.11", "10.77.0.12", "10.77.0.13"] {
        assert_contains(
            &plan,
            &format!("will be pushed from this machine to `{ip}`: 3 of its 3 layers"),
        );
    }
    let began = Instant::now();
    let apply = run(&lab, &config, &["apply", "--auto-approve"]);
    apply.expect_ok();
    let full = local_size(IMAGE);
    for ip in ["10.77.0.11", "10.77.0.12", "10.77.0.13"] {
        let sent = sent_bytes(&apply, ip);
        assert_eq!(sent.len(), 1, "one push to {ip}:\n{}", apply.output());
        assert!(
            sent[0] > 0.9 * full,
            "{ip}: sent {} of a {full}-byte image",
            sent[0]
        );
    }
    eprintln!(
        "first push to 3 hosts and bring-up: {:.1?}",
        began.elapsed()
    );
    wait_whole(&lab);
    for k in 1..=3 {
        let id = lab.docker_ok(k, &["image", "inspect", "--format", "{{.Id}}", IMAGE]);
        assert!(id.trim().starts_with("sha256:"), "labhost{k}: {id}");
    }
    let again = run(&lab, &config, &["plan"]);
    again.expect_ok();
    assert_contains(&again, "No changes.");
    assert!(
        !again.output().contains("will be pushed"),
        "{}",
        again.output()
    );

    // One more small layer: only it crosses the wire, and every node runs the new image.
    let set = format!("cluster.image={ONE_MORE}");
    let plan = run(&lab, &config, &["--set", &set, "plan"]);
    assert_contains(&plan, "1 of its 4 layers");
    let apply = run(&lab, &config, &["--set", &set, "apply", "--auto-approve"]);
    apply.expect_ok();
    for ip in ["10.77.0.11", "10.77.0.12", "10.77.0.13"] {
        let sent = sent_bytes(&apply, ip);
        assert_eq!(sent.len(), 1, "{ip}:\n{}", apply.output());
        assert!(
            sent[0] < 1024.0 * 1024.0,
            "{ip}: sent {} bytes for one small layer",
            sent[0]
        );
    }
    wait_whole(&lab);

    // Rebuilt under the same name: the plan replaces every node, "image rebuilt".
    let out = Command::new("bash")
        .args([
            "-c",
            &format!(
                "printf 'FROM {IMAGE}\\nRUN echo rebuilt > /opt/seedcore-push-test\\n' | docker build -q -t {ONE_MORE} -"
            ),
        ])
        .output()
        .expect("docker build");
    assert!(out.status.success());
    let plan = run(&lab, &config, &["--set", &set, "plan"]);
    assert_contains(&plan, "image rebuilt");
    assert_contains(&plan, "Plan: 4 to add, 0 to change, 4 to destroy.");

    // Killed in the middle of a transfer: the host does not list the image under its name,
    // the next plan still shows the transfer, and the next apply completes it.
    lab.seedcore(&["destroy", "--auto-approve"]).expect_ok();
    let _ = lab.docker(3, &["rmi", "-f", IMAGE, ONE_MORE]);
    let _ = lab.docker(3, &["image", "prune", "-af"]);
    let mut cmd = lab.seedcore_command_with(&config, &["apply", "--auto-approve"]);
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().expect("apply");
    // The push to labhost3 (the whole image) is under way a few seconds in.
    sleep(Duration::from_secs(4));
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    sleep(Duration::from_secs(2));
    assert!(
        !lab.docker(3, &["image", "inspect", IMAGE]).status.success(),
        "labhost3 lists {IMAGE} after an interrupted transfer"
    );
    let plan = run(&lab, &config, &["plan"]);
    assert_contains(&plan, "will be pushed from this machine to `10.77.0.13`");

    // This machine without a Docker engine: the image is relayed from a cluster host that
    // has it, through seedcore's own sessions, and the apply completes the transfer.
    let relayed = |args: &[&str]| {
        let mut cmd = lab.seedcore_command_with(&config, args);
        cmd.env("DOCKER_HOST", "unix:///nonexistent/docker.sock");
        run_with_timeout(cmd, Duration::from_secs(600))
    };
    let plan = relayed(&["plan"]);
    plan.expect_ok();
    assert_contains(
        &plan,
        "will be pushed from `10.77.0.11` (relayed through this machine) to `10.77.0.13`",
    );
    assert!(
        !plan.output().contains("to `10.77.0.12`"),
        "labhost2 has the image:\n{}",
        plan.output()
    );
    let apply = relayed(&["apply", "--auto-approve"]);
    apply.expect_ok();
    assert_eq!(
        sent_bytes(&apply, "10.77.0.13").len(),
        1,
        "{}",
        apply.output()
    );
    let here = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", IMAGE])
        .output()
        .expect("docker image inspect");
    let there = lab.docker_ok(3, &["image", "inspect", "--format", "{{.Id}}", IMAGE]);
    assert_eq!(String::from_utf8_lossy(&here.stdout).trim(), there.trim());
    wait_whole(&lab);
}

#[test]
fn a_build_config_builds_here_and_a_changed_context_replaces_the_nodes() {
    let _serial = serial();
    let lab = Lab::require();
    let _restore = Restore(&lab);
    // Built images a failed earlier run left behind would spare this run its build.
    let _ = Command::new("bash")
        .args([
            "-c",
            "docker images -q --filter reference='seedcore-app:*' | sort -u | xargs -r docker rmi -f",
        ])
        .output();
    // The lab cluster as `lab up` describes it (seedcore pushes the lab image to hosts
    // that lack it): the built image's own layers are then all a host lacks.
    lab.seedcore(&["apply", "--auto-approve"]).expect_ok();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("lab-images-build");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("ctx")).expect("context dir");
    std::fs::write(
        dir.join("ctx/Dockerfile"),
        format!("FROM {IMAGE}\nARG GREETING\nCOPY app.txt /opt/app.txt\nRUN echo \"$GREETING\" > /opt/greeting\n"),
    )
    .unwrap();
    std::fs::write(dir.join("ctx/app.txt"), "version 1\n").unwrap();
    let base = std::fs::read_to_string(lab.config_path()).expect("lab config");
    let text = base.replacen(
        "[cluster]\nname = \"seedlab\"\nimage = \"seedcore-ray:lab\"\n",
        "[cluster]\nname = \"seedlab\"\nimage = \"seedcore-app:dev\"\nbuild = { context = \"ctx\", args = { GREETING = \"hello\" } }\n",
        1,
    );
    assert!(text.contains("build = {"), "{text}");
    let config = dir.join("seedcore.toml");
    std::fs::write(&config, text).unwrap();

    let plan = run(&lab, &config, &["plan"]);
    plan.expect_ok();
    assert_contains(
        &plan,
        "will be built on this machine, then pushed to `10.77.0.12`",
    );
    assert_contains(&plan, "build seedcore-app:ctx-");
    let apply = run(&lab, &config, &["apply", "--auto-approve"]);
    apply.expect_ok();
    wait_whole(&lab);
    let tag = plan
        .output()
        .split("seedcore-app:ctx-")
        .nth(1)
        .map(|t| t.chars().take(12).collect::<String>())
        .expect("the ctx tag");
    let greeting = lab.docker_ok(
        2,
        &[
            "exec",
            "seedlab-ray-remote-10.77.0.12-1",
            "cat",
            "/opt/greeting",
            "/opt/app.txt",
        ],
    );
    assert_eq!(greeting, "hello\nversion 1\n");
    // Each pushed host got only the layers on top of the lab image.
    for ip in ["10.77.0.11", "10.77.0.12", "10.77.0.13"] {
        let sent = sent_bytes(&apply, ip);
        assert_eq!(sent.len(), 1, "{ip}:\n{}", apply.output());
        assert!(sent[0] < 1024.0 * 1024.0, "{ip}: sent {} bytes", sent[0]);
    }
    let again = run(&lab, &config, &["plan"]);
    assert_contains(&again, "No changes.");

    // A changed file in the context: every node is replaced, "image rebuilt".
    std::fs::write(dir.join("ctx/app.txt"), "version 2\n").unwrap();
    let plan = run(&lab, &config, &["plan"]);
    plan.expect_ok();
    assert_contains(&plan, "image rebuilt: context changed (seedcore-app:ctx-");
    assert_contains(
        &plan,
        &format!("seedcore-app:ctx-{tag} -> seedcore-app:ctx-"),
    );
    assert_contains(&plan, "Plan: 4 to add, 0 to change, 4 to destroy.");
    // Back to the first content: nothing to do.
    std::fs::write(dir.join("ctx/app.txt"), "version 1\n").unwrap();
    let plan = run(&lab, &config, &["plan"]);
    assert_contains(&plan, "No changes.");
    let _ = Command::new("docker")
        .args(["rmi", "-f", &format!("seedcore-app:ctx-{tag}")])
        .output();
}
