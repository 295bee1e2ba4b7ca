//! Stable identity against the real lab: the edits a reviewer makes to a running cluster
//! touch only the nodes they concern, written ports are exact, another cluster of the same
//! name is noted and never touched, a saved plan runs exactly its steps or refuses when a
//! host changed, and a container with forged labels is never acted on. Every check is made
//! against what the lab hosts' dockerd (`docker inspect`, `ss`) and Ray itself report.
//!
//! The tests drive the cluster `seedlab` of `.lab/seedcore.toml`: the head and
//! `seedlab-ray-local-10.77.0.11-1` on labhost1, `seedlab-ray-remote-10.77.0.12-1` on
//! labhost2 and `seedlab-ray-remote-10.77.0.13-1` on labhost3. They are serialized by a
//! process-wide lock; each begins by applying the base configuration (a no-op of about a
//! second when the cluster has converged) and leaves it applied, with drop guards for
//! whatever it injected (a second cluster, a stopped worker, an untagged image, a forged
//! container).
//!
//! Run: `cargo test --test lab_identity -- --nocapture --test-threads=1` (after
//! `tests/lab/lab up`). Without the lab, every test fails. Do not run it at the same time
//! as the other lab suites: they drive the same cluster.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::thread::sleep;
use std::time::{Duration, Instant};

use support::lab::{Lab, OnDrop, RayNode, Run};

const IMAGE: &str = "seedcore-ray:lab";
const HEAD: &str = "seedlab-ray-head";
const LOCAL1: &str = "seedlab-ray-local-10.77.0.11-1";
const REMOTE12: &str = "seedlab-ray-remote-10.77.0.12-1";
const REMOTE13: &str = "seedlab-ray-remote-10.77.0.13-1";
/// The base configuration's nodes with the lab host each runs on.
const BASE: [(usize, &str); 4] = [(1, HEAD), (1, LOCAL1), (2, REMOTE12), (3, REMOTE13)];

// ------------------------------------------------------------------ shared helpers

/// One test at a time: they all drive the same cluster.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn base_names() -> Vec<&'static str> {
    BASE.iter().map(|(_, n)| *n).collect()
}

fn alive_names(nodes: &[RayNode]) -> BTreeSet<String> {
    nodes
        .iter()
        .filter(|n| n.alive())
        .map(|n| n.node_name.clone())
        .collect()
}

fn describe(nodes: &[RayNode]) -> String {
    let mut lines: Vec<String> = nodes
        .iter()
        .map(|n| {
            format!(
                "  {:<34} {:<6} {:<11} cpu={} id={}",
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

/// Polls Ray (from the head container `seedlab-ray-head` on labhost`k_head`) until the set
/// of ALIVE node names is exactly `expected`; panics with the last answer after `timeout`.
fn wait_alive_set(lab: &Lab, k_head: usize, expected: &[&str], timeout: Duration) {
    let want: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
    let start = Instant::now();
    loop {
        let last = lab.try_ray_nodes(k_head, HEAD);
        if let Ok(nodes) = &last {
            if alive_names(nodes) == want {
                return;
            }
        }
        if start.elapsed() > timeout {
            let shown = match &last {
                Ok(nodes) => describe(nodes),
                Err(e) => e.clone(),
            };
            panic!(
                "Ray (head on labhost{k_head}) did not list exactly {want:?} ALIVE within \
                 {timeout:?}; last answer:\n{shown}"
            );
        }
        sleep(Duration::from_secs(1));
    }
}

/// Ray of the base cluster (head on labhost1) lists exactly `expected` ALIVE. Apply has
/// already waited for its nodes; the short wait only lets removed nodes' entries turn DEAD.
fn assert_ray_lists(lab: &Lab, expected: &[&str]) {
    wait_alive_set(lab, 1, expected, Duration::from_secs(30));
}

/// The base configuration applied and Ray listing exactly its 4 nodes ALIVE.
fn converge(lab: &Lab) {
    lab.seedcore(&["apply", "--auto-approve"]).expect_ok();
    wait_alive_set(lab, 1, &base_names(), Duration::from_secs(90));
}

/// Container ID and start time of each named node, all running (panics when one is
/// missing or not running).
fn snapshot(lab: &Lab, nodes: &[(usize, &str)]) -> BTreeMap<String, (String, String)> {
    nodes
        .iter()
        .map(|(k, name)| {
            let c = lab
                .container(*k, name)
                .unwrap_or_else(|| panic!("no container {name} on labhost{k}"));
            assert_eq!(c.status, "running", "{name} on labhost{k}: {c:?}");
            (name.to_string(), (c.id, c.started_at))
        })
        .collect()
}

/// The base cluster's containers are the very ones of `before`: same IDs, never restarted.
fn assert_untouched(lab: &Lab, before: &BTreeMap<String, (String, String)>, what: &str) {
    let nodes: Vec<(usize, &str)> = BASE
        .iter()
        .filter(|(_, n)| before.contains_key(*n))
        .copied()
        .collect();
    let after = snapshot(lab, &nodes);
    for (name, was) in before {
        assert_eq!(
            after.get(name),
            Some(was),
            "{what}: {name} must keep its container (ID, start time)"
        );
    }
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

/// Headers of every node block in a text plan (`# NODE on HOST VERB...`), as a set.
fn plan_headers(run: &Run) -> BTreeSet<String> {
    run.stdout
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("# seedlab-"))
        .map(str::to_string)
        .collect()
}

/// Panics unless the plan's node blocks are exactly `expected` (node, lab host, verb).
fn assert_blocks(lab: &Lab, run: &Run, expected: &[(&str, usize, &str)]) {
    let want: BTreeSet<String> = expected
        .iter()
        .map(|(node, k, verb)| header(node, &lab.host_ip(*k), verb))
        .collect();
    assert_eq!(
        plan_headers(run),
        want,
        "`{}`: the plan should change exactly these nodes:\n{}",
        run.what,
        run.stdout
    );
}

/// The nodes of the plan's `Unchanged: A, B, ...` line.
fn unchanged(run: &Run) -> BTreeSet<String> {
    run.stdout
        .lines()
        .find_map(|l| l.strip_prefix("Unchanged: "))
        .unwrap_or_else(|| {
            panic!(
                "`{}` prints no `Unchanged:` line:\n{}",
                run.what, run.stdout
            )
        })
        .split(", ")
        .map(|s| s.trim().to_string())
        .collect()
}

/// The identity in the plan's (or status's) header ``Cluster `seedlab` (id `ID`)``.
fn cluster_id(run: &Run) -> String {
    let rest = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("Cluster `seedlab` (id `"))
        .unwrap_or_else(|| {
            panic!(
                "`{}` names no cluster ``Cluster `seedlab` (id `...`)``:\n{}",
                run.what, run.stdout
            )
        });
    rest.split('`').next().unwrap().to_string()
}

/// The note a plan prints about another cluster of the name `seedlab`.
fn other_cluster_note(id: &str, head_ip: &str, nodes: usize, hosts: &[String]) -> String {
    let hosts: Vec<String> = hosts.iter().map(|h| format!("`{h}`")).collect();
    format!(
        "Another cluster `seedlab` (id `{id}`) with its head on `{head_ip}` runs {nodes} node(s) \
         on {}: seedcore leaves them alone.",
        hosts.join(", ")
    )
}

/// A scratch directory under the target directory, fresh per test.
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("lab-identity-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `--set` arguments for `seedcore ARGS...`: `sets` become `--set KEY=VALUE` pairs.
fn with_sets<'a>(args: &[&'a str], sets: &[&'a str]) -> Vec<&'a str> {
    let mut out: Vec<&str> = args.to_vec();
    for s in sets {
        out.push("--set");
        out.push(s);
    }
    out
}

/// (verb, node) of each step apply reports as done in its progress lines
/// (`[  11.6s] NODE: VERB done in 0.2s`; a pull is keyed by its host:
/// `[   0.0s] HOST (pull): pull done in 3.1s`). Panics on a failed or skipped step.
fn executed_steps(run: &Run) -> BTreeSet<(String, String)> {
    let mut done = BTreeSet::new();
    for line in run.stderr.lines() {
        let Some(rest) = line
            .trim_start()
            .strip_prefix('[')
            .and_then(|l| l.split_once("] "))
            .map(|(_, r)| r)
        else {
            continue;
        };
        let Some((key, what)) = rest.split_once(": ") else {
            continue;
        };
        let Some((verb, outcome)) = what.split_once(' ') else {
            continue;
        };
        assert!(
            !outcome.starts_with("FAILED") && !outcome.starts_with("skipped"),
            "`{}`: a step did not run: {line}\n{}",
            run.what,
            run.stderr
        );
        if outcome.starts_with("done in ") {
            let node = key.strip_suffix(" (pull)").unwrap_or(key);
            done.insert((verb.to_string(), node.to_string()));
        }
    }
    done
}

/// A saved plan file, parsed.
fn read_plan(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read the saved plan {}: {e}", path.display()));
    let v: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON ({e}):\n{text}", path.display()));
    assert_eq!(v["kind"], "seedcore-plan", "{}", path.display());
    assert_eq!(v["format_version"], "1.1", "{}", path.display());
    v
}

/// (verb, node) of each step in a saved plan's `plan.graph.steps` (a pull: its host).
fn planned_steps(plan: &serde_json::Value) -> BTreeSet<(String, String)> {
    plan["plan"]["graph"]["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("no plan.graph.steps in the saved plan:\n{plan:#}"))
        .iter()
        .map(|s| {
            let verb = s["step"].as_str().expect("each step has a `step`");
            let node = s["node"]
                .as_str()
                .or_else(|| s["host"].as_str())
                .expect("each step has a `node` or a `host`");
            (verb.to_string(), node.to_string())
        })
        .collect()
}

fn assert_mode_0600(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode,
        0o600,
        "the saved plan {} must be private (mode 0600), it is {mode:o}",
        path.display()
    );
}

// ------------------------------------------------------------------ a. the edits table

#[test]
fn edits_to_the_live_cluster_touch_only_the_nodes_they_concern() {
    let _serial = serial();
    let lab = Lab::require();
    converge(&lab);
    let before = snapshot(&lab, &BASE);
    let all_base: BTreeSet<String> = base_names().into_iter().map(String::from).collect();

    // Two groups writing the same port on one host: refused before anything is touched,
    // naming both claimants and a port that is free there.
    let clash = [
        "workers.aaa.hosts=10.77.0.11",
        "workers.aaa.object_manager_port=9301",
        "workers.local.object_manager_port=9301",
        "cluster.oversubscribe_cpus=true",
    ];
    let plan = lab.seedcore(&with_sets(&["plan"], &clash));
    plan.expect_code(1);
    assert_contains(&plan, "port 9301 on `10.77.0.11` is claimed twice");
    assert_contains(
        &plan,
        "`seedlab-ray-aaa-10.77.0.11-1` (object manager, `workers.aaa.object_manager_port`)",
    );
    assert_contains(
        &plan,
        &format!("`{LOCAL1}` (object manager, `workers.local.object_manager_port`)"),
    );
    let free: u16 = plan
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("hint: port "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no `hint: port N is free` in:\n{}", plan.output()));
    assert_contains(&plan, &format!("port {free} is free on `10.77.0.11`"));
    assert_ne!(free, 9301);
    assert!(
        !lab.listening(1, free),
        "the port seedcore calls free, {free}, is in use on labhost1"
    );
    let apply = lab.seedcore(&with_sets(&["apply", "--auto-approve"], &clash));
    apply.expect_code(1);
    assert_untouched(&lab, &before, "a refused plan");

    // A host added to a group: only that host's node is created.
    let local12 = "seedlab-ray-local-10.77.0.12-1";
    let add = lab.seedcore(&[
        "apply",
        "--set",
        "workers.local.hosts=10.77.0.11,10.77.0.12",
        "--auto-approve",
    ]);
    add.expect_ok();
    eprintln!("add a host to a group: {:.1?}", add.elapsed);
    assert_blocks(&lab, &add, &[(local12, 2, "will be created")]);
    assert_contains(&add, "Plan: 1 to add, 0 to change, 0 to destroy.");
    assert_eq!(unchanged(&add), all_base, "{}", add.stdout);
    assert_untouched(&lab, &before, "adding labhost2 to `local`");
    assert_eq!(
        lab.container(2, local12).map(|c| c.status),
        Some("running".to_string()),
        "{local12} should run on labhost2"
    );
    assert_ray_lists(&lab, &[HEAD, LOCAL1, REMOTE12, REMOTE13, local12]);

    // The host removed again: only that host's node goes.
    let remove = lab.seedcore(&["apply", "--auto-approve"]);
    remove.expect_ok();
    eprintln!("remove a host from a group: {:.1?}", remove.elapsed);
    assert_blocks(&lab, &remove, &[(local12, 2, "will be destroyed")]);
    assert_contains(&remove, "Plan: 0 to add, 0 to change, 1 to destroy.");
    assert!(
        lab.container(2, local12).is_none(),
        "{local12} should be gone"
    );
    assert_untouched(&lab, &before, "removing labhost2 from `local`");
    assert_ray_lists(&lab, &base_names());

    // count 1 -> 2: the next index on each host of the group.
    let (r12b, r13b) = (
        "seedlab-ray-remote-10.77.0.12-2",
        "seedlab-ray-remote-10.77.0.13-2",
    );
    let up = lab.seedcore(&["apply", "--set", "workers.remote.count=2", "--auto-approve"]);
    up.expect_ok();
    eprintln!("remote count 1 -> 2: {:.1?}", up.elapsed);
    assert_blocks(
        &lab,
        &up,
        &[(r12b, 2, "will be created"), (r13b, 3, "will be created")],
    );
    assert_contains(&up, "Plan: 2 to add, 0 to change, 0 to destroy.");
    assert_untouched(&lab, &before, "scaling `remote` up");
    for (k, name) in [(2, r12b), (3, r13b)] {
        assert_eq!(
            lab.container(k, name).map(|c| c.status),
            Some("running".to_string()),
            "{name} should run on labhost{k}"
        );
    }
    assert_ray_lists(&lab, &[HEAD, LOCAL1, REMOTE12, REMOTE13, r12b, r13b]);

    // count 2 -> 1: the highest index on each host goes.
    let down = lab.seedcore(&["apply", "--auto-approve"]);
    down.expect_ok();
    eprintln!("remote count 2 -> 1: {:.1?}", down.elapsed);
    assert_blocks(
        &lab,
        &down,
        &[
            (r12b, 2, "will be destroyed"),
            (r13b, 3, "will be destroyed"),
        ],
    );
    assert_contains(&down, "Plan: 0 to add, 0 to change, 2 to destroy.");
    for (k, name) in [(2, r12b), (3, r13b)] {
        assert!(lab.container(k, name).is_none(), "{name} should be gone");
    }
    assert_untouched(&lab, &before, "scaling `remote` down");
    assert_ray_lists(&lab, &base_names());

    // A new group on the head's host, sorting before `local`: its ports are chosen around
    // the running nodes', which keep theirs (so nothing is replaced).
    let aaa = "seedlab-ray-aaa-10.77.0.11-1";
    let group = lab.seedcore(&[
        "apply",
        "--set",
        "workers.aaa.hosts=10.77.0.11",
        "--set",
        "workers.aaa.worker_ports_per_node=7",
        "--set",
        "cluster.oversubscribe_cpus=true",
        "--auto-approve",
    ]);
    group.expect_ok();
    eprintln!("a new group on the head's host: {:.1?}", group.elapsed);
    assert_blocks(&lab, &group, &[(aaa, 1, "will be created")]);
    assert_contains(&group, "Plan: 1 to add, 0 to change, 0 to destroy.");
    assert_eq!(unchanged(&group), all_base, "{}", group.stdout);
    assert_untouched(&lab, &before, "adding the group `aaa`");
    assert_ray_lists(&lab, &[HEAD, LOCAL1, REMOTE12, REMOTE13, aaa]);
    let ungroup = lab.seedcore(&["apply", "--auto-approve"]);
    ungroup.expect_ok();
    assert_blocks(&lab, &ungroup, &[(aaa, 1, "will be destroyed")]);
    assert_contains(&ungroup, "Plan: 0 to add, 0 to change, 1 to destroy.");
    assert_untouched(&lab, &before, "removing the group `aaa`");
    assert_ray_lists(&lab, &base_names());

    // A port written in a group: exactly that port on the group's first node on each host.
    // Seedcore chose 8076 for them; the guard writes it back (written ports win over kept
    // ones) so the base cluster runs on its usual ports afterwards.
    for (k, name) in [(2, REMOTE12), (3, REMOTE13)] {
        let cmd = lab.container_command(k, name);
        assert!(
            cmd.iter().any(|a| a == "--object-manager-port=8076"),
            "the base cluster's {name} should run on the port seedcore chose, 8076: {cmd:?}"
        );
    }
    let restore = OnDrop(|| {
        let run = lab.seedcore(&[
            "apply",
            "--set",
            "workers.remote.object_manager_port=8076",
            "--auto-approve",
        ]);
        if run.code() != Some(0) {
            eprintln!(
                "restoring the remote workers' port 8076 failed:\n{}",
                run.output()
            );
        }
    });
    let port = lab.seedcore(&[
        "apply",
        "--set",
        "workers.remote.object_manager_port=9301",
        "--auto-approve",
    ]);
    port.expect_ok();
    eprintln!("a written port: {:.1?}", port.elapsed);
    assert_blocks(
        &lab,
        &port,
        &[
            (REMOTE12, 2, "must be replaced"),
            (REMOTE13, 3, "must be replaced"),
        ],
    );
    assert_contains(&port, "(--object-manager-port 8076 -> 9301)");
    assert_contains(&port, "Plan: 2 to add, 0 to change, 2 to destroy.");
    let kept: BTreeMap<String, (String, String)> = before
        .iter()
        .filter(|(n, _)| *n == HEAD || *n == LOCAL1)
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    assert_untouched(&lab, &kept, "writing a port of `remote`");
    for (k, name) in [(2, REMOTE12), (3, REMOTE13)] {
        let cmd = lab.container_command(k, name);
        let om: Vec<&String> = cmd
            .iter()
            .filter(|a| a.starts_with("--object-manager-port="))
            .collect();
        assert_eq!(
            om,
            vec!["--object-manager-port=9301"],
            "{name}'s command on labhost{k}: {cmd:?}"
        );
        assert!(
            lab.listening(k, 9301),
            "nothing listens on 9301 on labhost{k}, where {name} runs"
        );
        assert_ne!(
            lab.container(k, name).unwrap().id,
            before[name].0,
            "{name} should have a new container"
        );
    }
    assert_ray_lists(&lab, &base_names());
    // Unwritten again, the port is kept: a running node keeps the ports it records.
    let plan = lab.seedcore(&["plan", "--detailed-exitcode"]);
    plan.expect_code(0);
    assert_contains(&plan, "No changes.");
    drop(restore);
    for (k, name) in [(2, REMOTE12), (3, REMOTE13)] {
        let cmd = lab.container_command(k, name);
        assert!(
            cmd.iter().any(|a| a == "--object-manager-port=8076"),
            "{name} should run on 8076 again: {cmd:?}"
        );
    }
    lab.seedcore(&["plan", "--detailed-exitcode"])
        .expect_code(0);
    assert_ray_lists(&lab, &base_names());
}

// ------------------------------------------------------------------ b. same name, another cluster

/// Cluster B: also named `seedlab`, head on labhost3 with its own head ports, a worker
/// group `other` on labhost2 with written ports, agent ports apart from A's.
const CLUSTER_B: &str = r#"
[head]
host = "10.77.0.13"
cpus = 1
shm_size = "512m"
gcs_port = 6390
client_server_port = 10011
dashboard_port = 8275
serve_port = 8010
object_manager_port = 9400
node_manager_port = 9401
worker_ports = "10200-10299"

[workers.other]
hosts = ["10.77.0.12"]
count = 1
cpus = 1
object_manager_port = 9410
node_manager_port = 9411
worker_ports = "12100-12120"
"#;
const B_WORKER: &str = "seedlab-ray-other-10.77.0.12-1";

/// `.lab/seedcore.toml`'s `[cluster]` and `[ssh]` with B's head and workers, written to
/// `dir/b.toml`. Seedcore chooses agent ports among its own nodes only, so B takes them
/// from another range than A's default 52365-52464 (both have nodes on labhost2 and 3).
fn write_cluster_b(lab: &Lab, dir: &Path) -> PathBuf {
    let mut doc: toml_edit::DocumentMut = std::fs::read_to_string(lab.config_path())
        .unwrap()
        .parse()
        .unwrap();
    doc.remove("head").expect("[head] in the base config");
    doc.remove("workers").expect("[workers] in the base config");
    doc["cluster"]["agent_ports"] = toml_edit::value("53000-53099");
    let path = dir.join("b.toml");
    std::fs::write(&path, format!("{doc}{CLUSTER_B}")).unwrap();
    path
}

#[test]
fn another_cluster_of_the_same_name_is_noted_and_never_touched() {
    let _serial = serial();
    let lab = Lab::require();
    converge(&lab);
    let dir = scratch("cluster-b");
    let b = write_cluster_b(&lab, &dir);
    let (ip2, ip3) = (lab.host_ip(2), lab.host_ip(3));
    let shared = [ip2.clone(), ip3.clone()];

    let plan_a = lab.seedcore(&["plan", "--detailed-exitcode"]);
    plan_a.expect_code(0);
    let id_a = cluster_id(&plan_a);
    let label_a = lab.docker_ok(
        1,
        &[
            "inspect",
            "-f",
            "{{index .Config.Labels \"io.seedcore.cluster-id\"}}",
            HEAD,
        ],
    );
    assert_eq!(label_a.trim(), id_a, "A's head carries A's identity label");
    let before = snapshot(&lab, &BASE);

    // B's plan: another identity, and A is named as another cluster.
    let plan_b = lab.seedcore_with(&b, &["plan", "--detailed-exitcode"]);
    plan_b.expect_code(2);
    let id_b = cluster_id(&plan_b);
    assert_ne!(id_a, id_b, "two heads, two identities");
    assert_contains(
        &plan_b,
        &other_cluster_note(&id_a, "10.77.0.11", 2, &shared),
    );
    assert_blocks(
        &lab,
        &plan_b,
        &[
            (HEAD, 3, "will be created"),
            (B_WORKER, 2, "will be created"),
        ],
    );
    assert_contains(&plan_b, "Plan: 2 to add, 0 to change, 0 to destroy.");

    let destroy_b = OnDrop(|| {
        let run = lab.seedcore_with(&b, &["destroy", "--auto-approve"]);
        if run.code() != Some(0) {
            eprintln!("destroying cluster B failed:\n{}", run.output());
        }
        // What B's applies left in the hosts' memory.
        for k in [2, 3] {
            let _ = lab.ssh(k, &format!("rm -f ~/.seedcore/seedlab/{id_b}.hosts"));
        }
    });
    let apply_b = lab.seedcore_with(&b, &["apply", "--auto-approve"]);
    apply_b.expect_ok();
    eprintln!("apply cluster B: {:.1?}", apply_b.elapsed);
    wait_alive_set(&lab, 3, &[HEAD, B_WORKER], Duration::from_secs(30));
    let label_filter = format!("io.seedcore.cluster-id={id_b}");
    assert_eq!(
        lab.containers_with_label(3, &label_filter),
        vec![HEAD.to_string()],
        "labhost3 runs B's head"
    );
    assert_eq!(
        lab.containers_with_label(2, &label_filter),
        vec![B_WORKER.to_string()],
        "labhost2 runs B's worker"
    );
    let b_nodes = snapshot_b(&lab);
    // A is as it was, and its Ray knows nothing of B.
    assert_untouched(&lab, &before, "applying cluster B");
    assert_ray_lists(&lab, &base_names());
    // Each host remembers each cluster under its own identity.
    for k in [2, 3] {
        let list = lab.ssh_ok(k, &format!("cat ~/.seedcore/seedlab/{id_b}.hosts"));
        for ip in &shared {
            assert!(
                list.lines().any(|l| l.trim() == ip),
                "labhost{k}'s memory of B should list {ip}:\n{list}"
            );
        }
        let list = lab.ssh_ok(k, &format!("cat ~/.seedcore/seedlab/{id_a}.hosts"));
        assert!(
            list.lines().any(|l| l.trim() == "10.77.0.11"),
            "labhost{k}'s memory of A should still list A's hosts:\n{list}"
        );
    }

    // Each plan names the other and changes nothing.
    let plan_a = lab.seedcore(&["plan", "--detailed-exitcode"]);
    plan_a.expect_code(0);
    assert_eq!(cluster_id(&plan_a), id_a);
    assert_contains(&plan_a, "No changes.");
    assert_contains(
        &plan_a,
        &other_cluster_note(&id_b, "10.77.0.13", 2, &shared),
    );
    let plan_b = lab.seedcore_with(&b, &["plan", "--detailed-exitcode"]);
    plan_b.expect_code(0);
    assert_eq!(cluster_id(&plan_b), id_b);
    assert_contains(&plan_b, "No changes.");
    assert_contains(
        &plan_b,
        &other_cluster_note(&id_a, "10.77.0.11", 2, &shared),
    );
    // status reports each cluster's own nodes only.
    let status_a = lab.seedcore(&["status"]);
    status_a.expect_ok();
    assert_eq!(cluster_id(&status_a), id_a);
    assert_lacks(&status_a, B_WORKER);
    let status_b = lab.seedcore_with(&b, &["status"]);
    status_b.expect_ok();
    assert_eq!(cluster_id(&status_b), id_b);
    for name in [LOCAL1, REMOTE12, REMOTE13] {
        assert_lacks(&status_b, name);
    }

    // Applying A (a no-op) leaves B running.
    let apply_a = lab.seedcore(&["apply", "--auto-approve"]);
    apply_a.expect_ok();
    assert_lacks(&apply_a, "to add");
    assert_eq!(snapshot_b(&lab), b_nodes, "applying A must not touch B");
    wait_alive_set(&lab, 3, &[HEAD, B_WORKER], Duration::from_secs(10));

    // Destroying B leaves A whole: same containers, same Ray nodes ALIVE.
    let destroy = lab.seedcore_with(&b, &["destroy", "--auto-approve"]);
    destroy.expect_ok();
    assert_contains(&destroy, "Destroy complete! Nodes: 2 destroyed.");
    for name in base_names() {
        if name != HEAD {
            assert_lacks(&destroy, name);
        }
    }
    for k in [2, 3] {
        assert_eq!(
            lab.containers_with_label(k, &label_filter),
            Vec::<String>::new(),
            "labhost{k} still has containers of B after B's destroy"
        );
    }
    assert_untouched(&lab, &before, "destroying cluster B");
    assert_ray_lists(&lab, &base_names());
    let plan_a = lab.seedcore(&["plan", "--detailed-exitcode"]);
    plan_a.expect_code(0);
    assert_lacks(&plan_a, "Another cluster");
    drop(destroy_b);
}

/// Cluster B's two containers (ID, start time), both running.
fn snapshot_b(lab: &Lab) -> BTreeMap<String, (String, String)> {
    [(3, HEAD), (2, B_WORKER)]
        .iter()
        .map(|(k, name)| {
            let c = lab
                .container(*k, name)
                .unwrap_or_else(|| panic!("B's {name} is missing on labhost{k}"));
            assert_eq!(c.status, "running", "B's {name} on labhost{k}: {c:?}");
            (format!("{name}@labhost{k}"), (c.id, c.started_at))
        })
        .collect()
}

// ------------------------------------------------------------------ c. saved plans

#[test]
fn a_saved_plan_runs_exactly_its_steps_or_refuses_once_a_host_changed() {
    let _serial = serial();
    let lab = Lab::require();
    converge(&lab);
    let dir = scratch("saved-plan");
    let before = snapshot(&lab, &BASE);

    // Saved on the converged cluster, then a worker is stopped by hand.
    let p = dir.join("p.json");
    let p_arg = p.display().to_string();
    lab.seedcore(&["plan", "--out", &p_arg]).expect_ok();
    assert_mode_0600(&p);
    assert_eq!(
        planned_steps(&read_plan(&p)),
        BTreeSet::new(),
        "the converged cluster's plan has no steps"
    );
    let repair = OnDrop(|| {
        let _ = lab.seedcore(&["apply", "--auto-approve"]);
    });
    lab.docker_ok(2, &["stop", REMOTE12]);
    let stale = lab.seedcore(&["apply", &p_arg]);
    stale.expect_code(1);
    assert_contains(
        &stale,
        "error: the saved plan is stale: the hosts changed since it was made:",
    );
    assert_contains(&stale, "`10.77.0.12`");
    assert_contains(
        &stale,
        &format!("container {REMOTE12}: state running -> exited"),
    );
    assert_contains(&stale, "nothing was changed");
    for other in ["`10.77.0.11`", "`10.77.0.13`"] {
        assert_lacks(&stale, other);
    }
    let c = lab
        .container(2, REMOTE12)
        .expect("the stopped worker is still there");
    assert_eq!(
        (c.id.as_str(), c.status.as_str()),
        (before[REMOTE12].0.as_str(), "exited"),
        "a stale plan must leave the stopped worker as it is"
    );
    let others: BTreeMap<String, (String, String)> = before
        .iter()
        .filter(|(n, _)| *n != REMOTE12)
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    assert_untouched(&lab, &others, "a stale saved plan");

    // A fresh plan (a start of that container, by its ID) runs exactly its steps.
    let p2 = dir.join("p2.json");
    let p2_arg = p2.display().to_string();
    lab.seedcore(&["plan", "--out", &p2_arg]).expect_ok();
    assert_mode_0600(&p2);
    let saved = read_plan(&p2);
    let planned = planned_steps(&saved);
    let start: BTreeSet<(String, String)> = [
        ("start".to_string(), REMOTE12.to_string()),
        ("wait-ready".to_string(), REMOTE12.to_string()),
    ]
    .into();
    assert_eq!(planned, start, "p2 plans a start of {REMOTE12}:\n{saved:#}");
    let start_step = saved["plan"]["graph"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "start")
        .unwrap();
    assert_eq!(
        start_step["container"].as_str(),
        Some(before[REMOTE12].0.as_str()),
        "the start step names the observed container by its ID"
    );
    let run = lab.seedcore(&["apply", &p2_arg]);
    run.expect_ok();
    assert_contains(
        &run,
        &format!(
            "The hosts are as the saved plan found them: executing its {} step(s).",
            planned.len()
        ),
    );
    assert_eq!(
        executed_steps(&run),
        planned,
        "apply must execute exactly the saved steps:\n{}",
        run.stderr
    );
    let c = lab.container(2, REMOTE12).unwrap();
    assert_eq!(
        (c.id.as_str(), c.status.as_str()),
        (before[REMOTE12].0.as_str(), "running"),
        "started, not replaced"
    );
    assert_untouched(&lab, &others, "applying the saved start");
    assert_ray_lists(&lab, &base_names());
    drop(repair);

    // An image untagged on one host after the plan was saved: refused, naming that host
    // and that image.
    let p3 = dir.join("p3.json");
    let p3_arg = p3.display().to_string();
    lab.seedcore(&["plan", "--out", &p3_arg]).expect_ok();
    let image_id = lab.docker_ok(3, &["image", "inspect", "-f", "{{.Id}}", IMAGE]);
    let image_id = image_id.trim().trim_start_matches("sha256:");
    // Also undoes what an interrupted run may have left.
    let restore_tag = || {
        if lab
            .docker(3, &["image", "inspect", "keep:me"])
            .status
            .success()
        {
            let _ = lab.docker(3, &["tag", "keep:me", IMAGE]);
            let _ = lab.docker(3, &["rmi", "keep:me"]);
        }
        lab.ensure_image(3, IMAGE);
    };
    restore_tag();
    lab.docker_ok(3, &["tag", IMAGE, "keep:me"]);
    let retag = OnDrop(restore_tag);
    lab.docker_ok(3, &["rmi", IMAGE]);
    let stale = lab.seedcore(&["apply", &p3_arg]);
    stale.expect_code(1);
    assert_contains(
        &stale,
        "error: the saved plan is stale: the hosts changed since it was made:",
    );
    assert_contains(&stale, "`10.77.0.13`");
    assert_contains(
        &stale,
        &format!("image {IMAGE}: id {} -> missing", &image_id[..12]),
    );
    assert_contains(&stale, "nothing was changed");
    for other in ["`10.77.0.11`", "`10.77.0.12`"] {
        assert_lacks(&stale, other);
    }
    let now = snapshot(&lab, &BASE);
    assert_eq!(
        now.get(REMOTE13),
        before.get(REMOTE13),
        "a stale plan must leave labhost3 alone"
    );
    // Tagged again, the hosts are as the plan found them: it applies (no steps).
    drop(retag);
    let run = lab.seedcore(&["apply", &p3_arg]);
    run.expect_ok();
    assert_contains(
        &run,
        "The hosts are as the saved plan found them: executing its 0 step(s).",
    );
    assert_eq!(executed_steps(&run), BTreeSet::new(), "{}", run.stderr);
    assert_ray_lists(&lab, &base_names());
}

// ------------------------------------------------------------------ d. forged labels

#[test]
fn a_container_with_forged_labels_is_never_touched() {
    let _serial = serial();
    let lab = Lab::require();
    converge(&lab);
    let plan = lab.seedcore(&["plan", "--detailed-exitcode"]);
    plan.expect_code(0);
    let id = cluster_id(&plan);
    let before = snapshot(&lab, &BASE);

    // A container claiming to be the worker on labhost2: our cluster's name and identity,
    // that worker's node label, but its own container name.
    let impostor = "impostor";
    let remove = OnDrop(|| {
        let _ = lab.docker(2, &["rm", "-f", impostor]);
    });
    let _ = lab.docker(2, &["rm", "-f", impostor]);
    let cluster_id_label = format!("io.seedcore.cluster-id={id}");
    let node_label = format!("io.seedcore.node={REMOTE12}");
    lab.docker_ok(
        2,
        &[
            "run",
            "-d",
            "--name",
            impostor,
            "--label",
            "io.seedcore.cluster=seedlab",
            "--label",
            &cluster_id_label,
            "--label",
            &node_label,
            "--label",
            "io.seedcore.role=worker",
            IMAGE,
            "sleep",
            "infinity",
        ],
    );
    let forged = lab.container(2, impostor).expect("the impostor runs");
    assert_eq!(forged.status, "running");
    let forged_short = forged.id[..12].to_string();

    let check = |run: &Run, what: &str| {
        assert_lacks(run, impostor);
        assert_lacks(run, &forged_short);
        let c = lab
            .container(2, impostor)
            .unwrap_or_else(|| panic!("{what}: the impostor is gone"));
        assert_eq!(
            (c.id.as_str(), c.status.as_str(), c.started_at.as_str()),
            (forged.id.as_str(), "running", forged.started_at.as_str()),
            "{what}: the impostor must be left exactly as it was"
        );
        let real = lab.container(2, REMOTE12).expect("the real worker");
        assert_eq!(
            (real.id.as_str(), real.status.as_str()),
            (before[REMOTE12].0.as_str(), "running"),
            "{what}: the real {REMOTE12} must keep its container"
        );
    };

    // A no-op: nothing to do, and the impostor is not mentioned.
    let plan = lab.seedcore(&["plan", "--output", "json", "--detailed-exitcode"]);
    plan.expect_code(0);
    check(&plan, "plan --output json");
    let noop = lab.seedcore(&["apply", "--set", "workers.remote.count=1", "--auto-approve"]);
    noop.expect_ok();
    assert_contains(&noop, "No changes.");
    check(&noop, "a no-op apply");
    assert_untouched(&lab, &before, "a no-op apply");
    assert_ray_lists(&lab, &base_names());

    // Scaling up and down around it.
    let (r12b, r13b) = (
        "seedlab-ray-remote-10.77.0.12-2",
        "seedlab-ray-remote-10.77.0.13-2",
    );
    let up = lab.seedcore(&["apply", "--set", "workers.remote.count=2", "--auto-approve"]);
    up.expect_ok();
    assert_blocks(
        &lab,
        &up,
        &[(r12b, 2, "will be created"), (r13b, 3, "will be created")],
    );
    assert_contains(&up, "Plan: 2 to add, 0 to change, 0 to destroy.");
    check(&up, "scaling up");
    assert_untouched(&lab, &before, "scaling up");
    assert_ray_lists(&lab, &[HEAD, LOCAL1, REMOTE12, REMOTE13, r12b, r13b]);
    let down = lab.seedcore(&["apply", "--set", "workers.remote.count=1", "--auto-approve"]);
    down.expect_ok();
    assert_blocks(
        &lab,
        &down,
        &[
            (r12b, 2, "will be destroyed"),
            (r13b, 3, "will be destroyed"),
        ],
    );
    assert_contains(&down, "Plan: 0 to add, 0 to change, 2 to destroy.");
    check(&down, "scaling down");
    assert_untouched(&lab, &before, "scaling down");
    assert_ray_lists(&lab, &base_names());
    let status = lab.seedcore(&["status"]);
    status.expect_ok();
    check(&status, "status");
    drop(remove);
}
