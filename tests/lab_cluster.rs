//! seedcore against the real lab (issues 4 and 5): plan and apply over SSH and Docker,
//! drift, conflicts, status, logs, destroy, scaling, host migration and restart, each
//! checked against what the lab hosts' dockerd and Ray itself report.
//!
//! Every test drives the one cluster `seedlab` described by `.lab/seedcore.toml`: the head
//! and worker `seedlab-ray-local-10.77.0.11-1` on labhost1, and the group `remote` with one
//! worker per host, `seedlab-ray-remote-10.77.0.12-1` on labhost2 and
//! `seedlab-ray-remote-10.77.0.13-1` on labhost3 (workers are named by group, host and
//! index on that host). They are
//! serialized by a process-wide lock; each begins by applying the base configuration (a
//! no-op of about a second when the cluster has converged) and leaves the base cluster
//! applied, with drop guards for whatever it injected (foreign containers, partitions,
//! image tags).
//!
//! Run: `cargo test --test lab_cluster -- --nocapture --test-threads=1` (after
//! `tests/lab/lab up`). Without the lab, every test fails.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard};
use std::thread::sleep;
use std::time::{Duration, Instant};

use support::lab::{Lab, OnDrop, RayNode, Run};

const CLUSTER_LABEL: &str = "io.seedcore.cluster=seedlab";
const HEAD: &str = "seedlab-ray-head";
const LOCAL1: &str = "seedlab-ray-local-10.77.0.11-1";
const LOCAL2: &str = "seedlab-ray-local-10.77.0.11-2";
const LOCAL3: &str = "seedlab-ray-local-10.77.0.11-3";
const REMOTE12: &str = "seedlab-ray-remote-10.77.0.12-1";
const REMOTE13: &str = "seedlab-ray-remote-10.77.0.13-1";
const LAB_HOSTS: [usize; 3] = [1, 2, 3];
/// The base configuration's nodes with the lab host each runs on.
const BASE: [(usize, &str); 4] = [(1, HEAD), (1, LOCAL1), (2, REMOTE12), (3, REMOTE13)];
const WORKERS: [&str; 3] = [LOCAL1, REMOTE12, REMOTE13];

// ------------------------------------------------------------------ shared helpers

/// One test at a time: they all drive the same cluster.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn base_names() -> Vec<&'static str> {
    BASE.iter().map(|(_, n)| *n).collect()
}

/// Ray's nodes in state ALIVE.
fn alive(nodes: &[RayNode]) -> Vec<&RayNode> {
    nodes.iter().filter(|n| n.alive()).collect()
}

fn alive_names(nodes: &[RayNode]) -> BTreeSet<String> {
    alive(nodes).iter().map(|n| n.node_name.clone()).collect()
}

fn describe(nodes: &[RayNode]) -> String {
    let mut lines: Vec<String> = nodes
        .iter()
        .map(|n| {
            format!(
                "  {:<30} {:<6} {:<11} cpu={} id={}",
                n.node_name,
                n.state,
                n.node_ip,
                n.cpus,
                &n.node_id[..n.node_id.len().min(12)]
            )
        })
        .collect();
    lines.sort();
    lines.join("\n")
}

/// Polls Ray (from the head container) until the set of ALIVE node names is exactly
/// `expected`; panics with the last answer after `timeout`.
fn wait_alive_set(lab: &Lab, expected: &[&str], timeout: Duration) -> Vec<RayNode> {
    let want: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
    let start = Instant::now();
    loop {
        let last = lab.try_ray_nodes(1, HEAD);
        if let Ok(nodes) = &last {
            if alive_names(nodes) == want {
                return nodes.clone();
            }
        }
        if start.elapsed() > timeout {
            let shown = match &last {
                Ok(nodes) => describe(nodes),
                Err(e) => e.clone(),
            };
            panic!("Ray's ALIVE nodes did not become {want:?} within {timeout:?}; last answer:\n{shown}");
        }
        sleep(Duration::from_secs(1));
    }
}

/// The base configuration applied and Ray listing exactly its 4 nodes ALIVE.
fn converge(lab: &Lab) -> Vec<RayNode> {
    let run = lab.seedcore(&["apply", "--auto-approve"]);
    run.expect_ok();
    wait_alive_set(lab, &base_names(), Duration::from_secs(90))
}

/// Container ID and start time of each named node (panics when one is missing).
fn containers(lab: &Lab, nodes: &[(usize, &str)]) -> BTreeMap<String, (String, String)> {
    nodes
        .iter()
        .map(|(k, name)| {
            let c = lab
                .container(*k, name)
                .unwrap_or_else(|| panic!("no container {name} on labhost{k}"));
            (name.to_string(), (c.id, c.started_at))
        })
        .collect()
}

fn ray_ids(nodes: &[RayNode]) -> BTreeSet<String> {
    nodes.iter().map(|n| n.node_id.clone()).collect()
}

/// Checks Ray's view right now (no waiting: seedcore said the cluster is whole): every
/// name in `expected` is ALIVE, and for those in `fresh` the ALIVE entry is a node Ray
/// did not know in `known_before` (not a stale entry of a container that is gone).
fn assert_whole_now(lab: &Lab, expected: &[&str], fresh: &[&str], known_before: &BTreeSet<String>) {
    let nodes = lab.ray_nodes(1, HEAD);
    for name in expected {
        let entries: Vec<&RayNode> = alive(&nodes)
            .into_iter()
            .filter(|n| n.node_name == *name)
            .collect();
        assert!(
            !entries.is_empty(),
            "right after seedcore reported success, Ray lists no ALIVE `{name}`:\n{}",
            describe(&nodes)
        );
        if fresh.contains(name) {
            assert!(
                entries.iter().any(|n| !known_before.contains(&n.node_id)),
                "right after seedcore reported success, Ray's only ALIVE `{name}` is the node \
                 that was there before (a stale entry: its container is gone and the new one \
                 has not joined yet):\n{}",
                describe(&nodes)
            );
        }
    }
}

/// The plain progress lines apply prints on stderr when it is not a terminal.
fn progress_lines(run: &Run) -> Vec<&str> {
    run.stderr
        .lines()
        .filter(|l| l.trim_start().starts_with('['))
        .collect()
}

/// Index of the first progress line for `node` whose text after `node: ` starts with
/// `what` (e.g. `start ...`, `wait-ready done`).
fn progress_index(lines: &[&str], node: &str, what: &str) -> Option<usize> {
    let needle = format!("] {node}: {what}");
    lines.iter().position(|l| l.contains(&needle))
}

fn must_index(run: &Run, node: &str, what: &str) -> usize {
    let lines = progress_lines(run);
    progress_index(&lines, node, what).unwrap_or_else(|| {
        panic!(
            "no progress line `{node}: {what}` in the output of `{}`:\n{}",
            run.what, run.stderr
        )
    })
}

fn assert_contains(run: &Run, needle: &str) {
    assert!(
        run.stdout.contains(needle) || run.stderr.contains(needle),
        "`{}` (exit {}) does not print {needle:?}\n--- stdout:\n{}\n--- stderr:\n{}",
        run.what,
        run.status,
        run.stdout,
        run.stderr
    );
}

fn assert_lacks(run: &Run, needle: &str) {
    assert!(
        !run.stdout.contains(needle) && !run.stderr.contains(needle),
        "`{}` prints {needle:?} but should not\n--- stdout:\n{}\n--- stderr:\n{}",
        run.what,
        run.stdout,
        run.stderr
    );
}

/// The plan block header seedcore prints for one node, e.g.
/// `# seedlab-ray-remote-10.77.0.12-1 on 10.77.0.12 will be started`.
fn header(node: &str, ip: &str, verb: &str) -> String {
    format!("# {node} on {ip} {verb}")
}

/// Headers of every node block in a text plan (`# NODE on HOST VERB...`).
fn plan_headers(run: &Run) -> Vec<String> {
    run.stdout
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("# seedlab-"))
        .map(str::to_string)
        .collect()
}

/// Creates an unlabelled `sleep infinity` container on labhost`k`; the guard removes it.
fn foreign_container<'a>(lab: &'a Lab, k: usize, name: &'a str) -> OnDrop<impl FnMut() + 'a> {
    const IMAGE: &str = "seedcore-lab-host:base";
    lab.ensure_image(k, IMAGE);
    let guard = OnDrop(move || {
        let _ = lab.docker(k, &["rm", "-f", name]);
    });
    let _ = lab.docker(k, &["rm", "-f", name]);
    lab.docker_ok(
        k,
        &["run", "-d", "--name", name, IMAGE, "sleep", "infinity"],
    );
    let c = lab
        .container(k, name)
        .expect("the foreign container exists");
    assert_eq!(c.status, "running");
    assert_eq!(
        c.cluster_label, "",
        "the foreign container must carry no seedcore label"
    );
    guard
}

// ------------------------------------------------------------------ issue 4

/// Runs in the head container: a task pinned (hard affinity) to the Ray node named
/// `seedlab-ray-remote-10.77.0.12-1` reports the IP of the machine it ran on.
const PINNED_TASK: &str = r#"
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from ray.util.state import list_nodes

ray.init(address="auto", logging_level="ERROR")
ids = [n.node_id for n in list_nodes() if n.node_name == "seedlab-ray-remote-10.77.0.12-1" and n.state == "ALIVE"]
assert len(ids) == 1, ids

@ray.remote(num_cpus=1)
def where():
    return ray.util.get_node_ip_address()

strategy = NodeAffinitySchedulingStrategy(node_id=ids[0], soft=False)
print("RAN-ON", ray.get(where.options(scheduling_strategy=strategy).remote(), timeout=120))
"#;

#[test]
fn apply_from_empty_builds_a_whole_cluster() {
    let _serial = serial();
    let lab = Lab::require();

    lab.seedcore(&["destroy", "--auto-approve"]).expect_ok();
    for k in LAB_HOSTS {
        assert_eq!(
            lab.containers_with_label(k, CLUSTER_LABEL),
            Vec::<String>::new(),
            "labhost{k} still has containers of the cluster after destroy"
        );
    }

    let plan = lab.seedcore(&["plan", "--detailed-exitcode"]);
    plan.expect_code(2);
    for (k, name) in BASE {
        assert_contains(&plan, &header(name, &lab.host_ip(k), "will be created"));
    }
    assert_contains(&plan, "Plan: 4 to add, 0 to change, 0 to destroy.");

    let apply = lab.seedcore(&["apply", "--auto-approve"]);
    apply.expect_ok();
    eprintln!("apply from empty: {:.1?}", apply.elapsed);
    assert_contains(
        &apply,
        "Apply complete! Nodes: 4 added, 0 changed, 0 destroyed.",
    );

    // Ray's own view, right after apply returned.
    let nodes = lab.ray_nodes(1, HEAD);
    let live = alive(&nodes);
    assert_eq!(
        live.len(),
        4,
        "Ray should list exactly 4 ALIVE nodes:\n{}",
        describe(&nodes)
    );
    for (k, name) in BASE {
        let n = live
            .iter()
            .find(|n| n.node_name == name)
            .unwrap_or_else(|| {
                panic!(
                    "Ray lists no ALIVE node named {name}:\n{}",
                    describe(&nodes)
                )
            });
        assert_eq!(n.node_ip, lab.host_ip(k), "{name}'s IP in Ray");
        assert_eq!(n.cpus, 1.0, "{name}'s CPUs in Ray");
        assert_eq!(n.is_head, name == HEAD, "{name}: is_head_node");
        let c = lab
            .container(k, name)
            .unwrap_or_else(|| panic!("Ray lists {name} but labhost{k} has no such container"));
        assert_eq!(c.status, "running", "{name} on labhost{k}");
        assert_eq!(
            c.cluster_label, "seedlab",
            "{name}'s io.seedcore.cluster label"
        );
    }

    // Work really runs on a remote host.
    let out = lab.docker_ok(1, &["exec", HEAD, "python3", "-c", PINNED_TASK]);
    assert!(
        out.lines()
            .any(|l| l.trim() == format!("RAN-ON {}", lab.host_ip(2))),
        "the task pinned to {REMOTE12} should run on {}; it printed:\n{out}",
        lab.host_ip(2)
    );

    // Converged: nothing to do, and a second apply touches nothing.
    let before = containers(&lab, &BASE);
    let t0 = Instant::now();
    let plan = lab.seedcore(&["plan", "--detailed-exitcode"]);
    plan.expect_code(0);
    assert_contains(&plan, "No changes.");
    eprintln!("converged plan: {:.1?}", t0.elapsed());
    let again = lab.seedcore(&["apply", "--auto-approve"]);
    again.expect_ok();
    eprintln!("no-op apply: {:.1?}", again.elapsed);
    assert_lacks(&again, "to add");
    let after = containers(&lab, &BASE);
    assert_eq!(
        before, after,
        "a second apply must not recreate or restart any container"
    );
    wait_alive_set(&lab, &base_names(), Duration::from_secs(5));
}

#[test]
fn drift_is_shown_with_causes_and_repaired() {
    let _serial = serial();
    let lab = Lab::require();
    converge(&lab);
    let ip2 = lab.host_ip(2);

    // Stopped by hand: the plan starts it again and says why.
    let id = lab.container(2, REMOTE12).unwrap().id;
    lab.docker_ok(2, &["stop", REMOTE12]);
    let plan = lab.seedcore(&["plan", "--detailed-exitcode"]);
    plan.expect_code(2);
    assert_contains(&plan, &header(REMOTE12, &ip2, "will be started"));
    assert_contains(&plan, "container exited (code");
    assert_contains(&plan, "Plan: 0 to add, 1 to change, 0 to destroy.");
    assert_eq!(
        plan_headers(&plan).len(),
        1,
        "only {REMOTE12} changes:\n{}",
        plan.stdout
    );
    lab.seedcore(&["apply", "--auto-approve"]).expect_ok();
    let c = lab.container(2, REMOTE12).unwrap();
    assert_eq!(
        (c.id.as_str(), c.status.as_str()),
        (id.as_str(), "running"),
        "started, not replaced"
    );
    wait_alive_set(&lab, &base_names(), Duration::from_secs(60));

    // A spec change: replace, with the field diff. (Planned only.)
    let plan = lab.seedcore(&[
        "plan",
        "--set",
        "workers.remote.cpus=2",
        "--detailed-exitcode",
    ]);
    plan.expect_code(2);
    for (k, name) in [(2, REMOTE12), (3, REMOTE13)] {
        assert_contains(&plan, &header(name, &lab.host_ip(k), "must be replaced"));
    }
    assert_contains(&plan, "(cpus 1 -> 2)");
    let minus = plan.stdout.lines().any(|l| {
        let t = l.trim_start();
        t.starts_with('-') && t[1..].trim_start().starts_with("cpus = ") && t.contains('1')
    });
    let plus = plan.stdout.lines().any(|l| {
        let t = l.trim_start();
        t.starts_with('+') && t[1..].trim_start().starts_with("cpus = ") && t.contains('2')
    });
    assert!(
        minus && plus,
        "the plan should show `- cpus = 1` and `+ cpus = 2`:\n{}",
        plan.stdout
    );
    assert_contains(&plan, &format!("Unchanged: {HEAD}, {LOCAL1}"));

    // A group removed from the file: its node goes, "not in configuration".
    let mut doc: toml_edit::DocumentMut = std::fs::read_to_string(lab.config_path())
        .unwrap()
        .parse()
        .unwrap();
    doc["workers"]
        .as_table_mut()
        .expect("[workers] table")
        .remove("local")
        .expect("[workers.local] in the base config");
    let tmp = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("seedcore-no-local.toml");
    std::fs::write(&tmp, doc.to_string()).unwrap();
    let reduced = |args: &[&str]| {
        support::lab::run_with_timeout(
            lab.seedcore_command_with(&tmp, args),
            Duration::from_secs(300),
        )
    };
    let plan = reduced(&["plan", "--detailed-exitcode"]);
    plan.expect_code(2);
    assert_contains(&plan, &header(LOCAL1, &lab.host_ip(1), "will be destroyed"));
    assert_contains(&plan, "not in configuration");
    assert_contains(&plan, "Plan: 0 to add, 0 to change, 1 to destroy.");
    let apply = reduced(&["apply", "--auto-approve"]);
    apply.expect_ok();
    assert!(
        lab.container(1, LOCAL1).is_none(),
        "{LOCAL1} should be removed"
    );
    let nodes = lab.ray_nodes(1, HEAD);
    assert!(
        !alive_names(&nodes).contains(LOCAL1),
        "Ray still lists {LOCAL1} ALIVE after its removal:\n{}",
        describe(&nodes)
    );
    assert_eq!(alive_names(&nodes).len(), 3, "{}", describe(&nodes));
    converge(&lab);

    // Removed by hand: the plan creates it again.
    lab.docker_ok(2, &["rm", "-f", REMOTE12]);
    let plan = lab.seedcore(&["plan", "--detailed-exitcode"]);
    plan.expect_code(2);
    assert_contains(&plan, &header(REMOTE12, &ip2, "will be created"));
    assert_contains(&plan, "Plan: 1 to add, 0 to change, 0 to destroy.");
    assert_eq!(
        plan_headers(&plan).len(),
        1,
        "only {REMOTE12} changes:\n{}",
        plan.stdout
    );
    lab.seedcore(&["apply", "--auto-approve"]).expect_ok();
    assert_eq!(lab.container(2, REMOTE12).unwrap().status, "running");
    wait_alive_set(&lab, &base_names(), Duration::from_secs(90));

    // Apply must not call the cluster whole before a new node has joined. Ray lists a
    // container removed by hand (SIGKILL) ALIVE for many seconds, so the new container's
    // node must be told apart from that stale entry. Labhost2 is kept from reaching the GCS
    // (port 6380 on the head host) for 15 s: its new node cannot join during that time,
    // so an apply that succeeds within it has taken the stale entry for the new node.
    // (Preflight would see the blocked route and refuse at once, so this apply skips it;
    // `lab_preflight` covers that.)
    let known = ray_ids(&lab.ray_nodes(1, HEAD));
    let rule = format!("OUTPUT -p tcp -d {} --dport 6380 -j DROP", lab.host_ip(1));
    let unblock = OnDrop(|| {
        let _ = lab.ssh(
            2,
            &format!("while iptables -D {rule} 2>/dev/null; do :; done"),
        );
    });
    lab.ssh_ok(2, &format!("iptables -I {rule}"));
    lab.docker_ok(2, &["rm", "-f", REMOTE12]);
    let (tx, rx) = mpsc::channel();
    let cmd = lab.seedcore_command(&["apply", "--auto-approve", "--skip-preflight"]);
    std::thread::spawn(move || {
        let _ = tx.send(support::lab::run_with_timeout(
            cmd,
            Duration::from_secs(300),
        ));
    });
    let early = rx.recv_timeout(Duration::from_secs(15)).ok();
    drop(unblock);
    let finished_while_blocked = early.is_some();
    let apply = match early {
        Some(run) => run,
        None => rx
            .recv_timeout(Duration::from_secs(300))
            .expect("apply did not finish"),
    };
    let mut problems = Vec::new();
    if apply.code() != Some(0) {
        problems.push(format!("apply exited {} (expected 0)", apply.status));
    }
    if finished_while_blocked {
        problems.push(format!(
            "apply reported success after {:.1?} while {REMOTE12}'s host could not reach the \
             GCS, so its new Ray node cannot have joined: the removed container's stale ALIVE \
             entry was taken for the new node",
            apply.elapsed
        ));
    } else if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert_whole_now(&lab, &base_names(), &[REMOTE12], &known)
    })) {
        problems.push(
            e.downcast_ref::<String>()
                .cloned()
                .unwrap_or_else(|| "assert_whole_now failed".to_string()),
        );
    }
    // Leave the cluster whole for the next test in any case.
    wait_alive_set(&lab, &base_names(), Duration::from_secs(120));
    assert!(
        problems.is_empty(),
        "{}\n--- apply stdout:\n{}\n--- apply stderr:\n{}",
        problems.join("\n"),
        apply.stdout,
        apply.stderr
    );
}

#[test]
fn changing_the_head_image_replaces_head_then_workers() {
    let _serial = serial();
    let lab = Lab::require();
    converge(&lab);
    let before = containers(&lab, &BASE);

    lab.docker_ok(1, &["tag", "seedcore-ray:lab", "seedcore-ray:lab-b"]);
    // The lab pushes images from this machine: the new name exists here too.
    let here = |args: &[&str]| {
        std::process::Command::new("docker")
            .args(args)
            .output()
            .expect("docker")
    };
    assert!(here(&["tag", "seedcore-ray:lab", "seedcore-ray:lab-b"])
        .status
        .success());
    let restore = OnDrop(|| {
        // Back to the base image (replaces everything again), then drop the extra tag.
        let run = lab.seedcore(&["apply", "--auto-approve"]);
        if run.code() != Some(0) {
            eprintln!("restoring the base cluster failed:\n{}", run.output());
        }
        let _ = lab.docker(1, &["rmi", "seedcore-ray:lab-b"]);
        let _ = here(&["rmi", "seedcore-ray:lab-b"]);
    });

    let apply = lab.seedcore(&[
        "apply",
        "--set",
        "head.image=seedcore-ray:lab-b",
        "--auto-approve",
    ]);
    apply.expect_ok();
    eprintln!("head image change: {:.1?}", apply.elapsed);
    assert_contains(&apply, &header(HEAD, &lab.host_ip(1), "must be replaced"));
    assert_contains(&apply, "(image seedcore-ray:lab -> seedcore-ray:lab-b)");
    for (k, name) in &BASE[1..] {
        assert_contains(&apply, &header(name, &lab.host_ip(*k), "must be replaced"));
    }
    assert_contains(&apply, "Plan: 4 to add, 0 to change, 4 to destroy.");

    // Every container is new; the head runs the new image.
    let after = containers(&lab, &BASE);
    for (_, name) in BASE {
        assert_ne!(
            before[name].0, after[name].0,
            "{name} should have been replaced"
        );
    }
    let image = lab.docker_ok(1, &["inspect", "-f", "{{.Config.Image}}", HEAD]);
    assert_eq!(image.trim(), "seedcore-ray:lab-b");

    // Whole, right after apply (a new head is a new GCS: no stale entries to fool us).
    let nodes = lab.ray_nodes(1, HEAD);
    assert_eq!(
        alive_names(&nodes),
        base_names().into_iter().map(String::from).collect(),
        "{}",
        describe(&nodes)
    );
    assert_eq!(alive(&nodes).len(), 4, "{}", describe(&nodes));

    // Order: old workers go before the old head; new workers start only once the new
    // head's GCS answers (they need nothing more to join).
    let head_remove = must_index(&apply, HEAD, "remove ...");
    let head_ready = must_index(&apply, HEAD, "wait-gcs done");
    for w in WORKERS {
        let removed = must_index(&apply, w, "remove done");
        assert!(
            removed < head_remove,
            "{w} must be removed before the head:\n{}",
            apply.stderr
        );
        let started = must_index(&apply, w, "start ...");
        assert!(
            started > head_ready,
            "{w} started before the head's GCS answered:\n{}",
            apply.stderr
        );
    }

    drop(restore);
    wait_alive_set(&lab, &base_names(), Duration::from_secs(60));
    let image = lab.docker_ok(1, &["inspect", "-f", "{{.Config.Image}}", HEAD]);
    assert_eq!(image.trim(), "seedcore-ray:lab");
}

#[test]
fn a_foreign_container_with_our_name_is_a_conflict_left_alone() {
    let _serial = serial();
    let lab = Lab::require();
    converge(&lab);

    let _foreign = foreign_container(&lab, 1, LOCAL2);
    let id = lab.container(1, LOCAL2).unwrap().id;

    let plan = lab.seedcore(&[
        "plan",
        "--set",
        "workers.local.count=2",
        "--set",
        "cluster.oversubscribe_cpus=true",
        "--detailed-exitcode",
    ]);
    plan.expect_code(1);
    assert_contains(&plan, "hold names this cluster needs but are not its own");
    assert_contains(&plan, &format!("`{LOCAL2}` on `{}`", lab.host_ip(1)));
    assert_contains(&plan, "no seedcore labels");
    assert_contains(&plan, &id[..12]);

    // apply refuses the same way and leaves it alone.
    let apply = lab.seedcore(&[
        "apply",
        "--set",
        "workers.local.count=2",
        "--set",
        "cluster.oversubscribe_cpus=true",
        "--auto-approve",
    ]);
    apply.expect_code(1);
    assert_contains(&apply, &format!("`{LOCAL2}` on `{}`", lab.host_ip(1)));
    let c = lab
        .container(1, LOCAL2)
        .expect("the foreign container is still there");
    assert_eq!((c.id.as_str(), c.status.as_str()), (id.as_str(), "running"));
    assert_eq!(c.restart_count, 0);

    // The base cluster (which does not need that name) is untouched by all this.
    lab.seedcore(&["plan", "--detailed-exitcode"])
        .expect_code(0);
}

// ------------------------------------------------------------------ issue 5

#[test]
fn status_reports_whole_dead_and_unreachable() {
    let _serial = serial();
    let lab = Lab::require();
    converge(&lab);

    let status = lab.seedcore(&["status"]);
    status.expect_ok();
    for name in base_names() {
        let row = status
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("status has no row for {name}:\n{}", status.stdout));
        assert!(
            row.contains("running") && row.contains("ALIVE"),
            "row: {row}"
        );
    }
    assert_contains(&status, "The cluster is whole.");
    assert_contains(&status, "RAY_ADDRESS=ray://10.77.0.11:10001");

    // docker kill: a manual stop for Docker, so `unless-stopped` does not restart it.
    let known = ray_ids(&lab.ray_nodes(1, HEAD));
    lab.docker_ok(2, &["kill", REMOTE12]);
    sleep(Duration::from_secs(5));
    let c = lab.container(2, REMOTE12).unwrap();
    assert_eq!(
        (c.status.as_str(), c.exit_code, c.restart_count),
        ("exited", 137, 0),
        "after `docker kill` (restart policy unless-stopped), Docker 20.10 leaves the container exited"
    );
    let status = lab.seedcore(&["status"]);
    status.expect_code(1);
    let row = status
        .stdout
        .lines()
        .find(|l| l.starts_with(&format!("{REMOTE12} ")))
        .unwrap_or_else(|| panic!("status has no row for {REMOTE12}:\n{}", status.stdout));
    assert!(row.contains("exited (137)"), "row: {row}");
    let verdict = status
        .output()
        .lines()
        .find(|l| l.starts_with("Not whole:"))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("status does not say what is missing:\n{}", status.output()));
    assert!(verdict.contains(REMOTE12), "{verdict}");
    for other in [HEAD, LOCAL1, REMOTE13] {
        assert!(!verdict.contains(other), "{verdict}");
    }
    let json = lab.seedcore(&["status", "--output", "json"]);
    json.expect_code(1);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("status --output json");
    assert_eq!(v["whole"], false);
    let bad: Vec<&str> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["ok"] != true)
        .map(|n| n["node"].as_str().unwrap())
        .collect();
    assert_eq!(bad, vec![REMOTE12]);

    // Repair, and wait until the restarted node (a new Ray node) has joined.
    lab.seedcore(&["apply", "--auto-approve"]).expect_ok();
    let start = Instant::now();
    loop {
        let nodes = lab.ray_nodes(1, HEAD);
        if alive(&nodes)
            .iter()
            .any(|n| n.node_name == REMOTE12 && !known.contains(&n.node_id))
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "{REMOTE12} did not rejoin Ray:\n{}",
            describe(&nodes)
        );
        sleep(Duration::from_secs(1));
    }
    wait_alive_set(&lab, &base_names(), Duration::from_secs(60));
    lab.seedcore(&["status"]).expect_ok();

    // A partitioned host: shown unreachable, the rest still reported, and no hang.
    let heal = OnDrop(|| {
        let _ = Command::new(lab.repo_root().join("tests/lab/lab"))
            .args(["heal", "3"])
            .status();
    });
    lab.lab_ok(&["partition", "3"]);
    let status =
        support::lab::run_with_timeout(lab.seedcore_command(&["status"]), Duration::from_secs(60));
    eprintln!("status with labhost3 partitioned: {:.1?}", status.elapsed);
    status.expect_code(1);
    assert!(
        status.elapsed < Duration::from_secs(40),
        "status took {:.1?} with one host partitioned",
        status.elapsed
    );
    let row = status
        .stdout
        .lines()
        .find(|l| l.starts_with(&format!("{REMOTE13} ")))
        .unwrap_or_else(|| panic!("status has no row for {REMOTE13}:\n{}", status.stdout));
    assert!(row.contains("unreachable"), "row: {row}");
    for name in [HEAD, LOCAL1, REMOTE12] {
        let row = status
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("status has no row for {name}:\n{}", status.stdout));
        assert!(
            row.contains("running"),
            "reachable hosts are still reported: {row}"
        );
    }
    assert_contains(&status, &lab.host_ip(3));
    // logs, too, shows what it can reach, and its exit code says a host was not.
    let logs = support::lab::run_with_timeout(
        lab.seedcore_command(&["logs", "workers", "--tail", "1"]),
        Duration::from_secs(60),
    );
    logs.expect_code(1);
    assert!(
        logs.stderr
            .contains(&format!("`{}` is unreachable", lab.host_ip(3))),
        "logs should name the unreachable host:\n{}",
        logs.output()
    );
    for name in [LOCAL1, REMOTE12] {
        assert!(
            logs.stdout
                .lines()
                .any(|l| l.starts_with(&format!("{name} "))),
            "logs should still show {name}, on a reachable host:\n{}",
            logs.output()
        );
    }
    drop(heal);

    // Healed: whole again (the worker on labhost3 may need a while to rejoin).
    let start = Instant::now();
    loop {
        let status = lab.seedcore(&["status"]);
        if status.code() == Some(0) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(150),
            "status did not return to 0 after heal:\n{}",
            status.output()
        );
        sleep(Duration::from_secs(3));
    }
    eprintln!("whole again {:.1?} after heal", start.elapsed());
    wait_alive_set(&lab, &base_names(), Duration::from_secs(30));
}

#[test]
fn logs_are_prefixed_and_follow_stops_on_sigint() {
    let _serial = serial();
    let lab = Lab::require();
    converge(&lab);

    let logs = lab.seedcore(&["logs", "workers", "--tail", "5"]);
    logs.expect_ok();
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for line in logs.stdout.lines() {
        let (prefix, _) = line
            .split_once(" | ")
            .unwrap_or_else(|| panic!("unprefixed log line: {line:?}\n{}", logs.stdout));
        let node = prefix.trim_end();
        assert!(
            WORKERS.contains(&node),
            "line from a non-worker {node:?}: {line}"
        );
        *per_node
            .entry(WORKERS.iter().find(|w| **w == node).unwrap())
            .or_default() += 1;
    }
    for w in WORKERS {
        let n = per_node.get(w).copied().unwrap_or(0);
        assert!(
            (1..=5).contains(&n),
            "{n} lines from {w} (want 1..=5):\n{}",
            logs.stdout
        );
    }

    // -f follows until SIGINT, then exits cleanly.
    let mut child = lab
        .seedcore_command(&["logs", "head", "-f"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn seedcore logs -f");
    let _reap = {
        let pid = child.id();
        OnDrop(move || {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        })
    };
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("no output from `logs head -f` within 30 s");
    assert!(first.starts_with(&format!("{HEAD} | ")), "{first:?}");
    sleep(Duration::from_secs(2));
    assert!(
        child.try_wait().unwrap().is_none(),
        "`logs head -f` exited by itself instead of following"
    );
    for line in rx.try_iter() {
        assert!(line.starts_with(&format!("{HEAD} | ")), "{line:?}");
    }
    let sent = Instant::now();
    let ok = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "`logs head -f` still running 5 s after SIGINT"
        );
        sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    eprintln!(
        "logs -f stopped {:.1?} after SIGINT ({status}); stderr: {err}",
        sent.elapsed()
    );
    assert_eq!(
        status.code(),
        Some(0),
        "`logs head -f` after SIGINT: {status}; stderr: {err}"
    );
}

#[test]
fn destroy_removes_only_labelled_containers() {
    let _serial = serial();
    let lab = Lab::require();
    converge(&lab);

    let bystander = "seedlab-bystander";
    let _guard = foreign_container(&lab, 1, bystander);
    let id = lab.container(1, bystander).unwrap().id;

    let destroy = lab.seedcore(&["destroy", "--auto-approve"]);
    destroy.expect_ok();
    eprintln!("destroy: {:.1?}", destroy.elapsed);
    for k in LAB_HOSTS {
        assert_eq!(
            lab.containers_with_label(k, CLUSTER_LABEL),
            Vec::<String>::new(),
            "labhost{k} still has containers labelled {CLUSTER_LABEL}"
        );
    }
    let c = lab
        .container(1, bystander)
        .expect("the unlabelled container survives destroy");
    assert_eq!((c.id.as_str(), c.status.as_str()), (id.as_str(), "running"));
    // Nothing runs a head afterwards: every node stops at once (the head's
    // removal starts before any worker's ends).
    let head_removing = must_index(&destroy, HEAD, "remove ...");
    for w in WORKERS {
        assert!(
            head_removing < must_index(&destroy, w, "remove done"),
            "{w} and the head must stop at once:\n{}",
            destroy.stderr
        );
    }
    // Nothing left to destroy.
    lab.seedcore(&["destroy", "--auto-approve"]).expect_ok();

    converge(&lab);
}

#[test]
fn scale_a_group_up_and_down() {
    let _serial = serial();
    let lab = Lab::require();
    converge(&lab);
    let before = containers(&lab, &BASE);

    let up = lab.seedcore(&[
        "apply",
        "--set",
        "workers.local.count=3",
        "--set",
        "cluster.oversubscribe_cpus=true",
        "--auto-approve",
    ]);
    up.expect_ok();
    eprintln!("scale up 1 -> 3: {:.1?}", up.elapsed);
    assert_contains(&up, "Plan: 2 to add, 0 to change, 0 to destroy.");
    let six: Vec<&str> = base_names().into_iter().chain([LOCAL2, LOCAL3]).collect();
    let nodes = lab.ray_nodes(1, HEAD);
    assert_eq!(
        alive_names(&nodes),
        six.iter().map(|s| s.to_string()).collect(),
        "Ray right after scaling up:\n{}",
        describe(&nodes)
    );
    assert_eq!(alive(&nodes).len(), 6, "{}", describe(&nodes));
    for n in alive(&nodes) {
        assert_eq!(n.cpus, 1.0, "{}", n.node_name);
    }
    assert_eq!(
        containers(&lab, &BASE),
        before,
        "existing nodes must not be touched"
    );

    let down = lab.seedcore(&["apply", "--auto-approve"]);
    down.expect_ok();
    eprintln!("scale down 3 -> 1: {:.1?}", down.elapsed);
    assert_contains(&down, "Plan: 0 to add, 0 to change, 2 to destroy.");
    assert_eq!(
        plan_headers(&down),
        vec![
            header(LOCAL3, &lab.host_ip(1), "will be destroyed"),
            header(LOCAL2, &lab.host_ip(1), "will be destroyed"),
        ],
        "the plan removes the highest numbers only:\n{}",
        down.stdout
    );
    // Drained (left Ray) before their containers went.
    for w in [LOCAL2, LOCAL3] {
        let drained = must_index(&down, w, "drain done");
        let removed = must_index(&down, w, "remove ...");
        assert!(
            drained < removed,
            "{w}: drain must finish before removal:\n{}",
            down.stderr
        );
        assert!(lab.container(1, w).is_none(), "{w} should be gone");
    }
    let nodes = lab.ray_nodes(1, HEAD);
    assert_eq!(
        alive_names(&nodes),
        base_names().into_iter().map(String::from).collect(),
        "Ray right after scaling down:\n{}",
        describe(&nodes)
    );
    for w in [LOCAL2, LOCAL3] {
        assert!(
            nodes.iter().any(|n| n.node_name == w && n.state == "DEAD"),
            "{w} should be listed DEAD:\n{}",
            describe(&nodes)
        );
    }
    assert_eq!(
        containers(&lab, &BASE),
        before,
        "existing nodes must not be touched"
    );
}

#[test]
fn adding_a_remote_host_joins_it() {
    let _serial = serial();
    let lab = Lab::require();
    converge(&lab);
    let ip3 = lab.host_ip(3);

    let shrink = lab.seedcore(&[
        "apply",
        "--set",
        "workers.remote.hosts=10.77.0.12",
        "--auto-approve",
    ]);
    shrink.expect_ok();
    assert_contains(&shrink, &header(REMOTE13, &ip3, "will be destroyed"));
    assert_contains(&shrink, "Plan: 0 to add, 0 to change, 1 to destroy.");
    assert!(
        lab.container(3, REMOTE13).is_none(),
        "{REMOTE13} should be gone from labhost3"
    );
    wait_alive_set(&lab, &[HEAD, LOCAL1, REMOTE12], Duration::from_secs(10));
    let before = containers(&lab, &[(1, HEAD), (1, LOCAL1), (2, REMOTE12)]);

    // The base file lists labhost3 again: exactly one create.
    let plan = lab.seedcore(&["plan", "--detailed-exitcode"]);
    plan.expect_code(2);
    assert_eq!(
        plan_headers(&plan),
        vec![header(REMOTE13, &ip3, "will be created")],
        "{}",
        plan.stdout
    );
    assert_contains(&plan, "Plan: 1 to add, 0 to change, 0 to destroy.");
    assert_contains(&plan, &format!("Unchanged: {HEAD}, {LOCAL1}, {REMOTE12}"));
    let apply = lab.seedcore(&["apply", "--auto-approve"]);
    apply.expect_ok();
    let nodes = lab.ray_nodes(1, HEAD);
    let joined = alive(&nodes)
        .into_iter()
        .find(|n| n.node_name == REMOTE13)
        .unwrap_or_else(|| {
            panic!(
                "{REMOTE13} is not ALIVE right after apply:\n{}",
                describe(&nodes)
            )
        });
    assert_eq!(joined.node_ip, ip3);
    assert_eq!(
        containers(&lab, &[(1, HEAD), (1, LOCAL1), (2, REMOTE12)]),
        before
    );
    wait_alive_set(&lab, &base_names(), Duration::from_secs(10));

    // HEAD_IP_OVERRIDE equal to head.host: named in the header, changes nothing.
    let mut cmd = lab.seedcore_command(&["plan", "--detailed-exitcode"]);
    cmd.env("HEAD_IP_OVERRIDE", lab.host_ip(1));
    let plan = support::lab::run_with_timeout(cmd, Duration::from_secs(120));
    plan.expect_code(0);
    assert_contains(&plan, "Overrides in force:");
    assert_contains(&plan, "head.host = 10.77.0.11 (from $HEAD_IP_OVERRIDE)");
    assert_contains(&plan, "No changes.");
}

/// The hosts labhost`k` remembers for the cluster (sorted), or `None` without a list.
fn remembered(lab: &Lab, k: usize) -> Option<Vec<String>> {
    let out = lab.ssh(k, "cat ~/.seedcore/seedlab/*.hosts");
    if !out.status.success() {
        return None;
    }
    let mut hosts: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    hosts.sort();
    Some(hosts)
}

#[test]
fn a_lost_list_of_hosts_is_written_again_and_one_that_cannot_be_kept_is_named() {
    let _serial = serial();
    let lab = Lab::require();
    converge(&lab);
    let all: Vec<String> = (1..=3).map(|k| lab.host_ip(k)).collect();
    for k in 1..=3 {
        assert_eq!(remembered(&lab, k).as_ref(), Some(&all), "labhost{k}");
    }
    // labhost1 lost its list; labhost2 cannot keep one (a file where its
    // directory goes).
    lab.ssh_ok(1, "rm -f ~/.seedcore/seedlab/*.hosts");
    lab.ssh_ok(
        2,
        "rm -rf ~/.seedcore/seedlab && echo x > ~/.seedcore/seedlab",
    );
    let _restore = OnDrop(|| {
        let _ = lab.ssh(2, "rm -f ~/.seedcore/seedlab");
    });
    let apply = lab.seedcore(&["apply", "--auto-approve"]);
    apply.expect_ok();
    assert_contains(&apply, "No changes.");
    assert_eq!(remembered(&lab, 1).as_ref(), Some(&all), "labhost1 again");
    assert_contains(
        &apply,
        "warning: `10.77.0.12` could not keep the list of this cluster's hosts (`~/.seedcore/seedlab/",
    );
    assert_contains(
        &apply,
        "hint: run `seedcore apply` again once `10.77.0.12` accepts it",
    );
    assert_lacks(&apply, "warning: `10.77.0.11` could not keep");

    // Once it can, the next apply writes it, and the one after is silent.
    lab.ssh_ok(2, "rm -f ~/.seedcore/seedlab");
    let apply = lab.seedcore(&["apply", "--auto-approve"]);
    apply.expect_ok();
    assert_lacks(&apply, "could not keep");
    assert_eq!(remembered(&lab, 2).as_ref(), Some(&all), "labhost2 again");

    // A host dropped from the configuration is found through those lists.
    let shrink = lab.seedcore(&[
        "plan",
        "--set",
        "workers.remote.hosts=10.77.0.12",
        "--detailed-exitcode",
    ]);
    shrink.expect_code(2);
    assert_contains(&shrink, &header(REMOTE13, &all[2], "will be destroyed"));
}

#[test]
fn restart_replaces_the_named_node() {
    let _serial = serial();
    let lab = Lab::require();
    converge(&lab);
    let before = containers(&lab, &BASE);
    let known = ray_ids(&lab.ray_nodes(1, HEAD));

    let restart = lab.seedcore(&["restart", REMOTE12, "--auto-approve"]);
    restart.expect_ok();
    eprintln!("restart {REMOTE12}: {:.1?}", restart.elapsed);
    assert_contains(
        &restart,
        &header(REMOTE12, &lab.host_ip(2), "must be replaced"),
    );
    assert_contains(&restart, "Plan: 1 to add, 0 to change, 1 to destroy.");
    let after = containers(&lab, &BASE);
    for (_, name) in BASE {
        if name == REMOTE12 {
            assert_ne!(
                before[name].0, after[name].0,
                "{name} should have a new container"
            );
        } else {
            assert_eq!(before[name], after[name], "{name} must not be touched");
        }
    }
    assert_whole_now(&lab, &base_names(), &[REMOTE12], &known);
    wait_alive_set(&lab, &base_names(), Duration::from_secs(30));
    lab.seedcore(&["plan", "--detailed-exitcode"])
        .expect_code(0);

    let env = lab.seedcore(&["env"]);
    env.expect_ok();
    assert!(
        env.stdout
            .lines()
            .any(|l| l == "export RAY_ADDRESS=ray://10.77.0.11:10001"),
        "{}",
        env.stdout
    );
}
