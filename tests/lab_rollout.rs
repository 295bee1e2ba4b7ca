//! Ray-aware changes against the real lab (issue 12): what a plan interrupts, rolling
//! replacement in waves, a failed wave, and a group's custom resources and labels in
//! Ray's own node listing.
//!
//! The tests drive the cluster `seedlab` of `.lab/seedcore.toml`, with the group `local`
//! raised to 3 workers on labhost1 for the rollouts, and leave the base cluster applied.
//! Run: `cargo test --test lab_rollout -- --nocapture --test-threads=1` (after
//! `tests/lab/lab up`). Without the lab, every test fails. Do not run it at the same time
//! as the other lab suites.

mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::{Duration, Instant};

use support::lab::{Lab, OnDrop, Run};

const HEAD: &str = "seedlab-ray-head";
const LOCAL: [&str; 3] = [
    "seedlab-ray-local-10.77.0.11-1",
    "seedlab-ray-local-10.77.0.11-2",
    "seedlab-ray-local-10.77.0.11-3",
];
const REMOTE12: &str = "seedlab-ray-remote-10.77.0.12-1";
const REMOTE13: &str = "seedlab-ray-remote-10.77.0.13-1";
const THREE: [&str; 4] = [
    "--set",
    "workers.local.count=3",
    "--set",
    "cluster.oversubscribe_cpus=true",
];

/// One test at a time: they drive the same cluster.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn seedcore(lab: &Lab, sets: &[&str], args: &[&str]) -> Run {
    let mut all: Vec<&str> = sets.to_vec();
    all.extend_from_slice(args);
    lab.seedcore(&all)
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

/// The names Ray lists ALIVE (through the dashboard's state API: a tenth of a second).
fn alive_names(lab: &Lab) -> Option<BTreeSet<String>> {
    let cmd = seedcore::ray::state_api_command(8265);
    let mut args = vec!["exec", HEAD];
    args.extend(cmd.iter().map(String::as_str));
    let out = lab.docker(1, &args);
    if !out.status.success() {
        return None;
    }
    let nodes: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).ok()?;
    Some(
        nodes
            .iter()
            .filter(|n| n["state"] == "ALIVE")
            .filter_map(|n| n["node_name"].as_str().map(str::to_string))
            .collect(),
    )
}

fn wait_alive(lab: &Lab, want: &[&str], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let up = alive_names(lab).unwrap_or_default();
        if want.iter().all(|w| up.contains(*w)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Ray lists {up:?} ALIVE, not all of {want:?}"
        );
        sleep(Duration::from_millis(500));
    }
}

/// Progress lines of an apply (`[  1.2s] NODE: step ...`), in order.
fn index_of(run: &Run, node: &str, what: &str) -> Option<usize> {
    let needle = format!("] {node}: {what}");
    run.stderr
        .lines()
        .filter(|l| l.trim_start().starts_with('['))
        .position(|l| l.contains(&needle))
}

fn image_of(lab: &Lab, name: &str) -> String {
    lab.docker_ok(1, &["inspect", "-f", "{{.Config.Image}}", name])
        .trim()
        .to_string()
}

/// Tags or builds an image on this machine (the lab pushes from here).
fn local_docker(script: &str) {
    let out = Command::new("bash")
        .args(["-c", script])
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn restore(lab: &Lab) {
    let run = lab.seedcore(&["apply", "--auto-approve"]);
    if run.code() != Some(0) {
        eprintln!("restoring the base cluster failed:\n{}", run.output());
    }
}

#[test]
fn replacing_a_group_rolls_one_worker_at_a_time_and_a_failed_wave_stops_it() {
    let _serial = serial();
    let lab = Lab::require();
    local_docker("docker tag seedcore-ray:lab seedcore-ray:roll");
    local_docker(
        "printf 'FROM seedcore-ray:lab\\nRUN rm /opt/ray/bin/ray\\n' | docker build -q -t seedcore-ray:broken -",
    );
    let _restore = OnDrop(|| restore(&lab));
    seedcore(&lab, &THREE, &["apply", "--auto-approve"]).expect_ok();
    wait_alive(&lab, &LOCAL, Duration::from_secs(120));

    // Poll Ray's membership of the group all through the apply.
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<usize>>> = Arc::default();
    let poller = {
        let (stop, seen) = (stop.clone(), seen.clone());
        let lab = Lab::require();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(up) = alive_names(&lab) {
                    let n = LOCAL.iter().filter(|l| up.contains(**l)).count();
                    seen.lock().unwrap().push(n);
                }
                sleep(Duration::from_millis(300));
            }
        })
    };
    let image = ["--set", "workers.local.image=seedcore-ray:roll"];
    let mut sets = THREE.to_vec();
    sets.extend_from_slice(&image);
    let plan = seedcore(&lab, &sets, &["plan"]);
    assert_contains(
        &plan,
        "Workers of group `local` are replaced in 3 waves of at most 1",
    );
    let apply = seedcore(&lab, &sets, &["apply", "--auto-approve"]);
    stop.store(true, Ordering::Relaxed);
    poller.join().unwrap();
    apply.expect_ok();
    let seen = seen.lock().unwrap().clone();
    eprintln!(
        "rollout of 3 workers: {:.1?}, {} membership samples, fewest ALIVE {:?}",
        apply.elapsed,
        seen.len(),
        seen.iter().min()
    );
    assert!(seen.len() >= 10, "too few samples: {seen:?}");
    assert!(
        seen.iter().all(|n| *n >= 2),
        "fewer than 2 of the group ALIVE during the rollout: {seen:?}"
    );
    // Each drained before it stopped; each wave ALIVE before the next drains.
    for (k, node) in LOCAL.iter().enumerate() {
        let drained = index_of(&apply, node, "drain done").expect("drained");
        let removed = index_of(&apply, node, "remove done").expect("removed");
        assert!(drained < removed, "{node} drained before removal");
        if k > 0 {
            let ready = index_of(&apply, LOCAL[k - 1], "wait-ready done").expect("ready");
            let next = index_of(&apply, node, "drain").expect("drain");
            assert!(ready < next, "{} ALIVE before {node} drains", LOCAL[k - 1]);
        }
    }
    for node in LOCAL {
        assert_eq!(image_of(&lab, node), "seedcore-ray:roll");
    }
    wait_alive(&lab, &LOCAL, Duration::from_secs(60));

    // A wave whose new node cannot start: the rollout stops after it, exit 1, and the
    // others keep running the previous spec.
    let mut sets = THREE.to_vec();
    sets.extend_from_slice(&["--set", "workers.local.image=seedcore-ray:broken"]);
    let failed = seedcore(&lab, &sets, &["apply", "--auto-approve"]);
    failed.expect_code(1);
    assert_contains(
        &failed,
        "the rollout of group `local` stopped after wave 1 of 3: `seedlab-ray-local-10.77.0.11-2`, `seedlab-ray-local-10.77.0.11-3` still run(s) the previous spec, untouched",
    );
    assert_contains(
        &failed,
        "run `seedcore apply` again: it continues the rollout",
    );
    for node in &LOCAL[1..] {
        assert_eq!(image_of(&lab, node), "seedcore-ray:roll", "{node}");
    }
    wait_alive(&lab, &LOCAL[1..], Duration::from_secs(30));
}

/// A job with a detached actor and a plain one on labhost3's worker.
const JOB: &str = r#"
import ray, time
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
ray.init()
node = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeManagerAddress"] == "10.77.0.13"][0]
on = NodeAffinitySchedulingStrategy(node_id=node, soft=False)
@ray.remote(num_cpus=0)
class Keeper:
    def ping(self):
        return 1
k = Keeper.options(name="seedtest-keeper", namespace="seedtest", lifetime="detached", scheduling_strategy=on).remote()
w = Keeper.options(scheduling_strategy=on).remote()
ray.get([k.ping.remote(), w.ping.remote()])
print("ready", flush=True)
time.sleep(900)
"#;

#[test]
fn the_plan_names_the_job_and_actors_a_change_would_interrupt() {
    let _serial = serial();
    let lab = Lab::require();
    // Submission IDs stay taken while the head lives: one per run.
    let job = format!("train-{}", std::process::id());
    let job = job.as_str();
    let _restore = OnDrop(|| {
        let _ = lab.docker(
            1,
            &[
                "exec",
                HEAD,
                "ray",
                "job",
                "stop",
                "--address",
                "http://127.0.0.1:8265",
                job,
            ],
        );
        let _ = lab.docker(
            1,
            &[
                "exec",
                HEAD,
                "python3",
                "-c",
                "import ray; ray.init(); ray.kill(ray.get_actor('seedtest-keeper', namespace='seedtest'))",
            ],
        );
        restore(&lab);
    });
    lab.seedcore(&["apply", "--auto-approve"]).expect_ok();
    wait_alive(&lab, &[HEAD, REMOTE12, REMOTE13], Duration::from_secs(90));
    let submit = lab.docker(
        1,
        &[
            "exec",
            HEAD,
            "ray",
            "job",
            "submit",
            "--address",
            "http://127.0.0.1:8265",
            "--submission-id",
            job,
            "--no-wait",
            "--",
            "python3",
            "-c",
            JOB,
        ],
    );
    assert!(
        submit.status.success(),
        "ray job submit: {}",
        String::from_utf8_lossy(&submit.stderr)
    );
    // Until the job's actors are up.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let logs = lab.docker(
            1,
            &[
                "exec",
                HEAD,
                "ray",
                "job",
                "logs",
                "--address",
                "http://127.0.0.1:8265",
                job,
            ],
        );
        if String::from_utf8_lossy(&logs.stdout).contains("ready") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the job never got ready: {}",
            String::from_utf8_lossy(&logs.stdout)
        );
        sleep(Duration::from_secs(1));
    }

    // Both remote workers change: the one on labhost3 names the job and its 2 actors,
    // the one on labhost2 names nothing.
    let plan = lab.seedcore(&["plan", "--set", "workers.remote.cpus=2"]);
    plan.expect_ok();
    let text = plan.stdout.clone();
    let block = |node: &str| -> String {
        let start = text
            .find(&format!("  # {node} on "))
            .unwrap_or_else(|| panic!("no block for {node}:\n{text}"));
        text[start..].lines().take(3).collect::<Vec<_>>().join("\n")
    };
    assert!(
        block(REMOTE13).contains(&format!("# interrupts: 1 running job (`{job}`), 2 actors")),
        "{}",
        block(REMOTE13)
    );
    assert!(
        block(REMOTE12).contains("# interrupts: nothing running"),
        "{}",
        block(REMOTE12)
    );
    let json = lab.seedcore(&["plan", "--set", "workers.remote.cpus=2", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("plan JSON");
    let change = |node: &str| {
        v["changes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["node"] == node)
            .cloned()
            .unwrap_or_else(|| panic!("no change for {node}"))
    };
    assert_eq!(
        change(REMOTE13)["interrupts"]["jobs"],
        serde_json::json!([job])
    );
    assert_eq!(change(REMOTE13)["interrupts"]["actors"], 2);
    assert_eq!(
        change(REMOTE12)["interrupts"]["jobs"],
        serde_json::json!([])
    );
    assert_eq!(change(REMOTE12)["interrupts"]["actors"], 0);
    // The head interrupts everything, said once.
    let head = lab.seedcore(&[
        "plan",
        "--set",
        "head.cpus=2",
        "--set",
        "cluster.oversubscribe_cpus=true",
    ]);
    assert_contains(
        &head,
        "Stopping the head interrupts everything on the cluster: ",
    );
    assert_contains(&head, &format!("`{job}`"));
}

#[test]
fn a_groups_resources_and_labels_reach_rays_node_listing() {
    let _serial = serial();
    let lab = Lab::require();
    let _restore = OnDrop(|| restore(&lab));
    let run = lab.seedcore(&[
        "apply",
        "--auto-approve",
        "--set",
        "workers.remote.resources.lab_disk=2",
        "--set",
        "workers.remote.labels.zone=rack-9",
    ]);
    run.expect_ok();
    wait_alive(&lab, &[REMOTE12, REMOTE13], Duration::from_secs(90));
    let cmd = seedcore::ray::state_api_command(8265);
    let mut args = vec!["exec", HEAD];
    args.extend(cmd.iter().map(String::as_str));
    let nodes: Vec<serde_json::Value> =
        serde_json::from_str(&lab.docker_ok(1, &args)).expect("state API nodes");
    for n in nodes.iter().filter(|n| n["state"] == "ALIVE") {
        let name = n["node_name"].as_str().unwrap_or_default();
        let remote = name == REMOTE12 || name == REMOTE13;
        assert_eq!(
            n["resources_total"]["lab_disk"].as_f64(),
            remote.then_some(2.0),
            "{name}: {n}"
        );
        assert_eq!(
            n["labels"]["zone"].as_str(),
            remote.then_some("rack-9"),
            "{name}: {n}"
        );
    }
}

#[test]
fn a_node_whose_first_start_fails_is_restarted_by_docker_and_joins() {
    let _serial = serial();
    let lab = Lab::require();
    // The image's entry point fails the container's first run only (a
    // marker in the container's own filesystem), as a `ray start` that
    // timed out once on a loaded machine would.
    local_docker(
        r#"docker build -q -t seedcore-ray:once - <<'EOF'
FROM seedcore-ray:lab
RUN printf '%s\n' '#!/bin/sh' 'if [ ! -e /var/tmp/seedcore-once ]; then : > /var/tmp/seedcore-once; echo "seedcore test: this first start fails on purpose" >&2; exit 1; fi' 'exec "$@"' > /usr/local/bin/once && chmod +x /usr/local/bin/once
ENTRYPOINT ["/usr/local/bin/once"]
EOF"#,
    );
    let _restore = OnDrop(|| restore(&lab));
    lab.seedcore(&["apply", "--auto-approve"]).expect_ok();
    let apply = lab.seedcore(&[
        "--set",
        "workers.remote.image=seedcore-ray:once",
        "apply",
        "--auto-approve",
    ]);
    apply.expect_ok();
    // Ray listed them when apply said so; each ran twice.
    let up = alive_names(&lab).expect("Ray's node list");
    for (k, node) in [(2, REMOTE12), (3, REMOTE13)] {
        assert!(up.contains(node), "{node} is not ALIVE: {up:?}");
        let c = lab.container(k, node).expect("the worker's container");
        assert_eq!(
            (c.status.as_str(), c.restart_count),
            ("running", 1),
            "{node}"
        );
        assert_eq!(image_of_on(&lab, k, node), "seedcore-ray:once");
    }
}

fn image_of_on(lab: &Lab, k: usize, name: &str) -> String {
    lab.docker_ok(k, &["inspect", "-f", "{{.Config.Image}}", name])
        .trim()
        .to_string()
}
