//! Compatibility against the real lab (issue 15): the plan names each image's Ray
//! version and refuses one outside the support window; a cluster of the oldest
//! supported Ray applies, reports itself whole and is destroyed.
//!
//! The tests drive the cluster `seedlab` of `.lab/seedcore.toml` with another image and
//! leave the base cluster applied. Run: `cargo test --test lab_compat -- --nocapture
//! --test-threads=1` (after `tests/lab/lab up`; the oldest-Ray image is built by
//! `tests/lab/lab build-oldest-ray`, cached). Without the lab, every test fails. Do not
//! run it at the same time as the other lab suites.

mod support;

use std::process::Command;
use std::sync::Mutex;

use support::lab::{Lab, OnDrop, Run};

const OLDEST: &str = "seedcore-ray:oldest";
const TOO_OLD: &str = "seedcore-ray:too-old";

fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
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

fn restore(lab: &Lab) {
    let run = lab.seedcore(&["apply", "--auto-approve"]);
    if run.code() != Some(0) {
        eprintln!("restoring the base cluster failed:\n{}", run.output());
    }
}

/// The Ray version the lab image's Ray reports.
fn lab_ray_version() -> String {
    let out = Command::new("docker")
        .args([
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            "python3",
            "seedcore-ray:lab",
            "-c",
            seedcore::compat::VERSION_SCRIPT,
        ])
        .output()
        .expect("docker run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn the_plan_names_the_ray_version_and_refuses_one_outside_the_window() {
    let _serial = serial();
    let lab = Lab::require();
    let plan = lab.seedcore(&["plan"]);
    plan.expect_ok();
    assert_contains(
        &plan,
        &format!("`seedcore-ray:lab` runs Ray {}.", lab_ray_version()),
    );

    // The lab image, its package metadata saying 2.9.0: what an older Ray looks like.
    let script = format!(
        "printf 'FROM seedcore-ray:lab\\nRUN sed -i \"s/^Version: .*/Version: 2.9.0/\" /opt/ray/lib/python3*/site-packages/ray-*.dist-info/METADATA\\n' | docker build -q -t {TOO_OLD} -"
    );
    let out = Command::new("bash")
        .args(["-c", &script])
        .output()
        .expect("docker build");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let image = format!("cluster.image={TOO_OLD}");
    let refused = lab.seedcore(&["plan", "--set", &image]);
    refused.expect_code(1);
    assert_contains(
        &refused,
        "error: `seedcore-ray:too-old` runs Ray 2.9.0; seedcore supports Ray 2.10.0 through 2.60.x",
    );
    assert_contains(&refused, "nothing was changed");
    // Refused before any host was touched: the base cluster still runs the lab image.
    let running = lab.docker_ok(
        1,
        &["inspect", "-f", "{{.Config.Image}}", "seedlab-ray-head"],
    );
    assert_eq!(running.trim(), "seedcore-ray:lab");
}

#[test]
fn a_cluster_of_the_oldest_supported_ray_applies_reports_and_is_destroyed() {
    let _serial = serial();
    let lab = Lab::require();
    lab.lab_ok(&["build-oldest-ray"]);
    let _restore = OnDrop(|| restore(&lab));
    let sets = [
        "--set",
        "cluster.image=seedcore-ray:oldest",
        // Token authentication needs Ray 2.52: said knowingly.
        "--set",
        "cluster.auth=none",
    ];
    let with = |args: &[&str]| {
        let mut all = sets.to_vec();
        all.extend_from_slice(args);
        lab.seedcore(&all)
    };
    let plan = with(&["plan"]);
    plan.expect_ok();
    assert_contains(&plan, &format!("`{OLDEST}` runs Ray 2."));
    let apply = with(&["apply", "--auto-approve"]);
    apply.expect_ok();
    eprintln!("oldest Ray: apply in {:.1?}", apply.elapsed);
    let status = with(&["status"]);
    status.expect_ok();
    for node in [
        "seedlab-ray-head",
        "seedlab-ray-local-10.77.0.11-1",
        "seedlab-ray-remote-10.77.0.12-1",
        "seedlab-ray-remote-10.77.0.13-1",
    ] {
        assert_contains(&status, node);
    }
    let image = lab.docker_ok(
        1,
        &["inspect", "-f", "{{.Config.Image}}", "seedlab-ray-head"],
    );
    assert_eq!(image.trim(), OLDEST);
    let destroy = with(&["destroy", "--auto-approve"]);
    destroy.expect_ok();
    for k in 1..=3 {
        let left = lab.containers_with_label(k, "io.seedcore.cluster=seedlab");
        assert!(left.is_empty(), "labhost{k} keeps {left:?}");
    }
}

/// Both engine generations in one cluster: the plan names each; a worker killed on the
/// newer engine (whose restart-policy handling of `docker kill` differs across versions)
/// is brought back by the next apply, and the cluster is whole again.
#[test]
fn a_cluster_across_two_engine_generations_is_planned_and_repaired() {
    let _serial = serial();
    let lab = Lab::require();
    let _restore = OnDrop(|| restore(&lab));
    lab.seedcore(&["apply", "--auto-approve"]).expect_ok();
    let plan = lab.seedcore(&["plan"]);
    plan.expect_ok();
    let version = |k: usize| {
        lab.docker_ok(k, &["version", "--format", "{{.Server.Version}}"])
            .trim()
            .to_string()
    };
    let (v1, v2) = (version(1), version(2));
    assert_ne!(
        v1.split('.').next(),
        v2.split('.').next(),
        "the default lab mixes engine generations (labhost1 {v1}, labhost2 {v2})"
    );
    assert_contains(&plan, &format!("10.77.0.11  Docker {v1}"));
    assert_contains(&plan, &format!("10.77.0.12  Docker {v2}"));

    let worker = "seedlab-ray-local-10.77.0.11-1";
    lab.docker_ok(1, &["kill", worker]);
    std::thread::sleep(std::time::Duration::from_secs(5));
    let state = lab
        .container(1, worker)
        .expect("the killed worker's container");
    eprintln!(
        "Docker {v1} after `docker kill` of an unless-stopped container: {} (restarts {})",
        state.status, state.restart_count
    );
    let apply = lab.seedcore(&["apply", "--auto-approve"]);
    apply.expect_ok();
    let status = lab.seedcore(&["status"]);
    status.expect_ok();
    assert_contains(&status, "The cluster is whole.");
}
