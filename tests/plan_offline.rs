//! Planning without a network: the `seedcore` binary against recorded
//! observations, and the planner's library API against observations built in
//! code from the example's desired state.
//!
//! Three parts:
//! - CLI tests (`seedcore plan`, `graph`, `validate`): exit codes and a
//!   snapshot of everything printed.
//! - A table of diff cases: one mutation of a converged observation each,
//!   and the exact changes (action and cause) it must produce.
//! - Schedule tests: the order apply must keep, checked on the graph itself.

use petgraph::algo::has_path_connecting;
use seedcore::config::{self, Loaded, Override};
use seedcore::model::{
    hex, DesiredState, EngineInfo, HostName, HostObservation, NodeName, NodeSpec,
    ObservedContainer, ObservedState, LABEL_CLUSTER, LABEL_SPEC, LABEL_SPEC_HASH,
};
use seedcore::plan::{self, Action, ConflictOwner, DiffOptions, Plan, PlanError, Step};
use seedcore::render::{self, Style};
use seedcore::topology;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

mod support;
use support::cli::{run, seedcore};

const EXAMPLE: &str = "examples/seedcore.toml";
const EMPTY: &str = "fixtures/observed/empty.json";
const CONVERGED: &str = "fixtures/observed/converged.json";

const HEAD: &str = "seedcore-ray-head";
const LOCAL_1: &str = "seedcore-ray-local-172.31.17.143-1";
const LOCAL_2: &str = "seedcore-ray-local-172.31.17.143-2";
const LOCAL_3: &str = "seedcore-ray-local-172.31.17.143-3";
const REMOTE_1: &str = "seedcore-ray-remote-172.31.20.11-1";
const REMOTE_2: &str = "seedcore-ray-remote-172.31.20.12-1";
/// The example scaled to three local workers: its first two local workers
/// are exactly the example's (seedcore-chosen ports are allocated in order).
const THREE_LOCAL: &[&str] = &["workers.local.count=3"];
const HEAD_HOST: &str = "172.31.17.143";
const REMOTE_HOST_1: &str = "172.31.20.11";
const REMOTE_HOST_2: &str = "172.31.20.12";

// ---------------------------------------------------------------------------
// Helpers

/// The example configuration with `--set` overrides, loaded and lowered.
fn example(sets: &[&str]) -> (Loaded, DesiredState) {
    let overrides: Vec<Override> = sets
        .iter()
        .map(|s| Override::parse_flag(s).expect("a well-formed --set"))
        .collect();
    seedcore::cli::load(Path::new(EXAMPLE), &overrides)
        .unwrap_or_else(|e| panic!("the example with {sets:?} should load:\n{e}"))
}

fn desired(sets: &[&str]) -> DesiredState {
    example(sets).1
}

fn reachable(containers: Vec<ObservedContainer>) -> HostObservation {
    HostObservation {
        reachable: true,
        error: None,
        engine: Some(EngineInfo {
            id: String::new(),
            version: "24.0.7".to_string(),
            api_version: "1.43".to_string(),
            cpus: 16,
            memory_bytes: 64 << 30,
        }),
        images: None,
        layers: None,
        containers,
        listening: Vec::new(),
    }
}

/// Every host of `desired` reachable and empty.
fn empty(desired: &DesiredState) -> ObservedState {
    let mut o = ObservedState::new();
    for h in desired.hosts() {
        o.hosts.insert(h, reachable(Vec::new()));
    }
    o
}

/// The container seedcore would have created for `node`, in `state`.
fn container(
    node: &NodeSpec,
    cluster: &seedcore::model::ClusterIdentity,
    state: &str,
    exit_code: Option<i64>,
) -> ObservedContainer {
    ObservedContainer {
        name: node.name.0.clone(),
        // A stable, realistic-looking container ID derived from the name.
        id: hex(&Sha256::digest(node.name.0.as_bytes())),
        image: node.image.clone(),
        state: state.to_string(),
        exit_code,
        created: None,
        image_id: None,
        labels: node.labels(cluster),
    }
}

/// What the hosts hold once `desired` has been applied: every node running.
fn converged(desired: &DesiredState) -> ObservedState {
    let mut o = empty(desired);
    for n in &desired.nodes {
        o.hosts
            .get_mut(&n.host)
            .expect("a declared host")
            .containers
            .push(container(n, &desired.cluster, "running", None));
    }
    o
}

fn find<'a>(o: &'a mut ObservedState, name: &str) -> &'a mut ObservedContainer {
    o.hosts
        .values_mut()
        .flat_map(|h| h.containers.iter_mut())
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container `{name}` in the observation"))
}

fn remove(o: &mut ObservedState, name: &str) {
    for h in o.hosts.values_mut() {
        h.containers.retain(|c| c.name != name);
    }
}

fn host<'a>(o: &'a mut ObservedState, host: &str) -> &'a mut HostObservation {
    o.hosts
        .get_mut(&HostName(host.to_string()))
        .unwrap_or_else(|| panic!("no host `{host}` in the observation"))
}

fn stranger(name: &str, labels: &[(&str, &str)]) -> ObservedContainer {
    ObservedContainer {
        name: name.to_string(),
        id: format!("{:f>64}", name.len()),
        image: "postgres:16".to_string(),
        state: "running".to_string(),
        exit_code: None,
        created: None,
        image_id: None,
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn build(desired: &DesiredState, observed: &ObservedState) -> Plan {
    plan::build(desired, observed, DiffOptions::default(), Vec::new())
        .unwrap_or_else(|e| panic!("the plan should build:\n{e}"))
}

fn write_observation(dir: &Path, name: &str, o: &ObservedState) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(o).unwrap()).unwrap();
    path
}

// ---------------------------------------------------------------------------
// CLI

#[test]
fn plan_against_empty_hosts_creates_everything_and_exits_2() {
    let r = run(seedcore().args([
        "plan",
        "-c",
        EXAMPLE,
        "--observed",
        EMPTY,
        "--detailed-exitcode",
    ]));
    assert_eq!(r.code, 2, "stderr: {}", r.stderr);
    assert_eq!(
        r.stderr, "",
        "stdout is for the plan; nothing else expected"
    );
    assert!(r
        .stdout
        .ends_with("Plan: 5 to add, 0 to change, 0 to destroy.\n"));
    insta::assert_snapshot!("cli_plan_empty", r.stdout);
}

#[test]
fn plan_with_changes_exits_0_without_detailed_exitcode() {
    let r = run(seedcore().args(["plan", "-c", EXAMPLE, "--observed", EMPTY]));
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    assert!(r.stdout.contains("Plan: 5 to add"));
}

#[test]
fn plan_against_a_converged_cluster_says_no_changes_and_exits_0() {
    let r = run(seedcore().args([
        "plan",
        "-c",
        EXAMPLE,
        "--observed",
        CONVERGED,
        "--detailed-exitcode",
    ]));
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    assert!(r
        .stdout
        .ends_with("No changes. The cluster matches the configuration.\n"));
    insta::assert_snapshot!("cli_plan_converged", r.stdout);
}

#[test]
fn plan_as_json_is_versioned_and_carries_the_full_argv() {
    let r = run(seedcore().args([
        "plan",
        "-c",
        EXAMPLE,
        "--observed",
        EMPTY,
        "--output",
        "json",
    ]));
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("valid JSON");
    assert_eq!(v["format_version"], "2.2");
    assert_eq!(
        v["summary"],
        serde_json::json!({"add": 5, "change": 0, "destroy": 0})
    );
    let changes = v["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 5);
    assert!(changes.iter().all(|c| c["action"] == "create"));
    let remote = changes.iter().find(|c| c["node"] == REMOTE_1).unwrap();
    let args: Vec<&str> = remote["after"]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(&args[..3], ["ray", "start", "--address=172.31.17.143:6380"]);
    for flag in [
        "--object-manager-port=",
        "--node-manager-port=",
        "--min-worker-port=",
        "--max-worker-port=",
        "--dashboard-agent-listen-port=",
        "--dashboard-agent-grpc-port=",
        "--runtime-env-agent-port=",
        "--metrics-export-port=",
        "--num-cpus=4",
        "--node-ip-address=172.31.20.11",
    ] {
        assert!(
            args.iter().any(|a| a.starts_with(flag)),
            "{flag} missing: {args:?}"
        );
    }
    insta::assert_snapshot!("cli_plan_empty_json", r.stdout);
}

#[test]
fn plan_as_markdown_puts_the_summary_first() {
    let r = run(seedcore().args([
        "plan",
        "-c",
        EXAMPLE,
        "--observed",
        EMPTY,
        "--output",
        "markdown",
    ]));
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    let mut lines = r.stdout.lines();
    assert_eq!(lines.next(), Some("### seedcore plan: cluster `seedcore`"));
    assert_eq!(lines.next(), Some(""));
    assert_eq!(
        lines.next(),
        Some("**Plan: 5 to add, 0 to change, 0 to destroy.**")
    );
    assert_eq!(
        r.stdout.matches("<details>").count(),
        3,
        "one section per host"
    );
    insta::assert_snapshot!("cli_plan_empty_markdown", r.stdout);
}

#[test]
fn graph_prints_dot_and_mermaid() {
    let dot = run(seedcore().args([
        "graph",
        "-c",
        EXAMPLE,
        "--observed",
        EMPTY,
        "--format",
        "dot",
    ]));
    assert_eq!(dot.code, 0, "stderr: {}", dot.stderr);
    assert!(dot.stdout.starts_with("digraph seedcore {"));
    insta::assert_snapshot!("cli_graph_dot", dot.stdout);

    let mermaid = run(seedcore().args([
        "graph",
        "-c",
        EXAMPLE,
        "--observed",
        EMPTY,
        "--format",
        "mermaid",
    ]));
    assert_eq!(mermaid.code, 0, "stderr: {}", mermaid.stderr);
    assert!(mermaid.stdout.starts_with("flowchart LR\n"));
    insta::assert_snapshot!("cli_graph_mermaid", mermaid.stdout);

    // Same steps and edges in both renderings.
    assert_eq!(
        dot.stdout.matches(" -> ").count(),
        mermaid.stdout.matches(" --> ").count()
    );
}

#[test]
fn validate_describes_the_example() {
    let r = run(seedcore().args(["validate", "-c", EXAMPLE]));
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    insta::assert_snapshot!("cli_validate_example", r.stdout);
}

#[test]
fn an_invalid_config_exits_1_with_one_error_prefix() {
    let r = run(seedcore().args([
        "plan",
        "-c",
        "fixtures/config/invalid/port_zero.toml",
        "--observed",
        EMPTY,
    ]));
    assert_eq!(r.code, 1);
    assert_eq!(r.stdout, "");
    assert!(
        r.stderr.starts_with("error: `head.gcs_port` is 0"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("error: error:"), "{}", r.stderr);
}

#[test]
fn set_overrides_are_named_in_the_plan_header() {
    let r = run(seedcore().args([
        "plan",
        "-c",
        EXAMPLE,
        "--observed",
        CONVERGED,
        "--set",
        "workers.local.count=3",
        "--detailed-exitcode",
    ]));
    assert_eq!(r.code, 2, "stderr: {}", r.stderr);
    assert!(
        r.stdout.contains(concat!(
            "Overrides in force:\n",
            "  workers.local.count = 3 (--set)\n",
        )),
        "{}",
        r.stdout
    );
    assert!(r
        .stdout
        .contains(&format!("# {LOCAL_3} on {HEAD_HOST} will be created")));
    assert!(r
        .stdout
        .ends_with("Plan: 1 to add, 0 to change, 0 to destroy.\n"));
    insta::assert_snapshot!("cli_plan_set_count", r.stdout);
}

#[test]
fn head_ip_override_is_named_and_moves_the_workers_address() {
    let wanted = desired(&["head.host=10.9.9.9"]);
    let dir = tempfile::tempdir().unwrap();
    let obs = write_observation(dir.path(), "obs.json", &empty(&wanted));
    let r = run(seedcore()
        .args(["plan", "-c", EXAMPLE, "--output", "json", "--observed"])
        .arg(&obs)
        .env("HEAD_IP_OVERRIDE", "10.9.9.9"));
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        v["overrides"],
        serde_json::json!(["head.host = 10.9.9.9 (from $HEAD_IP_OVERRIDE)"])
    );
    let mut workers = 0;
    for c in v["changes"].as_array().unwrap() {
        if c["role"] == "worker" {
            workers += 1;
            let args = c["after"]["args"].as_array().unwrap();
            assert!(
                args.contains(&serde_json::json!("--address=10.9.9.9:6380")),
                "{}: {args:?}",
                c["node"]
            );
        }
    }
    assert_eq!(workers, 4);

    let text = run(seedcore()
        .args(["plan", "-c", EXAMPLE, "--observed"])
        .arg(&obs)
        .env("HEAD_IP_OVERRIDE", "10.9.9.9"));
    assert!(
        text.stdout
            .contains("Overrides in force:\n  head.host = 10.9.9.9 (from $HEAD_IP_OVERRIDE)\n"),
        "{}",
        text.stdout
    );
}

#[test]
fn a_host_missing_from_the_observation_fails_naming_it() {
    // The override moves the head to a host that `empty.json` never saw.
    let r = run(seedcore()
        .args([
            "plan",
            "-c",
            EXAMPLE,
            "--observed",
            EMPTY,
            "--detailed-exitcode",
        ])
        .env("HEAD_IP_OVERRIDE", "10.9.9.9"));
    assert_eq!(r.code, 1);
    assert_eq!(r.stdout, "");
    assert!(
        r.stderr.contains("`10.9.9.9`: not in the observation"),
        "{}",
        r.stderr
    );
    insta::assert_snapshot!("cli_plan_host_missing", r.stderr);
}

#[test]
fn an_unreachable_host_fails_naming_it() {
    let wanted = desired(&[]);
    let mut o = empty(&wanted);
    let h = host(&mut o, REMOTE_HOST_2);
    h.reachable = false;
    h.error = Some("ssh: connect to host 172.31.20.12 port 22: Connection timed out".to_string());
    let dir = tempfile::tempdir().unwrap();
    let obs = write_observation(dir.path(), "obs.json", &o);
    let r = run(seedcore()
        .args(["plan", "-c", EXAMPLE, "--detailed-exitcode", "--observed"])
        .arg(&obs));
    assert_eq!(r.code, 1);
    assert_eq!(r.stdout, "");
    insta::assert_snapshot!("cli_plan_host_unreachable", r.stderr);
}

#[test]
fn plan_out_writes_a_json_plan_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tfplan.json");
    let r = run(seedcore()
        .args(["plan", "-c", EXAMPLE, "--observed", EMPTY, "--out"])
        .arg(&out));
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    assert!(
        r.stdout.contains("Plan: 5 to add"),
        "the plan is still printed"
    );
    assert!(
        r.stderr
            .contains(&format!("Saved the plan to `{}`", out.display())),
        "{}",
        r.stderr
    );
    let text = std::fs::read_to_string(&out).expect("the plan file");
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "a saved plan is private");
    let saved: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(saved["kind"], "seedcore-plan");
    assert_eq!(saved["format_version"], "1.1");
    assert_eq!(saved["config"]["path"], EXAMPLE);
    assert_eq!(saved["config"]["sha256"].as_str().unwrap().len(), 64);
    let fingerprint = saved["plan"]["fingerprint"].as_object().unwrap();
    let hosts: Vec<&str> = fingerprint.keys().map(String::as_str).collect();
    assert_eq!(hosts, [HEAD_HOST, REMOTE_HOST_1, REMOTE_HOST_2]);

    // The file is the typed plan itself: it reads back into exactly the plan
    // that was printed, steps and all.
    let saved = plan::artifact::SavedPlan::from_json(&text).expect("a saved plan reads back");
    let loaded = config::load(Path::new(EXAMPLE), &[]).unwrap();
    let observed: ObservedState =
        serde_json::from_str(&std::fs::read_to_string(EMPTY).unwrap()).unwrap();
    let desired = topology::lower_fresh(&loaded.config).unwrap();
    let again = build(&desired, &observed);
    assert_eq!(saved.plan, again);
    assert_eq!(saved.plan.graph.numbered(), again.graph.numbered());

    // `--out` never overwrites the configuration it read.
    let config_copy = dir.path().join("seedcore.toml");
    std::fs::copy(EXAMPLE, &config_copy).unwrap();
    let r = run(seedcore()
        .arg("-c")
        .arg(&config_copy)
        .args(["plan", "--observed", EMPTY, "--out"])
        .arg(&config_copy));
    assert_eq!(r.code, 1);
    assert_eq!(
        std::fs::read_to_string(&config_copy).unwrap(),
        std::fs::read_to_string(EXAMPLE).unwrap()
    );
    assert_eq!(
        r.stderr,
        format!(
            "error: `--out {}` is the configuration file itself\nhint: save the plan elsewhere, e.g. `--out plan.json`\n",
            config_copy.display()
        )
    );
}

/// A saved plan of another major format, or not a plan at all, is refused
/// with the reason; a newer minor version's extra fields are read.
#[test]
fn saved_plan_versions_follow_the_documented_rules() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("p.json");
    let r = run(seedcore()
        .args(["plan", "-c", EXAMPLE, "--observed", EMPTY, "--out"])
        .arg(&out));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let text = std::fs::read_to_string(&out).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["format_version"] = "1.7".into();
    v["a_field_from_the_future"] = true.into();
    assert!(plan::artifact::SavedPlan::from_json(&v.to_string()).is_ok());
    v["format_version"] = "2.0".into();
    let e = plan::artifact::SavedPlan::from_json(&v.to_string()).unwrap_err();
    assert!(e.to_string().contains("format 2.0"), "{e}");
    let e = plan::artifact::SavedPlan::from_json("{\"format_version\": \"1\"}").unwrap_err();
    assert!(e.to_string().contains("not a saved seedcore plan"), "{e}");
    // A step list that waits in a cycle is not a plan.
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let first = v["plan"]["graph"]["edges"][0].clone();
    v["plan"]["graph"]["edges"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!([first[1], first[0]]));
    let e = plan::artifact::SavedPlan::from_json(&v.to_string()).unwrap_err();
    assert!(e.to_string().contains("cycle"), "{e}");
}

#[test]
fn unusable_observation_files_are_explained() {
    let r = run(seedcore().args([
        "plan",
        "-c",
        EXAMPLE,
        "--observed",
        "fixtures/observed/does-not-exist.json",
    ]));
    assert_eq!(r.code, 1);
    assert!(r
        .stderr
        .starts_with("error: cannot read the observation `fixtures/observed/does-not-exist.json`"));
    assert!(r
        .stderr
        .contains("hint: record one with `seedcore observe -o"));

    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, "{\"hosts\": 3}").unwrap();
    let r = run(seedcore()
        .args(["plan", "-c", EXAMPLE, "--observed"])
        .arg(&garbage));
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("is not a seedcore observation"),
        "{}",
        r.stderr
    );

    let mut future = empty(&desired(&[]));
    future.format_version = "2".to_string();
    let future = write_observation(dir.path(), "future.json", &future);
    let r = run(seedcore()
        .args(["plan", "-c", EXAMPLE, "--observed"])
        .arg(&future));
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("has observation format 2, this seedcore reads format 1"),
        "{}",
        r.stderr
    );
}

// ---------------------------------------------------------------------------
// Diff, table-driven

/// One diff case: a desired state (the example plus `--set`s), an
/// observation (what applying the example plus `observed_sets` left, then
/// `mutate`d), and every change that is not a no-op, in plan order.
struct Case {
    name: &'static str,
    desired_sets: &'static [&'static str],
    observed_sets: &'static [&'static str],
    mutate: fn(&mut ObservedState),
    expect: &'static [(&'static str, Action, &'static str)],
}

const HEAD_REPLACED: &str = "head replaced: workers must rejoin the new cluster";
const HEAD_RESTARTED: &str = "head restarted: workers must rejoin the new cluster";
const HEAD_CREATED: &str = "head created: workers must rejoin the new cluster";

const CASES: &[Case] = &[
    Case {
        name: "converged",
        desired_sets: &[],
        observed_sets: &[],
        mutate: |_| {},
        expect: &[],
    },
    Case {
        name: "missing worker is created",
        desired_sets: &[],
        observed_sets: &[],
        mutate: |o| remove(o, REMOTE_1),
        expect: &[(
            REMOTE_1,
            Action::Create,
            "no container `seedcore-ray-remote-172.31.20.11-1` on `172.31.20.11`",
        )],
    },
    Case {
        name: "killed worker is started",
        desired_sets: &[],
        observed_sets: &[],
        mutate: |o| {
            let c = find(o, LOCAL_2);
            c.state = "exited".to_string();
            c.exit_code = Some(137);
        },
        expect: &[(LOCAL_2, Action::Start, "container exited (code 137)")],
    },
    Case {
        name: "exited without a code",
        desired_sets: &[],
        observed_sets: &[],
        mutate: |o| find(o, REMOTE_2).state = "exited".to_string(),
        expect: &[(REMOTE_2, Action::Start, "container exited")],
    },
    Case {
        name: "created but never started: replaced (it may lack its token and secrets)",
        desired_sets: &[],
        observed_sets: &[],
        mutate: |o| find(o, REMOTE_2).state = "created".to_string(),
        expect: &[(
            REMOTE_2,
            Action::Replace,
            "container created but never started",
        )],
    },
    Case {
        name: "restarting counts as running",
        desired_sets: &[],
        observed_sets: &[],
        mutate: |o| find(o, LOCAL_1).state = "restarting".to_string(),
        expect: &[],
    },
    Case {
        name: "paused is replaced",
        desired_sets: &[],
        observed_sets: &[],
        mutate: |o| find(o, LOCAL_1).state = "paused".to_string(),
        expect: &[(LOCAL_1, Action::Replace, "container is paused")],
    },
    Case {
        name: "dead is replaced",
        desired_sets: &[],
        observed_sets: &[],
        mutate: |o| find(o, REMOTE_1).state = "dead".to_string(),
        expect: &[(REMOTE_1, Action::Replace, "container is dead")],
    },
    Case {
        name: "changed cpus replace with a field diff",
        desired_sets: &["workers.remote.cpus=2"],
        observed_sets: &[],
        mutate: |_| {},
        expect: &[
            (REMOTE_1, Action::Replace, "cpus 4 -> 2"),
            (REMOTE_2, Action::Replace, "cpus 4 -> 2"),
        ],
    },
    Case {
        name: "undeclared container of our cluster is removed",
        desired_sets: &[],
        observed_sets: THREE_LOCAL,
        mutate: |_| {},
        expect: &[(LOCAL_3, Action::Remove, "not in configuration")],
    },
    Case {
        name: "scale down removes the highest ordinals first",
        desired_sets: &["workers.local.count=1"],
        observed_sets: THREE_LOCAL,
        mutate: |_| {},
        expect: &[
            (LOCAL_3, Action::Remove, "not in configuration"),
            (LOCAL_2, Action::Remove, "not in configuration"),
        ],
    },
    Case {
        name: "with fixed slices, scaling up adds workers and leaves the others alone",
        desired_sets: &[
            "workers.remote.worker_ports_per_node=10",
            "workers.remote.count=2",
        ],
        observed_sets: &["workers.remote.worker_ports_per_node=10"],
        mutate: |_| {},
        expect: &[
            (
                "seedcore-ray-remote-172.31.20.11-2",
                Action::Create,
                "no container `seedcore-ray-remote-172.31.20.11-2` on `172.31.20.11`",
            ),
            (
                "seedcore-ray-remote-172.31.20.12-2",
                Action::Create,
                "no container `seedcore-ray-remote-172.31.20.12-2` on `172.31.20.12`",
            ),
        ],
    },
    Case {
        name: "with fixed slices, scaling down removes the highest-numbered workers",
        desired_sets: &["workers.remote.worker_ports_per_node=10"],
        observed_sets: &[
            "workers.remote.worker_ports_per_node=10",
            "workers.remote.count=2",
        ],
        mutate: |_| {},
        expect: &[
            (
                "seedcore-ray-remote-172.31.20.11-2",
                Action::Remove,
                "not in configuration",
            ),
            (
                "seedcore-ray-remote-172.31.20.12-2",
                Action::Remove,
                "not in configuration",
            ),
        ],
    },
    Case {
        name: "a host replaced in a group: its nodes go, the new host's come",
        desired_sets: &["workers.remote.hosts=172.31.20.11,172.31.20.13"],
        observed_sets: &[],
        mutate: |o| {
            o.hosts
                .insert(HostName("172.31.20.13".to_string()), reachable(Vec::new()));
        },
        expect: &[
            (
                "seedcore-ray-remote-172.31.20.13-1",
                Action::Create,
                "no container `seedcore-ray-remote-172.31.20.13-1` on `172.31.20.13`",
            ),
            (REMOTE_2, Action::Remove, "not in configuration"),
        ],
    },
    Case {
        name: "a worker Ray lists DEAD while its container runs is restarted",
        desired_sets: &[],
        observed_sets: &[],
        mutate: |o| {
            let node = |name: &str, ip: &str, state: &str, end: u64| seedcore::model::RayNode {
                node_id: format!("id-{name}"),
                node_ip: ip.to_string(),
                node_name: name.to_string(),
                state: state.to_string(),
                is_head_node: false,
                start_time_ms: None,
                end_time_ms: (end > 0).then_some(end),
                resources_total: [("CPU".to_string(), serde_json::json!(4.0))].into(),
            };
            o.ray = Some(vec![
                node(REMOTE_1, REMOTE_HOST_1, "DEAD", 1_795_791_601_000),
                node(REMOTE_2, REMOTE_HOST_2, "ALIVE", 0),
                // A DEAD entry of an earlier container, beside an ALIVE one.
                node(REMOTE_2, REMOTE_HOST_2, "DEAD", 1_795_791_000_000),
            ]);
        },
        expect: &[(
            REMOTE_1,
            Action::Replace,
            "its container runs, but Ray lists it DEAD since 2026-11-27 15:00:01 UTC",
        )],
    },
    Case {
        name: "a worker Ray does not list after a minute is replaced; a younger one waits",
        desired_sets: &[],
        observed_sets: &[],
        mutate: |o| {
            o.ray = Some(Vec::new());
            o.observed_at = Some(10_000);
            find(o, REMOTE_1).created = Some(10_000 - 61);
            find(o, REMOTE_2).created = Some(10_000 - 5);
        },
        expect: &[(
            REMOTE_1,
            Action::Replace,
            "its container has run for 61s, but Ray does not list it (it never joined this head)",
        )],
    },
    Case {
        name: "a worker Ray does not list, older than the running head, is replaced at once",
        desired_sets: &[],
        observed_sets: &[],
        mutate: |o| {
            // The head's container is older than both workers: it was
            // restarted (same container) after the first one was created.
            find(o, HEAD).created = Some(10_000 - 3600);
            o.ray = Some(vec![seedcore::model::RayNode {
                node_id: "id-head".to_string(),
                node_ip: HEAD_HOST.to_string(),
                node_name: HEAD.to_string(),
                state: "ALIVE".to_string(),
                is_head_node: true,
                start_time_ms: Some((10_000 - 30) * 1000 + 999),
                end_time_ms: None,
                resources_total: [("CPU".to_string(), serde_json::json!(4.0))].into(),
            }]);
            o.observed_at = Some(10_000);
            find(o, REMOTE_1).created = Some(10_000 - 40);
            find(o, REMOTE_2).created = Some(10_000 - 20);
        },
        expect: &[(
            REMOTE_1,
            Action::Replace,
            "its container was created 10s before the running head started, and Ray does not list it (it belonged to an earlier head)",
        )],
    },
    Case {
        name: "a changed head image replaces the head and every worker",
        desired_sets: &["head.image=rayproject/ray:2.61.0"],
        observed_sets: &[],
        mutate: |_| {},
        expect: &[
            (
                HEAD,
                Action::Replace,
                "image rayproject/ray:2.60.0 -> rayproject/ray:2.61.0",
            ),
            (LOCAL_1, Action::Replace, HEAD_REPLACED),
            (LOCAL_2, Action::Replace, HEAD_REPLACED),
            (REMOTE_1, Action::Replace, HEAD_REPLACED),
            (REMOTE_2, Action::Replace, HEAD_REPLACED),
        ],
    },
    Case {
        name: "a restarted head takes the workers with it",
        desired_sets: &[],
        observed_sets: &[],
        mutate: |o| {
            let c = find(o, HEAD);
            c.state = "exited".to_string();
            c.exit_code = Some(1);
        },
        expect: &[
            (HEAD, Action::Start, "container exited (code 1)"),
            (LOCAL_1, Action::Replace, HEAD_RESTARTED),
            (LOCAL_2, Action::Replace, HEAD_RESTARTED),
            (REMOTE_1, Action::Replace, HEAD_RESTARTED),
            (REMOTE_2, Action::Replace, HEAD_RESTARTED),
        ],
    },
    Case {
        name: "a missing head takes the workers with it",
        desired_sets: &[],
        observed_sets: &[],
        mutate: |o| {
            remove(o, HEAD);
            find(o, REMOTE_1).state = "exited".to_string();
        },
        expect: &[
            (
                HEAD,
                Action::Create,
                "no container `seedcore-ray-head` on `172.31.17.143`",
            ),
            (LOCAL_1, Action::Replace, HEAD_CREATED),
            (LOCAL_2, Action::Replace, HEAD_CREATED),
            (REMOTE_1, Action::Replace, HEAD_CREATED),
            (REMOTE_2, Action::Replace, HEAD_CREATED),
        ],
    },
    Case {
        name: "a worker's own change survives a head replacement",
        desired_sets: &["head.image=rayproject/ray:2.61.0", "workers.remote.cpus=2"],
        observed_sets: &[],
        mutate: |o| remove(o, LOCAL_1),
        expect: &[
            (
                HEAD,
                Action::Replace,
                "image rayproject/ray:2.60.0 -> rayproject/ray:2.61.0",
            ),
            (
                LOCAL_1,
                Action::Create,
                "no container `seedcore-ray-local-172.31.17.143-1` on `172.31.17.143`",
            ),
            (LOCAL_2, Action::Replace, HEAD_REPLACED),
            (REMOTE_1, Action::Replace, "cpus 4 -> 2"),
            (REMOTE_2, Action::Replace, "cpus 4 -> 2"),
        ],
    },
    Case {
        name: "another cluster's container with another name is left alone",
        desired_sets: &[],
        observed_sets: &[],
        mutate: |o| {
            host(o, HEAD_HOST).containers.push(stranger(
                "other-ray-head",
                &[(LABEL_CLUSTER, "other"), ("io.seedcore.role", "head")],
            ));
            host(o, REMOTE_HOST_1)
                .containers
                .push(stranger("postgres", &[]));
        },
        expect: &[],
    },
    Case {
        name: "an unrecorded old spec still replaces",
        desired_sets: &[],
        observed_sets: &[],
        mutate: |o| {
            let c = find(o, REMOTE_1);
            c.labels.remove(LABEL_SPEC);
            c.labels.insert(LABEL_SPEC_HASH.to_string(), "0".repeat(64));
        },
        expect: &[(
            REMOTE_1,
            Action::Replace,
            "spec hash differs and the old spec is not recorded",
        )],
    },
    Case {
        name: "a moved image tag replaces",
        desired_sets: &[],
        observed_sets: &[],
        mutate: |o| find(o, REMOTE_1).image = "rayproject/ray:latest".to_string(),
        expect: &[(
            REMOTE_1,
            Action::Replace,
            "runs image `rayproject/ray:latest`, expected `rayproject/ray:2.60.0`",
        )],
    },
    Case {
        name: "an image reported by digest is not a change",
        desired_sets: &[],
        observed_sets: &[],
        mutate: |o| find(o, REMOTE_1).image = format!("sha256:{}", "a".repeat(64)),
        expect: &[],
    },
];

#[test]
fn diff_cases() {
    for case in CASES {
        let wanted = desired(case.desired_sets);
        let mut observed = converged(&desired(case.observed_sets));
        (case.mutate)(&mut observed);
        let changes = plan::diff(&wanted, &observed, DiffOptions::default())
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let causes: Vec<String> = changes.iter().map(|c| c.cause()).collect();
        let got: Vec<(&str, Action, &str)> = changes
            .iter()
            .zip(&causes)
            .filter(|(c, _)| c.action != Action::NoOp)
            .map(|(c, cause)| (c.node.as_str(), c.action, cause.as_str()))
            .collect();
        assert_eq!(got, case.expect, "case `{}`", case.name);

        // One change per declared node, in topology order, then removals.
        let declared: Vec<&str> = wanted.nodes.iter().map(|n| n.name.as_str()).collect();
        let planned: Vec<&str> = changes
            .iter()
            .filter(|c| c.action != Action::Remove)
            .map(|c| c.node.as_str())
            .collect();
        assert_eq!(planned, declared, "case `{}`", case.name);
        let first_remove = changes.iter().position(|c| c.action == Action::Remove);
        if let Some(i) = first_remove {
            assert!(
                changes[i..].iter().all(|c| c.action == Action::Remove),
                "case `{}`: removals come last",
                case.name
            );
        }
        for c in &changes {
            match c.action {
                Action::NoOp => assert!(c.cause().starts_with("container "), "{c:?}"),
                Action::Remove => assert!(c.after.is_none() && c.before.is_some()),
                Action::Create => assert!(c.before.is_none() && c.after.is_some()),
                Action::Start | Action::Replace => {
                    assert!(c.before.is_some() && c.after.is_some())
                }
            }
        }
    }
}

#[test]
fn a_replacement_carries_the_field_diff_from_the_recorded_spec() {
    let wanted = desired(&["workers.remote.cpus=2"]);
    let observed = converged(&desired(&[]));
    let changes = plan::diff(&wanted, &observed, DiffOptions::default()).unwrap();
    let c = changes
        .iter()
        .find(|c| c.node.as_str() == REMOTE_1)
        .unwrap();
    let fields: Vec<(&str, Option<&str>, Option<&str>)> = c
        .fields
        .iter()
        .map(|f| (f.field.as_str(), f.before.as_deref(), f.after.as_deref()))
        .collect();
    assert_eq!(fields[0], ("cpus", Some("4"), Some("2")));
    assert_eq!(fields.len(), 2, "{fields:#?}");
    // The flag it implies is its own line: the diff names exactly what moved.
    assert_eq!(fields[1], ("--num-cpus", Some("4"), Some("2")));
}

fn plan_error(observed: &ObservedState) -> PlanError {
    match plan::diff(&desired(&[]), observed, DiffOptions::default()) {
        Ok(changes) => panic!("expected a plan error, got {changes:#?}"),
        Err(e) => e,
    }
}

#[test]
fn an_unlabelled_container_holding_our_name_is_a_conflict() {
    let mut o = converged(&desired(&[]));
    remove(&mut o, REMOTE_1);
    host(&mut o, REMOTE_HOST_1)
        .containers
        .push(stranger(REMOTE_1, &[]));
    let e = plan_error(&o);
    let PlanError::Conflicts(list) = &e else {
        panic!("expected conflicts, got {e:?}");
    };
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].name, REMOTE_1);
    assert_eq!(list[0].owner, ConflictOwner::Unlabelled);
    insta::assert_snapshot!("conflict_unlabelled", e.to_string());
}

#[test]
fn another_clusters_container_holding_our_name_is_a_conflict() {
    let mut o = converged(&desired(&[]));
    remove(&mut o, HEAD);
    host(&mut o, HEAD_HOST)
        .containers
        .push(stranger(HEAD, &[(LABEL_CLUSTER, "staging")]));
    let e = plan_error(&o);
    let PlanError::Conflicts(list) = &e else {
        panic!("expected conflicts, got {e:?}");
    };
    assert_eq!(list[0].owner, ConflictOwner::Cluster("staging".to_string()));
    insta::assert_snapshot!("conflict_other_cluster", e.to_string());
}

#[test]
fn missing_and_unreachable_hosts_make_the_plan_incomplete() {
    let mut o = converged(&desired(&[]));
    o.hosts.remove(&HostName(REMOTE_HOST_1.to_string()));
    let h = host(&mut o, REMOTE_HOST_2);
    h.reachable = false;
    h.containers.clear();
    let e = plan_error(&o);
    assert_eq!(
        e,
        PlanError::Incomplete(vec![
            (
                HostName(REMOTE_HOST_1.to_string()),
                "not in the observation".to_string()
            ),
            (
                HostName(REMOTE_HOST_2.to_string()),
                "unreachable".to_string()
            ),
        ])
    );
    insta::assert_snapshot!("incomplete_hosts", e.to_string());
}

/// `--skip-unreachable`: the reachable hosts are planned, the unreachable
/// one is named and nothing on it is planned or removed; the head's host
/// cannot be skipped.
#[test]
fn skip_unreachable_plans_the_rest_and_names_what_it_skipped() {
    let wanted = desired(&["workers.remote.cpus=2"]);
    let mut o = converged(&desired(&[]));
    let h = host(&mut o, REMOTE_HOST_2);
    h.reachable = false;
    h.error = Some("ssh: connect to host 172.31.20.12 port 22: No route to host".to_string());
    h.containers.clear();
    let skip = DiffOptions {
        skip_unreachable: true,
        ..DiffOptions::default()
    };
    let p = plan::build(&wanted, &o, skip.clone(), Vec::new()).unwrap();
    let touched: Vec<&str> = p.effective().map(|c| c.node.as_str()).collect();
    assert_eq!(touched, [REMOTE_1]);
    assert!(p.changes.iter().all(|c| c.host.as_str() != REMOTE_HOST_2));
    assert!(
        p.notes
            .iter()
            .any(|n| n.starts_with("Skipped `172.31.20.12` (ssh: connect")),
        "{:?}",
        p.notes
    );
    // The head's host cannot be skipped.
    let mut o = converged(&desired(&[]));
    host(&mut o, HEAD_HOST).reachable = false;
    assert!(matches!(
        plan::build(&wanted, &o, skip, Vec::new()),
        Err(PlanError::Incomplete(hosts)) if hosts.len() == 1 && hosts[0].0.as_str() == HEAD_HOST
    ));
}

/// `--target`: only the named nodes, groups or hosts change; the others'
/// changes are left for a later plan, and the plan says how many.
#[test]
fn targets_narrow_the_plan() {
    let wanted = desired(&["workers.remote.cpus=2", "workers.local.cpus=2"]);
    let o = converged(&desired(&[]));
    let targeted = |targets: &[&str]| -> Vec<String> {
        let options = DiffOptions {
            targets: targets.iter().map(|t| t.to_string()).collect(),
            ..DiffOptions::default()
        };
        let p = plan::build(&wanted, &o, options, Vec::new()).unwrap();
        let mut v: Vec<String> = p.effective().map(|c| c.node.0.clone()).collect();
        v.sort();
        v
    };
    assert_eq!(targeted(&[REMOTE_1]), [REMOTE_1]);
    assert_eq!(targeted(&["remote"]), [REMOTE_1, REMOTE_2]);
    assert_eq!(targeted(&[HEAD_HOST]), [LOCAL_1, LOCAL_2]);
    assert_eq!(targeted(&[]).len(), 4);
    let r = run(seedcore().args([
        "plan",
        "-c",
        EXAMPLE,
        "--observed",
        CONVERGED,
        "--set",
        "workers.remote.cpus=2",
        "--target",
        REMOTE_1,
    ]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("Targeted: `seedcore-ray-remote-172.31.20.11-1`. 1 other change(s) are left for a later plan."), "{}", r.stdout);
    assert!(
        r.stdout
            .contains("Plan: 1 to add, 0 to change, 1 to destroy."),
        "{}",
        r.stdout
    );
}

#[test]
fn more_cpus_than_a_host_has_is_refused_unless_allowed() {
    let wanted = desired(&[]);
    let mut o = converged(&wanted);
    host(&mut o, REMOTE_HOST_1).engine.as_mut().unwrap().cpus = 2;
    let e = plan::diff(&wanted, &o, DiffOptions::default()).unwrap_err();
    assert_eq!(
        e,
        PlanError::Cpus(vec![(HostName(REMOTE_HOST_1.to_string()), 4, 2)])
    );
    insta::assert_snapshot!("cpus_oversubscribed", e.to_string());
    let allow = DiffOptions {
        oversubscribe_cpus: true,
        ..DiffOptions::default()
    };
    // One node can never have more CPUs than its host: Docker refuses it.
    assert_eq!(
        plan::diff(&wanted, &o, allow.clone()).unwrap_err(),
        PlanError::Cpus(vec![(HostName(REMOTE_HOST_1.to_string()), 4, 2)])
    );
    // Several nodes that each fit may share a host when allowed.
    let mut o = converged(&wanted);
    let head_host = wanted.head().host.0.clone();
    host(&mut o, &head_host).engine.as_mut().unwrap().cpus = 3;
    assert!(plan::diff(&wanted, &o, DiffOptions::default()).is_err());
    let allowed = plan::diff(&wanted, &o, allow).unwrap();
    assert!(allowed.iter().all(|c| c.action == Action::NoOp));
}

// ---------------------------------------------------------------------------
// Schedule

fn step_index(p: &Plan, want: impl Fn(&Step) -> bool) -> Vec<petgraph::graph::NodeIndex> {
    p.graph
        .graph
        .node_indices()
        .filter(|i| want(&p.graph.graph[*i]))
        .collect()
}

fn before(p: &Plan, a: petgraph::graph::NodeIndex, b: petgraph::graph::NodeIndex) -> bool {
    has_path_connecting(&p.graph.graph, a, b, None)
}

/// Every edge of the order holds: each step comes after its dependencies.
fn assert_order_respects_edges(p: &Plan) {
    let order = p.graph.ordered();
    assert_eq!(order.len(), p.graph.len(), "every step is ordered once");
    for (n, i) in order.iter().enumerate() {
        for d in p.graph.dependencies(*i) {
            let pos = order.iter().position(|o| *o == d).unwrap();
            assert!(
                pos < n,
                "{} runs before its dependency {}",
                p.graph.graph[*i],
                p.graph.graph[d]
            );
        }
    }
}

#[test]
fn the_heads_gcs_wait_precedes_every_worker_start_and_serve_gates_nothing() {
    for observed in [empty(&desired(&[])), {
        let mut o = converged(&desired(&[]));
        find(&mut o, HEAD).state = "exited".to_string();
        o
    }] {
        let p = build(&desired(&[]), &observed);
        assert_order_respects_edges(&p);
        let head_wait = step_index(
            &p,
            |s| matches!(s, Step::WaitGcs { node, .. } if node.as_str() == HEAD),
        );
        assert_eq!(head_wait.len(), 1);
        // Serve's proxy and Ray's ALIVE for the head follow the GCS; nothing
        // waits for Serve.
        for wait in [
            step_index(&p, |s| matches!(s, Step::WaitServe { .. })),
            step_index(
                &p,
                |s| matches!(s, Step::WaitReady { node, .. } if node.as_str() == HEAD),
            ),
        ] {
            assert_eq!(wait.len(), 1);
            assert!(before(&p, head_wait[0], wait[0]));
        }
        let serve = step_index(&p, |s| matches!(s, Step::WaitServe { .. }))[0];
        assert_eq!(
            p.graph
                .graph
                .neighbors_directed(serve, petgraph::Direction::Outgoing)
                .count(),
            0
        );
        let worker_starts = step_index(
            &p,
            |s| matches!(s, Step::Start { node, .. } if node.as_str() != HEAD),
        );
        assert_eq!(worker_starts.len(), 4);
        for s in worker_starts {
            assert!(
                before(&p, head_wait[0], s),
                "{} does not wait for the head",
                p.graph.graph[s]
            );
        }
    }
}

#[test]
fn removes_precede_creates_on_the_same_host() {
    // Local workers change (replace = remove + create) and one is removed.
    let wanted = desired(&["workers.local.cpus=2"]);
    let observed = converged(&desired(THREE_LOCAL));
    let p = build(&wanted, &observed);
    assert_order_respects_edges(&p);
    let removes = step_index(&p, |s| matches!(s, Step::Remove { .. }));
    let creates = step_index(&p, |s| matches!(s, Step::Create { .. }));
    assert_eq!(
        removes.len(),
        3,
        "local-1, local-2 replaced, local-3 removed"
    );
    assert_eq!(creates.len(), 2);
    // Replacements roll one at a time (`rollout.max_unavailable = 1`): a later wave's
    // worker keeps running (on its own ports) while an earlier one is replaced.
    let wave = |i: petgraph::graph::NodeIndex| {
        let node = p.graph.graph[i].node().cloned();
        p.rollouts
            .iter()
            .flat_map(|r| r.waves.iter().enumerate())
            .find(|(_, w)| node.as_ref().is_some_and(|n| w.contains(n)))
            .map(|(k, _)| k)
    };
    assert_eq!(p.rollouts.len(), 1, "local-1 and local-2 roll");
    for r in &removes {
        for c in &creates {
            let later = matches!((wave(*r), wave(*c)), (Some(a), Some(b)) if a > b);
            if p.graph.graph[*r].host() == p.graph.graph[*c].host() && !later {
                assert!(
                    before(&p, *r, *c),
                    "{} is not before {}",
                    p.graph.graph[*r],
                    p.graph.graph[*c]
                );
            }
        }
    }
    insta::assert_snapshot!(
        "plan_replace_and_remove_text",
        render::text(&p, Style::default())
    );
}

#[test]
fn a_worker_leaving_a_running_cluster_is_drained_first() {
    let p = build(&desired(&[]), &converged(&desired(THREE_LOCAL)));
    let drain = step_index(
        &p,
        |s| matches!(s, Step::Drain { node, .. } if node.as_str() == LOCAL_3),
    );
    let remove = step_index(
        &p,
        |s| matches!(s, Step::Remove { node, .. } if node.as_str() == LOCAL_3),
    );
    assert_eq!((drain.len(), remove.len()), (1, 1));
    assert!(before(&p, drain[0], remove[0]));
    assert_eq!(p.graph.len(), 2, "nothing else to do");
    insta::assert_snapshot!("plan_remove_text", render::text(&p, Style::default()));
}

#[test]
fn on_destroy_every_node_stops_at_once() {
    let wanted = desired(&[]);
    let p = plan::destroy(&wanted, &converged(&wanted), false);
    assert_order_respects_edges(&p);
    assert!(p.changes.iter().all(|c| c.action == Action::Remove));
    assert_eq!(p.summary().destroy, 5);
    let head = step_index(
        &p,
        |s| matches!(s, Step::Remove { node, .. } if node.as_str() == HEAD),
    );
    let workers = step_index(
        &p,
        |s| matches!(s, Step::Remove { node, .. } if node.as_str() != HEAD),
    );
    assert_eq!((head.len(), workers.len()), (1, 4));
    assert_eq!(p.graph.len(), 5, "no drain when the whole cluster goes");
    // No head runs after it: nothing waits for anything.
    assert_eq!(p.graph.graph.edge_count(), 0, "{p:?}");
    insta::assert_snapshot!("plan_destroy_text", render::text(&p, Style::default()));
}

#[test]
fn destroy_workers_only_keeps_the_head_and_drains_the_workers() {
    let wanted = desired(&[]);
    let p = plan::destroy(&wanted, &converged(&wanted), true);
    assert_order_respects_edges(&p);
    let head = p.changes.iter().find(|c| c.node.as_str() == HEAD).unwrap();
    assert_eq!(head.action, Action::NoOp);
    assert!(step_index(&p, |s| s.node().is_some_and(|n| n.as_str() == HEAD)).is_empty());
    for w in [LOCAL_1, LOCAL_2, REMOTE_1, REMOTE_2] {
        let drain = step_index(
            &p,
            |s| matches!(s, Step::Drain { node, .. } if node.as_str() == w),
        );
        let remove = step_index(
            &p,
            |s| matches!(s, Step::Remove { node, .. } if node.as_str() == w),
        );
        assert_eq!((drain.len(), remove.len()), (1, 1), "{w}");
        assert!(
            before(&p, drain[0], remove[0]),
            "{w} is removed before it is drained"
        );
    }
}

#[test]
fn destroy_touches_only_this_clusters_containers() {
    let wanted = desired(&[]);
    let mut o = converged(&wanted);
    host(&mut o, HEAD_HOST).containers.push(stranger(
        "other-ray-head",
        &[(LABEL_CLUSTER, "other"), ("io.seedcore.role", "head")],
    ));
    host(&mut o, REMOTE_HOST_1)
        .containers
        .push(stranger("postgres", &[]));
    let p = plan::destroy(&wanted, &o, false);
    let removed: BTreeSet<&str> = p.changes.iter().map(|c| c.node.as_str()).collect();
    assert_eq!(
        removed,
        BTreeSet::from([HEAD, LOCAL_1, LOCAL_2, REMOTE_1, REMOTE_2])
    );
}

#[test]
fn restart_replaces_the_chosen_nodes_and_a_head_takes_its_workers() {
    let wanted = desired(&[]);
    let observed = converged(&wanted);
    let restart = |names: &[&str]| -> Vec<(String, Action, String)> {
        let options = DiffOptions {
            restart: names.iter().map(|n| NodeName(n.to_string())).collect(),
            ..DiffOptions::default()
        };
        plan::diff(&wanted, &observed, options)
            .unwrap()
            .into_iter()
            .filter(|c| c.action != Action::NoOp)
            .map(|c| (c.cause(), c.node.0, c.action))
            .map(|(cause, n, a)| (n, a, cause))
            .collect()
    };
    assert_eq!(
        restart(&[REMOTE_2]),
        [(
            REMOTE_2.to_string(),
            Action::Replace,
            "restart requested".to_string()
        )]
    );
    let head = restart(&[HEAD]);
    assert_eq!(
        head[0],
        (
            HEAD.to_string(),
            Action::Replace,
            "restart requested".to_string()
        )
    );
    assert_eq!(head.len(), 5);
    for (node, action, cause) in &head[1..] {
        assert_eq!(
            (*action, cause.as_str()),
            (Action::Replace, HEAD_REPLACED),
            "{node}"
        );
    }
}

#[test]
fn a_moved_head_removes_the_old_one_after_its_workers() {
    // The head moves and the configuration keeps the cluster's identity: the
    // new head is created on 10.9.9.9, the old one on 172.31.17.143 is an
    // orphan, and every worker is replaced.
    let old = desired(&[]);
    let pin = format!("cluster.id={}", old.cluster.id);
    let wanted = desired(&["head.host=10.9.9.9", &pin]);
    let mut observed = converged(&old);
    observed
        .hosts
        .insert(HostName("10.9.9.9".to_string()), reachable(Vec::new()));
    let p = build(&wanted, &observed);
    assert_order_respects_edges(&p);
    let old_head = step_index(
        &p,
        |s| matches!(s, Step::Remove { node, host, .. } if node.as_str() == HEAD && host.as_str() == HEAD_HOST),
    );
    assert_eq!(old_head.len(), 1);
    for w in step_index(
        &p,
        |s| matches!(s, Step::Remove { node, .. } if node.as_str() != HEAD),
    ) {
        assert!(before(&p, w, old_head[0]));
    }
    let c = p
        .changes
        .iter()
        .find(|c| c.action == Action::Remove)
        .unwrap();
    assert_eq!(
        (c.node.as_str(), c.cause().as_str()),
        (HEAD, "moved to `10.9.9.9`")
    );

    // Without the pinned identity the old nodes are another cluster's: left
    // alone, and the plan refuses to take their names, saying how to adopt them.
    let unpinned = desired(&["head.host=10.9.9.9"]);
    let e = plan::build(&unpinned, &observed, DiffOptions::default(), Vec::new()).unwrap_err();
    insta::assert_snapshot!("moved_head_without_identity", e.to_string());
}

#[test]
fn plans_are_deterministic() {
    let wanted = desired(&["workers.local.cpus=2", "head.image=rayproject/ray:2.61.0"]);
    let observed = converged(&desired(THREE_LOCAL));
    let a = build(&wanted, &observed);
    let b = build(&wanted, &observed);
    let steps = |p: &Plan| -> Vec<String> {
        p.graph
            .ordered()
            .into_iter()
            .map(|i| format!("{} on {}", p.graph.graph[i], p.graph.graph[i].host()))
            .collect()
    };
    assert_eq!(steps(&a), steps(&b));
    assert_eq!(
        render::text(&a, Style::default()),
        render::text(&b, Style::default())
    );
    assert_eq!(render::json(&a), render::json(&b));
    assert_eq!(render::dot(&a), render::dot(&b));
}

#[test]
fn pull_steps_precede_creates_when_images_are_missing() {
    let wanted = desired(&[]);
    let mut o = empty(&wanted);
    host(&mut o, REMOTE_HOST_1).images = Some(
        [("rayproject/ray:2.60.0".to_string(), None)]
            .into_iter()
            .collect(),
    );
    let p = build(&wanted, &o);
    let pulls = step_index(&p, |s| matches!(s, Step::PullImage { .. }));
    assert_eq!(pulls.len(), 1);
    let create = step_index(
        &p,
        |s| matches!(s, Step::Create { node, .. } if node.as_str() == REMOTE_1),
    );
    assert!(before(&p, pulls[0], create[0]));
    assert!(p.notes.contains(
        &"Image `rayproject/ray:2.60.0` is missing on `172.31.20.11`: apply will pull it there."
            .to_string()
    ));
}

#[test]
fn push_steps_carry_only_the_missing_layers_and_a_rebuilt_image_replaces_its_nodes() {
    use seedcore::transfer::{chain_ids, SavedLayer, SourceImage};
    let wanted = desired(&["cluster.image_source=push"]);
    let image = "rayproject/ray:2.60.0".to_string();
    let diffs: Vec<String> = (1..=4).map(|i| format!("sha256:{i:064x}")).collect();
    let chains = chain_ids(&diffs);
    let source = SourceImage {
        image: image.clone(),
        id: "sha256:new".to_string(),
        layers: diffs
            .iter()
            .zip(&chains)
            .enumerate()
            .map(|(i, (d, c))| SavedLayer {
                diff_id: d.clone(),
                chain_id: c.clone(),
                path: format!("l{i}/layer.tar"),
                bytes: if i == 3 { 6_000 } else { 300_000_000 },
            })
            .collect(),
        other_bytes: 4_000,
        ..Default::default()
    };
    // Remote host 1 lacks the image but has the first three layers; the
    // others run containers of an older build of the same name.
    let mut o = empty(&wanted);
    o.sources.insert(image.clone(), source);
    let h = host(&mut o, REMOTE_HOST_1);
    h.images = Some([(image.clone(), None)].into_iter().collect());
    h.layers = Some(chains[..3].iter().cloned().collect());
    let p = build(&wanted, &o);
    let pushes: Vec<&Step> = p
        .graph
        .graph
        .node_weights()
        .filter(|s| matches!(s, Step::PushImage { .. }))
        .collect();
    assert_eq!(pushes.len(), 1, "{pushes:?}");
    let Step::PushImage {
        host,
        bytes,
        layers,
        of,
        ..
    } = pushes[0]
    else {
        unreachable!()
    };
    assert_eq!((host.as_str(), *layers, *of), (REMOTE_HOST_1, 1, 4));
    assert_eq!(*bytes, 4_000 + 6_144 + 512);
    assert!(p
        .graph
        .graph
        .node_weights()
        .all(|s| !matches!(s, Step::PullImage { .. })));
    let push = step_index(&p, |s| matches!(s, Step::PushImage { .. }));
    let create = step_index(
        &p,
        |s| matches!(s, Step::Create { node, .. } if node.as_str() == REMOTE_1),
    );
    assert!(before(&p, push[0], create[0]));
    assert!(
        p.notes.iter().any(|n| n
            == "Image `rayproject/ray:2.60.0` will be pushed from this machine to `172.31.20.11`: 1 of its 4 layers, 10.4 KiB."),
        "{:?}",
        p.notes
    );
    let text = render::text(&p, Style::default());
    assert!(
        text.contains("push rayproject/ray:2.60.0 (1 of 4 layers, 10.4 KiB)"),
        "{text}"
    );

    // Containers that run another image ID than this machine's are replaced.
    let mut o = converged(&wanted);
    o.sources.insert(
        image.clone(),
        SourceImage {
            image: image.clone(),
            id: "sha256:1111111111112222".to_string(),
            layers: Vec::new(),
            other_bytes: 0,
            ..Default::default()
        },
    );
    for h in o.hosts.values_mut() {
        h.images = Some([(image.clone(), Some("sha256:1111111111112222".to_string()))].into());
    }
    find(&mut o, REMOTE_2).image_id = Some("sha256:0000000000009999".to_string());
    find(&mut o, LOCAL_1).image_id = Some("sha256:1111111111112222".to_string());
    let p = build(&wanted, &o);
    let replaced: Vec<(String, String)> = p
        .effective()
        .map(|c| (c.node.0.clone(), c.cause()))
        .collect();
    assert_eq!(
        replaced,
        [(
            REMOTE_2.to_string(),
            "image rebuilt: it runs 000000000000, this machine has 111111111111".to_string()
        )]
    );
}

#[test]
fn image_source_per_group_and_a_relay_from_a_cluster_host() {
    use seedcore::transfer::SourceImage;
    let image = "rayproject/ray:2.60.0".to_string();
    // The cluster pulls; only the `remote` group's image is pushed.
    let wanted = desired(&["workers.remote.image_source=push"]);
    let pushed: Vec<&str> = wanted.pushed.iter().map(|n| n.as_str()).collect();
    assert_eq!(pushed, [REMOTE_1, REMOTE_2]);
    let mut o = empty(&wanted);
    o.sources.insert(
        image.clone(),
        SourceImage {
            image: image.clone(),
            id: "sha256:abc".to_string(),
            // This machine lacks it: relayed from the head's host.
            from: Some(HEAD_HOST.to_string()),
            layers: vec![seedcore::transfer::SavedLayer {
                diff_id: "sha256:1".to_string(),
                chain_id: "sha256:1".to_string(),
                path: "l/layer.tar".to_string(),
                bytes: 1000,
            }],
            ..Default::default()
        },
    );
    for h in [HEAD_HOST, REMOTE_HOST_1, REMOTE_HOST_2] {
        host(&mut o, h).images = Some([(image.clone(), None)].into_iter().collect());
        host(&mut o, h).layers = Some(Default::default());
    }
    let p = build(&wanted, &o);
    let mut steps: Vec<String> = p
        .graph
        .graph
        .node_weights()
        .filter(|s| matches!(s, Step::PushImage { .. } | Step::PullImage { .. }))
        .map(|s| format!("{} {}", s.verb(), s.host()))
        .collect();
    steps.sort();
    assert_eq!(
        steps,
        [
            format!("pull {HEAD_HOST}"),
            format!("push {REMOTE_HOST_1}"),
            format!("push {REMOTE_HOST_2}"),
        ]
    );
    assert!(
        p.notes.iter().any(|n| n.starts_with(&format!(
            "Image `{image}` will be pushed from `{HEAD_HOST}` (relayed through this machine) to `{REMOTE_HOST_1}`: "
        ))),
        "{:?}",
        p.notes
    );

    // The head's own override wins over the cluster's.
    let wanted = desired(&["cluster.image_source=push", "head.image_source=pull"]);
    assert!(!wanted.pushed.iter().any(|n| n.as_str() == HEAD));
    assert!(wanted.pushed.iter().any(|n| n.as_str() == LOCAL_1));
}

// ---------------------------------------------------------------------------
// Markdown size

#[test]
fn markdown_of_a_huge_plan_is_truncated_below_the_comment_limit() {
    let mut hosts = Vec::new();
    for i in 0..200 {
        hosts.push(format!("\"10.0.{}.{}\"", i / 100, i % 100 + 1));
    }
    let text = format!(
        "[head]\nhost = \"10.1.0.1\"\n\n[workers.big]\nhosts = [{}]\ncount = 1\n",
        hosts.join(", ")
    );
    let loaded = config::parse("big.toml", &text, &[]).unwrap();
    let wanted = topology::lower_fresh(&loaded.config).unwrap();
    assert_eq!(wanted.nodes.len(), 201);
    let p = build(&wanted, &empty(&wanted));
    let md = render::markdown(&p);
    assert!(
        md.chars().count() < render::MARKDOWN_LIMIT,
        "{} characters",
        md.chars().count()
    );
    assert!(
        md.contains("_The plan is too long for a comment and was truncated after "),
        "no truncation notice"
    );
    assert!(md.contains("of 201 hosts: run `seedcore plan` for the whole of it._"));
    assert!(md.starts_with(
        "### seedcore plan: cluster `seedcore`\n\n**Plan: 201 to add, 0 to change, 0 to destroy.**\n"
    ));
    // The text rendering is never truncated.
    assert!(render::text(&p, Style::default()).len() > render::MARKDOWN_LIMIT);
}

/// The same limit must hold when the summary table alone is too long: today
/// only the per-host sections are cut, so 700 hosts give about 84,000
/// characters. Un-ignore once `render::markdown` bounds the table too.
#[test]
fn markdown_stays_below_the_limit_even_when_the_summary_table_is_huge() {
    let hosts: Vec<String> = (0..700)
        .map(|i| format!("\"10.0.{}.{}\"", i / 200, i % 200 + 1))
        .collect();
    let text = format!(
        "[head]\nhost = \"10.1.0.1\"\n\n[workers.big]\nhosts = [{}]\n",
        hosts.join(", ")
    );
    let loaded = config::parse("huge.toml", &text, &[]).unwrap();
    let wanted = topology::lower_fresh(&loaded.config).unwrap();
    let md = render::markdown(&build(&wanted, &empty(&wanted)));
    assert!(
        md.chars().count() < render::MARKDOWN_LIMIT,
        "{} characters",
        md.chars().count()
    );
}

#[test]
fn markdown_of_a_small_plan_is_whole() {
    let wanted = desired(&[]);
    let md = render::markdown(&build(&wanted, &empty(&wanted)));
    assert!(!md.contains("truncated"));
    assert!(md.trim_end().ends_with("</details>"));
}

/// The preflight table as the operator reads it: hosts by checks, each
/// failure with its fix, then the warnings.
#[test]
fn the_preflight_table_names_each_failure_and_its_fix() {
    use seedcore::checks::{self, Check, Kind, Report};
    let d = desired(&[]);
    let routes = checks::routes(&d);
    let mut checks: Vec<Check> = d
        .hosts()
        .into_iter()
        .flat_map(|h| {
            [Kind::Ports, Kind::Engine, Kind::Capacity].map(|kind| Check {
                host: h.clone(),
                kind,
                ok: true,
                detail: String::new(),
                fix: None,
            })
        })
        .collect();
    checks[0] = Check {
        ok: false,
        detail:
            "port 6380 (GCS of `seedcore-ray-head`) is held by process `redis-server` (PID 4242)"
                .to_string(),
        fix: Some(
            "stop what holds port 6380 on `172.31.17.143`, or give this cluster other ports"
                .to_string(),
        ),
        ..checks[0].clone()
    };
    for (i, r) in routes.iter().enumerate() {
        let result = if i == 1 {
            Err("no connection within 2 s (refused, dropped or filtered)".to_string())
        } else {
            Ok(())
        };
        checks.push(checks::route_check(r, result));
    }
    let report = Report {
        hosts: d.hosts(),
        checks,
        warnings: vec!["the dashboard (8265) and the Ray client server (10001) listen on every address of `172.31.17.143`".to_string()],
        skipped: false,
        alive_in_ray: Vec::new(),
    };
    assert!(report.failed());
    insta::assert_snapshot!("preflight_table", report.render());
    // Routes between kept nodes that Ray lists ALIVE are not tried.
    let (tried, kept): (Vec<_>, Vec<_>) = report
        .checks
        .iter()
        .cloned()
        .partition(|c| !matches!(c.kind, checks::Kind::ToHead | checks::Kind::FromHead));
    let kept_report = Report {
        checks: tried,
        alive_in_ray: kept
            .iter()
            .zip(routes.iter())
            .map(|(_, r)| checks::route_shown_by_ray(r))
            .collect(),
        ..report.clone()
    };
    assert_eq!(kept_report.failures().count(), 1, "only the port held");
    insta::assert_snapshot!("preflight_table_alive_in_ray", kept_report.render());
    assert_eq!(
        Report::skipped().render(),
        "Preflight: skipped (--skip-preflight): ports and connections were not checked.\n"
    );
}

/// Labels on the hosts are untrusted: an escape sequence or a backtick in
/// one reaches neither the terminal nor the pull-request comment raw.
#[test]
fn hostile_labels_reach_neither_terminal_nor_markdown_raw() {
    use seedcore::model::{LABEL_CLUSTER_ID, LABEL_HEAD, LABEL_NODE};
    let wanted = desired(&[]);
    let mut o = converged(&wanted);
    let evil = "x`</details><script>alert(1)</script>\u{1b}[2J\u{1b}]0;pwned\u{7}";
    host(&mut o, REMOTE_HOST_1).containers.push(stranger(
        "seedcore-ray-other-1",
        &[
            (LABEL_CLUSTER, "seedcore"),
            (LABEL_CLUSTER_ID, "other"),
            (LABEL_NODE, "seedcore-ray-other-1"),
            (LABEL_HEAD, evil),
        ],
    ));
    let p = build(&wanted, &o);
    let text = render::text(&p, Style { color: false });
    let md = render::markdown(&p);
    let json = render::json(&p);
    for (what, out) in [("text", &text), ("markdown", &md)] {
        assert!(!out.contains('\u{1b}'), "{what} carries ESC:\n{out}");
        assert!(!out.contains('\u{7}'), "{what} carries BEL:\n{out}");
        assert!(
            !out.contains("x`"),
            "{what}: a backtick closes the code span:\n{out}"
        );
    }
    assert!(
        !md.contains("<script>") && !md.contains("</details><"),
        "{md}"
    );
    assert!(
        text.contains("Another cluster `seedcore` (id `other`)"),
        "{text}"
    );
    // JSON carries the value escaped by the JSON encoder, never raw.
    assert!(!json.contains('\u{1b}'));
}

// ---------------------------------------------------------------------------
// GPUs, custom resources, labels and memory per group

fn group_config(extra: &str) -> DesiredState {
    let text = format!(
        "[cluster]\nname = \"gpu\"\n[head]\nhost = \"10.0.0.1\"\n[workers.cpu]\nhosts = [\"10.0.0.2\"]\n[workers.gpu]\nhosts = [\"10.0.0.3\"]\nshm_size = \"4g\"\n{extra}"
    );
    let loaded = config::parse("gpu.toml", &text, &[]).unwrap_or_else(|e| panic!("{e}"));
    topology::lower_fresh(&loaded.config).unwrap()
}

#[test]
fn a_gpu_group_gets_a_device_request_and_ray_flags_and_only_its_nodes_change() {
    let wanted = group_config(
        "gpus = [\"0\", \"GPU-3f2a\"]\nresources = { accelerator_x = 1, ssd = 0.5 }\nlabels = { zone = \"rack-2\", \"example.com/tier\" = \"fast\" }\nmemory = \"8g\"\nobject_store_memory = \"2g\"\n",
    );
    let node = wanted
        .nodes
        .iter()
        .find(|n| n.group.as_deref() == Some("gpu"))
        .unwrap();
    let labels = node.labels(&wanted.cluster);
    let body = seedcore::engine::docker::container_body(node, &labels);
    let host = body.host_config.clone().unwrap();
    let view = serde_json::json!({
        "device_requests": host.device_requests,
        "memory": host.memory,
        "shm_size": host.shm_size,
        "ray_start": node.ray_start.iter().skip(4).collect::<Vec<_>>(),
    });
    insta::assert_json_snapshot!("gpu_group_container", view);

    // A count and "all" become counts for the runtime (-1: every GPU).
    for (gpus, count, flag) in [
        ("2", Some(2), Some("--num-gpus=2")),
        ("\"all\"", Some(-1), None),
    ] {
        let d = group_config(&format!("gpus = {gpus}\n"));
        let n = d
            .nodes
            .iter()
            .find(|n| n.group.as_deref() == Some("gpu"))
            .unwrap();
        let b = seedcore::engine::docker::container_body(n, &BTreeMap::new());
        let req = &b.host_config.unwrap().device_requests.unwrap()[0];
        assert_eq!(req.count, count);
        assert_eq!(
            n.ray_start
                .iter()
                .find(|a| a.starts_with("--num-gpus"))
                .map(String::as_str),
            flag
        );
    }
    // The CPU group has no device request and none of those flags.
    let cpu = wanted
        .nodes
        .iter()
        .find(|n| n.group.as_deref() == Some("cpu"))
        .unwrap();
    let b = seedcore::engine::docker::container_body(cpu, &BTreeMap::new());
    assert_eq!(b.host_config.unwrap().device_requests, None);
    assert!(!cpu.ray_start.iter().any(|a| a.starts_with("--resources")));

    // A label change is a field diff on that group's nodes only.
    let before = group_config("labels = { zone = \"rack-2\" }\n");
    let after = group_config("labels = { zone = \"rack-3\" }\n");
    let p = build(&after, &converged(&before));
    let changed: Vec<(String, String)> = p
        .effective()
        .map(|c| (c.node.0.clone(), format!("{:?}", c.action)))
        .collect();
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert!(changed[0].0.contains("-gpu-"), "{changed:?}");
    let text = render::text(&p, Style::default());
    assert!(text.contains("--labels"), "{text}");
    assert!(text.contains("zone=rack-2"), "{text}");
    assert!(text.contains("zone=rack-3"), "{text}");
    // Unchanged specs without the new keys keep their hash (no replacement on upgrade).
    let plain = group_config("");
    assert!(!plain.nodes[0].canonical_json().contains("gpus"));
    assert!(!plain.nodes[0].canonical_json().contains("memory_bytes"));
}

#[test]
fn bad_gpus_resources_labels_and_rollout_are_refused_with_the_fix() {
    let bad = [
        "gpus = 0\n",
        "gpus = [\"0; rm -rf /\"]\n",
        "resources = { CPU = 2 }\n",
        "resources = { \"a b\" = 1 }\n",
        "resources = { x = -1 }\n",
        "labels = { \"ray.io/node-type\" = \"x\" }\n",
        "labels = { zone = \"a,b=c\" }\n",
        "object_store_memory = \"8g\"\n",
        "memory = \"10k\"\n",
    ];
    let mut out = String::new();
    for extra in bad {
        let text = format!(
            "[head]\nhost = \"10.0.0.1\"\n[workers.gpu]\nhosts = [\"10.0.0.3\"]\nshm_size = \"4g\"\n{extra}"
        );
        let e = config::parse("gpu.toml", &text, &[]).unwrap_err();
        out.push_str(&format!("--- {extra}{e}\n"));
    }
    for v in ["0", "\"150%\"", "\"x\""] {
        let text = format!("[head]\nhost = \"10.0.0.1\"\n[rollout]\nmax_unavailable = {v}\n");
        let e = config::parse("r.toml", &text, &[]).unwrap_err();
        out.push_str(&format!("--- max_unavailable = {v}\n{e}\n"));
    }
    insta::assert_snapshot!("bad_group_resources", out);
}

// ---------------------------------------------------------------------------
// What a plan interrupts; rolling replacement

/// Ray lists every node of `desired` ALIVE (node IDs `id-<name>`); a job
/// `train-7` with 2 actors lives on `busy`.
fn with_work(o: &mut ObservedState, desired: &DesiredState, busy: &str) {
    let nodes: Vec<serde_json::Value> = desired
        .nodes
        .iter()
        .map(|n| {
            serde_json::json!({
                "node_id": format!("id-{}", n.name),
                "node_ip": n.node_ip,
                "node_name": n.name.0,
                "state": "ALIVE",
                "is_head_node": n.role == seedcore::model::Role::Head,
            })
        })
        .collect();
    o.ray = Some(serde_json::from_value(serde_json::Value::Array(nodes)).unwrap());
    o.work = Some(
        serde_json::from_value(serde_json::json!({
            "nodes": { format!("id-{busy}"): { "jobs": ["train-7"], "actors": 2, "placement_groups": 1 } },
            "all": { "jobs": ["train-7", "eval"], "actors": 5, "placement_groups": 1 },
        }))
        .unwrap(),
    );
}

#[test]
fn the_plan_names_what_stopping_a_node_interrupts() {
    let old = desired(&[]);
    let mut o = converged(&old);
    with_work(&mut o, &old, REMOTE_2);
    // Only the remote group changes: its busy worker names the job, the other none.
    let p = build(&desired(&["workers.remote.cpus=2"]), &o);
    let text = render::text(&p, Style::default());
    assert!(
        text.contains(&format!(
            "  # {REMOTE_2} on {REMOTE_HOST_2} must be replaced\n  # (cpus 4 -> 2)\n  # interrupts: 1 running job (`train-7`), 2 actors, 1 placement group\n"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "  # {REMOTE_1} on {REMOTE_HOST_1} must be replaced\n  # (cpus 4 -> 2)\n  # interrupts: nothing running\n"
        )),
        "{text}"
    );
    let json: serde_json::Value = serde_json::from_str(&render::json(&p)).unwrap();
    let busy = json["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["node"] == REMOTE_2)
        .unwrap();
    assert_eq!(
        busy["interrupts"],
        serde_json::json!({"known": true, "jobs": ["train-7"], "actors": 2, "placement_groups": 1})
    );
    let md = render::markdown(&p);
    assert!(
        md.contains("interrupts: 1 running job (`train-7`), 2 actors"),
        "{md}"
    );

    // A replaced head interrupts everything, said once.
    let p = build(&desired(&["head.cpus=3"]), &o);
    let notes: Vec<&String> = p
        .notes
        .iter()
        .filter(|n| n.contains("interrupts everything"))
        .collect();
    assert_eq!(
        notes,
        ["Stopping the head interrupts everything on the cluster: 2 running jobs (`train-7`, `eval`), 5 actors, 1 placement group."]
    );

    // The state API did not answer: unknown, and the plan is still made.
    o.work = None;
    let p = build(&desired(&["workers.remote.cpus=2"]), &o);
    let text = render::text(&p, Style::default());
    assert!(
        text.contains("  # interrupts: unknown (Ray's state API did not answer)\n"),
        "{text}"
    );
}

#[test]
fn replaced_workers_roll_in_waves_each_ready_before_the_next_drains() {
    let o = converged(&desired(THREE_LOCAL));
    let wanted = desired(&["workers.local.count=3", "workers.local.cpus=2"]);
    let p = build(&wanted, &o);
    assert_order_respects_edges(&p);
    assert_eq!(p.rollouts.len(), 1, "{:?}", p.rollouts);
    let waves: Vec<Vec<&str>> = p.rollouts[0]
        .waves
        .iter()
        .map(|w| w.iter().map(|n| n.as_str()).collect())
        .collect();
    assert_eq!(waves, [[LOCAL_1], [LOCAL_2], [LOCAL_3]]);
    let at = |want: &dyn Fn(&Step) -> bool| step_index(&p, |s| want(s))[0];
    for (prev, next) in [(LOCAL_1, LOCAL_2), (LOCAL_2, LOCAL_3)] {
        let ready = at(&|s| matches!(s, Step::WaitReady { node, .. } if node.as_str() == prev));
        let drain = at(&|s| matches!(s, Step::Drain { node, .. } if node.as_str() == next));
        assert!(
            before(&p, ready, drain),
            "{prev} ALIVE before {next} drains"
        );
    }
    assert!(p.notes.iter().any(|n| n.starts_with(
        "Workers of group `local` are replaced in 3 waves of at most 1 (`rollout.max_unavailable`)"
    )));

    // Two at a time: two waves.
    let opts = DiffOptions {
        max_unavailable: config::MaxUnavailable::Count(2),
        ..Default::default()
    };
    let p2 = plan::build(&wanted, &o, opts, Vec::new()).unwrap();
    assert_eq!(p2.rollouts[0].waves.len(), 2);
    // A percentage of the group: 100% is one wave, no rollout.
    let opts = DiffOptions {
        max_unavailable: config::MaxUnavailable::Percent(100),
        ..Default::default()
    };
    assert!(plan::build(&wanted, &o, opts, Vec::new())
        .unwrap()
        .rollouts
        .is_empty());

    // A new image missing on the host: pulled before the first worker is drained (a pull
    // that fails leaves every worker running).
    let new_image = desired(&["workers.local.count=3", "workers.local.image=ray:new"]);
    let mut o2 = o.clone();
    host(&mut o2, HEAD_HOST).images = Some([("ray:new".to_string(), None)].into_iter().collect());
    let p = build(&new_image, &o2);
    let pull = step_index(&p, |s| matches!(s, Step::PullImage { .. }))[0];
    let drain = step_index(
        &p,
        |s| matches!(s, Step::Drain { node, .. } if node.as_str() == LOCAL_1),
    )[0];
    assert!(before(&p, pull, drain), "pull before the first drain");

    // A head replaced too: every worker must rejoin anyway, no rollout.
    let p = build(
        &desired(&[
            "workers.local.count=3",
            "workers.local.cpus=2",
            "head.cpus=3",
        ]),
        &o,
    );
    assert!(p.rollouts.is_empty());
}

// ---------------------------------------------------------------------------
// Ray versions

#[test]
fn ray_versions_outside_the_window_or_without_a_feature_are_refused() {
    use seedcore::compat::check;
    let image = "rayproject/ray:2.60.0".to_string();
    let plain = desired(&[]);
    let labelled = desired(&["workers.remote.labels.zone=rack-1"]);
    let mut out = String::new();
    for (what, d, version, token) in [
        ("in the window", &plain, "2.60.0", true),
        ("newer than tested", &plain, "2.61.1", true),
        ("too old", &plain, "2.9.3", true),
        ("no token auth before 2.52", &plain, "2.51.0", true),
        ("auth off on an old Ray", &plain, "2.30.0", false),
        ("labels before 2.49", &labelled, "2.48.0", false),
        ("unreadable", &plain, "nightly", true),
    ] {
        let versions = [(image.clone(), version.to_string())].into_iter().collect();
        let v = check(d, &versions, token);
        out.push_str(&format!(
            "--- {what} (Ray {version}, token auth {token})\nerrors:\n{}\nnotes:\n{}\n",
            v.errors.join("\n"),
            v.notes.join("\n")
        ));
    }
    // Unknown versions pass.
    assert_eq!(check(&plain, &Default::default(), true), Default::default());
    insta::assert_snapshot!("ray_version_verdicts", out);
}
