//! Executor tests against the in-memory fake engines: ordering, failure
//! handling, the parallelism bound and convergence.

use seedcore::apply::{self, ApplyOptions, Event, Outcome, RecordingReporter};
use seedcore::config::{self, Override};
use seedcore::engine::fake::{FakeBackend, FakeCluster};
use seedcore::model::{DesiredState, HostName};
use seedcore::observe;
use seedcore::plan::{self, Action, DiffOptions, Plan, Step};
use seedcore::topology;
use std::collections::BTreeMap;
use std::time::Duration;

const CONFIG: &str = r#"
[cluster]
name = "fake"
image = "ray:test"
[head]
host = "10.0.0.1"
[workers.local]
hosts = ["10.0.0.1"]
count = 2
[workers.remote]
hosts = ["10.0.0.2", "10.0.0.3", "10.0.0.4"]
count = 2
worker_ports_per_node = 8
"#;

fn desired(overrides: &[&str]) -> DesiredState {
    let o: Vec<Override> = overrides
        .iter()
        .map(|s| Override::parse_flag(s).unwrap())
        .collect();
    let loaded = config::parse("fake.toml", CONFIG, &o).unwrap();
    topology::lower_fresh(&loaded.config).unwrap()
}

fn cluster() -> FakeCluster {
    let c = FakeCluster::new();
    for h in ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"] {
        c.add_host(h, &["ray:test"]);
    }
    c
}

fn backends(c: &FakeCluster) -> BTreeMap<HostName, FakeBackend> {
    ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]
        .iter()
        .map(|h| (HostName(h.to_string()), c.backend(h)))
        .collect()
}

fn options(parallel: usize) -> ApplyOptions {
    ApplyOptions {
        max_parallel: parallel,
        stop_timeout: Duration::from_secs(1),
        head_ready_timeout: Duration::from_secs(5),
        nodes_alive_timeout: Duration::from_secs(5),
        drain_timeout: Duration::from_secs(1),
        poll_interval: Duration::from_millis(5),
    }
}

async fn plan_for(c: &FakeCluster, d: &DesiredState) -> Plan {
    let b = backends(c);
    let view: BTreeMap<HostName, Result<&FakeBackend, String>> =
        b.iter().map(|(h, b)| (h.clone(), Ok(b))).collect();
    let observed = observe::observe(&view, d, 8).await;
    plan::build(d, &observed, DiffOptions::default(), Vec::new()).unwrap()
}

async fn apply_once(
    c: &FakeCluster,
    d: &DesiredState,
    parallel: usize,
) -> (Plan, apply::ApplyReport, Vec<Event>) {
    let plan = plan_for(c, d).await;
    c.reset_max_in_flight();
    let reporter = RecordingReporter::default();
    let report = apply::execute(&plan, d, &backends(c), &options(parallel), &reporter).await;
    let events = reporter.events.lock().unwrap().clone();
    (plan, report, events)
}

fn position(journal: &[String], needle: &str) -> usize {
    journal
        .iter()
        .position(|l| l == needle)
        .unwrap_or_else(|| panic!("`{needle}` not in journal:\n{}", journal.join("\n")))
}

#[tokio::test]
async fn head_is_ready_before_any_worker_starts() {
    let c = cluster();
    let d = desired(&[]);
    let (_, report, events) = apply_once(&c, &d, 8).await;
    assert!(report.succeeded(), "{:?}", report.failures());
    let head_ready = events
        .iter()
        .position(|e| matches!(e, Event::Finished { step: Step::WaitReady { node, .. }, outcome: Outcome::Done { .. } } if node.0 == "fake-ray-head"))
        .expect("head became ready");
    for (i, e) in events.iter().enumerate() {
        if let Event::Started {
            step: Step::Start { node, .. },
        } = e
        {
            if node.0 != "fake-ray-head" {
                assert!(i > head_ready, "{node} started before the head was ready");
            }
        }
    }
    let journal = c.journal();
    let head_start = position(&journal, "10.0.0.1 start fake-ray-head");
    for w in d.workers() {
        let start = position(&journal, &format!("{} start {}", w.host, w.name));
        assert!(start > head_start);
    }
}

#[tokio::test]
async fn a_failed_step_skips_its_dependents_and_independent_steps_go_on() {
    let c = cluster();
    let d = desired(&[]);
    c.fail(
        "10.0.0.4",
        "create",
        "fake-ray-worker-remote-3",
        "disk full",
    );
    let (_, report, _) = apply_once(&c, &d, 8).await;
    assert!(!report.succeeded());
    let outcome = |verb: &str, node: &str| {
        report
            .outcomes
            .iter()
            .find(|(s, _)| s.verb() == verb && s.node().map(|n| n.0.as_str()) == Some(node))
            .map(|(_, o)| o.clone())
            .unwrap_or_else(|| panic!("no {verb} {node}"))
    };
    assert!(
        matches!(outcome("create", "fake-ray-worker-remote-3"), Outcome::Failed { error } if error.contains("disk full"))
    );
    assert!(matches!(
        outcome("start", "fake-ray-worker-remote-3"),
        Outcome::Skipped { .. }
    ));
    assert!(matches!(
        outcome("wait-ready", "fake-ray-worker-remote-3"),
        Outcome::Skipped { .. }
    ));
    // Independent nodes went on.
    assert!(matches!(
        outcome("wait-ready", "fake-ray-worker-remote-4"),
        Outcome::Done { .. }
    ));
    assert!(matches!(
        outcome("wait-ready", "fake-ray-head"),
        Outcome::Done { .. }
    ));
    // A failed head skips every worker's start.
    let c = cluster();
    c.fail("10.0.0.1", "start", "fake-ray-head", "boom");
    let (_, report, _) = apply_once(&c, &d, 8).await;
    let started: Vec<_> = c
        .journal()
        .into_iter()
        .filter(|l| l.contains(" start "))
        .collect();
    assert_eq!(started, vec!["10.0.0.1 start fake-ray-head"]);
    assert!(report
        .outcomes
        .iter()
        .filter(|(s, _)| matches!(s, Step::Start { .. }) && s.node().unwrap().0 != "fake-ray-head")
        .all(|(_, o)| matches!(o, Outcome::Skipped { .. })));
}

#[tokio::test]
async fn max_parallel_is_never_exceeded() {
    for parallel in [1, 2, 3] {
        let mut c = cluster();
        c.latency = Duration::from_millis(3);
        let d = desired(&[]);
        let (_, report, _) = apply_once(&c, &d, parallel).await;
        assert!(report.succeeded());
        assert!(
            c.max_in_flight() <= parallel,
            "{} calls in flight with max_parallel {parallel}",
            c.max_in_flight()
        );
    }
    // And parallelism is used when allowed.
    let mut c = cluster();
    c.latency = Duration::from_millis(3);
    apply_once(&c, &desired(&[]), 8).await;
    assert!(c.max_in_flight() > 1);
}

#[tokio::test]
async fn a_second_apply_is_a_no_op() {
    let c = cluster();
    let d = desired(&[]);
    let (first, report, _) = apply_once(&c, &d, 4).await;
    assert!(report.succeeded());
    assert_eq!(first.summary().add, d.nodes.len());
    let ids = c.container_ids();
    let (second, report, _) = apply_once(&c, &d, 4).await;
    assert!(second.summary().is_empty(), "{:?}", second.summary());
    assert!(report.outcomes.is_empty());
    assert_eq!(c.container_ids(), ids, "containers were recreated");
    let head_id = report.containers[&d.head().name].clone();
    let nodes = apply::wait_whole(
        &d,
        &head_id,
        &backends(&c),
        &Default::default(),
        Duration::from_secs(1),
        Duration::from_millis(5),
    )
    .await
    .unwrap();
    assert!(nodes.is_empty(), "{nodes:?}");
}

#[tokio::test]
async fn drift_is_repaired_in_order() {
    let c = cluster();
    let d = desired(&[]);
    apply_once(&c, &d, 4).await;
    // A worker killed by hand is started again.
    c.kill("10.0.0.2", "fake-ray-worker-remote-1", 137);
    let plan = plan_for(&c, &d).await;
    let change = plan.effective().next().unwrap();
    assert_eq!(change.action, Action::Start);
    assert_eq!(change.cause(), "container exited (code 137)");
    // Changing the head's image replaces the head, then every worker, and converges.
    let d2 = desired(&["head.image=ray:new"]);
    c.add_host("10.0.0.1", &["ray:test", "ray:new"]);
    let (plan, report, _) = apply_once(&c, &d2, 4).await;
    assert!(report.succeeded(), "{:?}", report.failures());
    assert!(plan.effective().all(|c| c.action == Action::Replace));
    let journal = c.journal();
    let head_create = journal
        .iter()
        .rposition(|l| l == "10.0.0.1 create fake-ray-head")
        .unwrap();
    let head_remove = journal
        .iter()
        .rposition(|l| l == "10.0.0.1 remove fake-ray-head")
        .unwrap();
    for w in d2.workers() {
        let remove = journal
            .iter()
            .rposition(|l| *l == format!("{} remove {}", w.host, w.name))
            .unwrap();
        let start = journal
            .iter()
            .rposition(|l| *l == format!("{} start {}", w.host, w.name))
            .unwrap();
        assert!(remove < head_remove, "workers are removed before the head");
        assert!(start > head_create, "workers start after the new head");
    }
    assert!(plan_for(&c, &d2).await.summary().is_empty());
}

#[tokio::test]
async fn scale_down_drains_then_removes_the_highest_numbered_nodes() {
    let c = cluster();
    apply_once(&c, &desired(&[]), 4).await;
    let d = desired(&["workers.remote.count=1"]);
    let (plan, report, _) = apply_once(&c, &d, 4).await;
    assert!(report.succeeded(), "{:?}", report.failures());
    let mut removed: Vec<String> = plan
        .effective()
        .map(|c| {
            assert_eq!(
                c.action,
                Action::Remove,
                "{} {:?}: {}",
                c.node,
                c.action,
                c.cause()
            );
            c.node.0.clone()
        })
        .collect();
    removed.sort();
    assert_eq!(
        removed,
        [
            "fake-ray-worker-remote-4",
            "fake-ray-worker-remote-5",
            "fake-ray-worker-remote-6"
        ]
    );
    let journal = c.journal();
    for n in &removed {
        let host = &plan.effective().find(|c| c.node.0 == *n).unwrap().host;
        // Drained through the head (`ray drain-node`), stopped, then removed.
        let drain = journal
            .iter()
            .position(|l| l == "10.0.0.1 exec fake-ray-head")
            .expect("drain-node ran in the head");
        let stop = position(&journal, &format!("{host} stop {n}"));
        let remove = position(&journal, &format!("{host} remove {n}"));
        assert!(drain < stop && stop < remove);
    }
    assert!(plan_for(&c, &d).await.summary().is_empty());
}

#[tokio::test]
async fn a_killed_workers_leftover_ray_entry_is_not_taken_for_its_replacement() {
    let c = cluster();
    let d = desired(&[]);
    apply_once(&c, &d, 4).await;
    // Removed by hand; Ray still lists the old node ALIVE for a while, and
    // the new container cannot join.
    let old_id = c.container_ids()[&(
        "10.0.0.2".to_string(),
        "fake-ray-worker-remote-1".to_string(),
    )]
        .clone();
    c.forget("10.0.0.2", "fake-ray-worker-remote-1");
    c.add_ghost("fake-ray-worker-remote-1", &old_id, "10.0.0.2", 1);
    c.block_join("fake-ray-worker-remote-1");
    let (plan, report, _) = apply_once(&c, &d, 4).await;
    assert_eq!(plan.summary().add, 1);
    let wait = report
        .outcomes
        .iter()
        .find(|(s, _)| matches!(s, Step::WaitReady { node, .. } if node.0 == "fake-ray-worker-remote-1"))
        .map(|(_, o)| o.clone())
        .unwrap();
    assert!(
        matches!(&wait, Outcome::Failed { error } if error.contains("did not join Ray")),
        "{wait:?}"
    );
    assert!(report.stale_node_ids.contains(&old_id));
}
