//! Stable identity, offline: the edits a reviewer makes to a running
//! cluster's configuration touch only the nodes they concern. Each case
//! starts from the hosts as the base configuration left them (every node
//! running, labelled as seedcore labels it), lowers the edited configuration
//! against that observation exactly as `plan` does (identity and kept ports),
//! and checks the whole diff.

use seedcore::config::{self, Override};
use seedcore::model::{
    DesiredState, EngineInfo, HostName, HostObservation, ObservedContainer, ObservedState,
};
use seedcore::ownership;
use seedcore::plan::{self, Action, DiffOptions, Summary};
use seedcore::topology;
use std::collections::BTreeMap;

const BASE: &str = r#"
[cluster]
name = "idt"
image = "ray:test"
[head]
host = "10.0.0.1"
[workers.local]
hosts = ["10.0.0.1"]
count = 1
[workers.w]
hosts = ["10.0.0.2", "10.0.0.3"]
count = 2
"#;

const HOSTS: [&str; 4] = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"];

fn overrides(sets: &[&str]) -> Vec<Override> {
    sets.iter()
        .map(|s| Override::parse_flag(s).unwrap())
        .collect()
}

/// The configuration with `sets`, lowered against `observed` as `plan` does.
fn settle(sets: &[&str], observed: &ObservedState) -> Result<DesiredState, String> {
    let loaded = config::parse("idt.toml", BASE, &overrides(sets)).map_err(|e| e.to_string())?;
    let identity = ownership::resolve(&loaded.config, observed);
    let kept = ownership::kept_ports(&identity, observed);
    topology::lower(&loaded.config, &identity, &kept)
        .map_err(|e| loaded.source.errors(e).to_string())
}

fn empty() -> ObservedState {
    let mut o = ObservedState::new();
    for h in HOSTS {
        o.hosts.insert(
            HostName(h.to_string()),
            HostObservation {
                reachable: true,
                error: None,
                engine: Some(EngineInfo {
                    id: format!("engine-{h}"),
                    version: "20.10".to_string(),
                    api_version: "1.41".to_string(),
                    cpus: 64,
                    memory_bytes: 1 << 36,
                }),
                images: None,
                layers: None,
                containers: Vec::new(),
                listening: Vec::new(),
            },
        );
    }
    o
}

/// What the hosts hold once `sets` has been applied from nothing.
fn converged(sets: &[&str]) -> ObservedState {
    let mut o = empty();
    let desired = settle(sets, &o).unwrap();
    apply(&mut o, &desired);
    o
}

/// Brings `o` to `desired`, as apply would: IDs of kept containers unchanged.
fn apply(o: &mut ObservedState, desired: &DesiredState) {
    let changes = plan::diff(desired, o, DiffOptions::default()).unwrap();
    let mut next_id = o.hosts.values().flat_map(|h| &h.containers).count() + 1000;
    for c in changes {
        let host = o.hosts.get_mut(&c.host).unwrap();
        if matches!(c.action, Action::Remove | Action::Replace) {
            host.containers.retain(|x| x.name != c.node.0);
        }
        if let (Action::Create | Action::Replace, Some(spec)) = (c.action, &c.after) {
            next_id += 1;
            host.containers.push(ObservedContainer {
                name: spec.name.0.clone(),
                id: format!("{next_id:064x}"),
                image: spec.image.clone(),
                state: "running".to_string(),
                exit_code: None,
                created: None,
                image_id: None,
                labels: spec.labels(&desired.cluster),
            });
        }
    }
}

fn ids(o: &ObservedState) -> BTreeMap<String, String> {
    o.hosts
        .values()
        .flat_map(|h| &h.containers)
        .map(|c| (c.name.clone(), c.id.clone()))
        .collect()
}

/// The effective changes of editing `from` into `to`: (node, action), sorted.
fn edit(from: &ObservedState, to: &[&str]) -> (Summary, Vec<(String, Action)>) {
    let desired = settle(to, from).unwrap();
    let changes = plan::diff(&desired, from, DiffOptions::default()).unwrap();
    let mut effective: Vec<(String, Action)> = changes
        .iter()
        .filter(|c| c.action != Action::NoOp)
        .map(|c| (c.node.0.clone(), c.action))
        .collect();
    effective.sort();
    (Summary::of(&changes), effective)
}

fn summary(add: usize, change: usize, destroy: usize) -> Summary {
    Summary {
        add,
        change,
        destroy,
    }
}

fn created(names: &[&str]) -> Vec<(String, Action)> {
    names
        .iter()
        .map(|n| (n.to_string(), Action::Create))
        .collect()
}

fn removed(names: &[&str]) -> Vec<(String, Action)> {
    names
        .iter()
        .map(|n| (n.to_string(), Action::Remove))
        .collect()
}

#[test]
fn adding_a_host_adds_only_its_nodes() {
    let base = converged(&[]);
    let (s, changes) = edit(&base, &["workers.w.hosts=10.0.0.2,10.0.0.3,10.0.0.4"]);
    assert_eq!(s, summary(2, 0, 0));
    assert_eq!(
        changes,
        created(&["idt-ray-w-10.0.0.4-1", "idt-ray-w-10.0.0.4-2"])
    );
}

#[test]
fn removing_a_host_destroys_only_its_nodes() {
    let base = converged(&[]);
    let (s, changes) = edit(&base, &["workers.w.hosts=10.0.0.3"]);
    assert_eq!(s, summary(0, 0, 2));
    assert_eq!(
        changes,
        removed(&["idt-ray-w-10.0.0.2-1", "idt-ray-w-10.0.0.2-2"])
    );
}

#[test]
fn count_changes_add_and_remove_the_highest_index_per_host() {
    let base = converged(&[]);
    let (s, changes) = edit(&base, &["workers.w.count=3"]);
    assert_eq!(s, summary(2, 0, 0));
    assert_eq!(
        changes,
        created(&["idt-ray-w-10.0.0.2-3", "idt-ray-w-10.0.0.3-3"])
    );

    let mut three = base.clone();
    apply(&mut three, &settle(&["workers.w.count=3"], &base).unwrap());
    let (s, changes) = edit(&three, &[]);
    assert_eq!(s, summary(0, 0, 2));
    assert_eq!(
        changes,
        removed(&["idt-ray-w-10.0.0.2-3", "idt-ray-w-10.0.0.3-3"])
    );
}

#[test]
fn a_new_group_on_the_heads_host_leaves_running_nodes_alone() {
    // `aaa` sorts before `local`: allocated in order from nothing, it would
    // take the local worker's ports. Running nodes keep theirs.
    let base = converged(&[]);
    let before = ids(&base);
    let sets = ["workers.aaa.hosts=10.0.0.1", "workers.aaa.count=2"];
    let (s, changes) = edit(&base, &sets);
    assert_eq!(s, summary(2, 0, 0));
    assert_eq!(
        changes,
        created(&["idt-ray-aaa-10.0.0.1-1", "idt-ray-aaa-10.0.0.1-2"])
    );
    // Applied: every container that was there keeps its ID.
    let mut after = base.clone();
    apply(&mut after, &settle(&sets, &base).unwrap());
    let now = ids(&after);
    for (name, id) in &before {
        assert_eq!(now.get(name), Some(id), "{name} was recreated");
    }
    // And the next plan is empty: the kept ports are stable.
    assert_eq!(edit(&after, &sets).0, summary(0, 0, 0));
}

#[test]
fn a_written_port_is_exactly_the_port_used() {
    let base = converged(&[]);
    let desired = settle(&["workers.w.object_manager_port=9001"], &base).unwrap();
    let argv = |name: &str| {
        desired
            .nodes
            .iter()
            .find(|n| n.name.0 == name)
            .unwrap()
            .ray_start
            .clone()
    };
    // The first node of the group on each host takes it; the next +2.
    for host in ["10.0.0.2", "10.0.0.3"] {
        assert!(argv(&format!("idt-ray-w-{host}-1"))
            .contains(&"--object-manager-port=9001".to_string()));
        assert!(argv(&format!("idt-ray-w-{host}-2"))
            .contains(&"--object-manager-port=9003".to_string()));
    }
    // A written port on the head's host, beside the head and a local worker.
    let desired = settle(&["workers.local.object_manager_port=9001"], &base).unwrap();
    let local = desired
        .nodes
        .iter()
        .find(|n| n.name.0 == "idt-ray-local-10.0.0.1-1")
        .unwrap();
    assert!(local
        .ray_start
        .contains(&"--object-manager-port=9001".to_string()));
    // Only the nodes whose ports changed are replaced.
    let (s, changes) = edit(&base, &["workers.local.object_manager_port=9001"]);
    assert_eq!(s, summary(1, 0, 1));
    assert_eq!(
        changes,
        vec![("idt-ray-local-10.0.0.1-1".to_string(), Action::Replace)]
    );
}

#[test]
fn colliding_written_ports_name_both_claimants_and_a_free_port() {
    let error = settle(
        &[
            "workers.local.object_manager_port=9001",
            "workers.aaa.hosts=10.0.0.1",
            "workers.aaa.object_manager_port=9001",
        ],
        &empty(),
    )
    .unwrap_err();
    insta::assert_snapshot!("colliding_written_ports", error);

    // The command line: exit 1, nothing planned.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seedcore.toml");
    std::fs::write(&path, BASE).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_seedcore"))
        .arg("-c")
        .arg(&path)
        .args([
            "--set",
            "workers.local.object_manager_port=9001",
            "--set",
            "workers.aaa.hosts=10.0.0.1",
            "--set",
            "workers.aaa.object_manager_port=9001",
            "validate",
        ])
        .env_remove("HEAD_IP_OVERRIDE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("idt-ray-aaa-10.0.0.1-1") && stderr.contains("idt-ray-local-10.0.0.1-1"),
        "{stderr}"
    );
    assert!(stderr.contains("is free on `10.0.0.1`"), "{stderr}");
}

/// Kept ports never collide with written ones: a node whose recorded port
/// is now written for another group moves, the group that wrote it gets it.
#[test]
fn a_written_port_wins_over_a_kept_one() {
    let base = converged(&[]);
    let local_port = |d: &DesiredState| {
        d.nodes
            .iter()
            .find(|n| n.name.0 == "idt-ray-local-10.0.0.1-1")
            .unwrap()
            .ports
            .object_manager
    };
    let kept = local_port(&settle(&[], &base).unwrap());
    let sets = [
        "workers.aaa.hosts=10.0.0.1".to_string(),
        format!("workers.aaa.object_manager_port={kept}"),
    ];
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let desired = settle(&sets, &base).unwrap();
    assert_ne!(local_port(&desired), kept);
    let aaa = desired
        .nodes
        .iter()
        .find(|n| n.name.0 == "idt-ray-aaa-10.0.0.1-1")
        .unwrap();
    assert_eq!(aaa.ports.object_manager, kept);
}

/// A port something already listens on (another cluster of the same name,
/// any process) is never handed to a new node; running nodes keep theirs.
#[test]
fn new_nodes_never_get_a_port_that_is_in_use() {
    let mut base = converged(&[]);
    let busy = |o: &mut ObservedState, host: &str, ports: &[u16]| {
        o.hosts
            .get_mut(&HostName(host.to_string()))
            .unwrap()
            .listening = ports.to_vec();
    };
    // On the new host, 8076 and the first agent block are taken.
    busy(&mut base, "10.0.0.4", &[8076, 52366]);
    // On a running host, our own node listens on its ports: kept.
    busy(&mut base, "10.0.0.2", &[8076, 8077, 52365]);
    let desired = settle(&["workers.w.hosts=10.0.0.2,10.0.0.3,10.0.0.4"], &base).unwrap();
    let node = |name: &str| {
        desired
            .nodes
            .iter()
            .find(|n| n.name.0 == name)
            .unwrap()
            .ports
            .clone()
    };
    let new = node("idt-ray-w-10.0.0.4-1");
    assert_ne!(new.object_manager, 8076);
    assert!(!(new.dashboard_agent_listen..=new.metrics_export).contains(&52366));
    let kept = node("idt-ray-w-10.0.0.2-1");
    assert_eq!((kept.object_manager, kept.node_manager), (8076, 8077));
    let (s, _) = edit(&base, &["workers.w.hosts=10.0.0.2,10.0.0.3,10.0.0.4"]);
    assert_eq!(s, summary(2, 0, 0));
}
