//! Executor tests against the in-memory, Ray-speaking fake engines: order,
//! failure handling, the parallelism bound, convergence, and the waits and
//! drains that must really happen (each test here goes red when its
//! behaviour is removed: the head wait made a no-op, the drain skipped, a
//! container acted on by name).

use seedcore::apply::{self, ApplyOptions, Event, Outcome, RecordingReporter};
use seedcore::config::{self, Override};
use seedcore::engine::fake::{FakeBackend, FakeCluster};
use seedcore::model::{DesiredState, HostName, ObservedState};
use seedcore::plan::{self, Action, DiffOptions, Plan, Step};
use seedcore::{observe, ownership, topology};
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

const HOSTS: [&str; 4] = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"];
const HEAD: &str = "fake-ray-head";

fn cluster() -> FakeCluster {
    let c = FakeCluster::new();
    for h in HOSTS {
        c.add_host(h, &["ray:test"]);
    }
    c
}

fn backends(c: &FakeCluster) -> BTreeMap<HostName, FakeBackend> {
    HOSTS
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
        ssh: "ssh ".to_string(),
        node_files: Default::default(),
        interrupt: seedcore::interrupt::Interrupt::new(),
        pushes: Default::default(),
    }
}

/// Observes the fake hosts and lowers the configuration (with `sets`)
/// against what they hold, as `plan` does.
async fn observe_and_settle(c: &FakeCluster, sets: &[&str]) -> (ObservedState, DesiredState) {
    let o: Vec<Override> = sets
        .iter()
        .map(|s| Override::parse_flag(s).unwrap())
        .collect();
    let loaded = config::parse("fake.toml", CONFIG, &o).unwrap();
    let fresh = topology::lower_fresh(&loaded.config).unwrap();
    let b = backends(c);
    let view: BTreeMap<HostName, Result<&FakeBackend, String>> =
        b.iter().map(|(h, b)| (h.clone(), Ok(b))).collect();
    let observed = observe::observe(&view, &fresh, 8).await;
    let identity = ownership::resolve(&loaded.config, &observed);
    let kept = ownership::kept_ports(&identity, &observed);
    let desired = topology::lower(&loaded.config, &identity, &kept).unwrap();
    (observed, desired)
}

async fn plan_for(c: &FakeCluster, sets: &[&str]) -> (Plan, DesiredState) {
    let (observed, desired) = observe_and_settle(c, sets).await;
    let plan = plan::build(&desired, &observed, DiffOptions::default(), Vec::new()).unwrap();
    (plan, desired)
}

async fn execute(
    c: &FakeCluster,
    plan: &Plan,
    desired: &DesiredState,
    options: &ApplyOptions,
) -> (apply::ApplyReport, Vec<Event>) {
    c.reset_max_in_flight();
    let reporter = RecordingReporter::default();
    let report = apply::execute(plan, desired, &backends(c), options, &reporter).await;
    let events = reporter.events.lock().unwrap().clone();
    (report, events)
}

async fn apply_once(
    c: &FakeCluster,
    sets: &[&str],
    parallel: usize,
) -> (Plan, apply::ApplyReport, Vec<Event>) {
    let (plan, desired) = plan_for(c, sets).await;
    let (report, events) = execute(c, &plan, &desired, &options(parallel)).await;
    (plan, report, events)
}

fn position(journal: &[String], needle: &str) -> usize {
    journal
        .iter()
        .position(|l| l == needle)
        .unwrap_or_else(|| panic!("`{needle}` not in journal:\n{}", journal.join("\n")))
}

fn outcome(report: &apply::ApplyReport, verb: &str, node: &str) -> Outcome {
    report
        .outcomes
        .iter()
        .find(|(s, _)| s.verb() == verb && s.node().map(|n| n.0.as_str()) == Some(node))
        .map(|(_, o)| o.clone())
        .unwrap_or_else(|| panic!("no {verb} {node}"))
}

/// The GCS probe: a process of the head's container listens on 6380.
fn is_probe(line: &str) -> bool {
    line.starts_with("10.0.0.1 exec fake-ray-head: python3 -c ")
        && line.contains("/proc/net/tcp")
        && line.ends_with(" 6380")
}

#[tokio::test]
async fn no_worker_starts_before_the_heads_gcs_answers() {
    let c = cluster();
    c.gcs_ready_after(3);
    let (plan, report, events) = apply_once(&c, &[], 8).await;
    assert!(report.succeeded(), "{:?}", report.failures());
    // The head was probed until its GCS answered: 3 refusals, then an answer.
    let journal = c.journal();
    let probes: Vec<usize> = journal
        .iter()
        .enumerate()
        .filter(|(_, l)| is_probe(l))
        .map(|(i, _)| i)
        .collect();
    assert!(
        probes.len() >= 4,
        "the head was not waited for:\n{}",
        journal.join("\n")
    );
    let answered = probes[3];
    for w in plan.desired().workers() {
        let start = journal
            .iter()
            .position(|l| l.starts_with(&format!("{} start {}", w.host, w.name)))
            .unwrap();
        assert!(
            start > answered,
            "{} started before the GCS answered",
            w.name
        );
    }
    // And in the events: the head's GCS wait ended before any worker started.
    let head_ready = events
        .iter()
        .position(|e| matches!(e, Event::Finished { step: Step::WaitGcs { node, .. }, outcome: Outcome::Done { .. } } if node.0 == HEAD))
        .expect("the head's GCS answered");
    for (i, e) in events.iter().enumerate() {
        if let Event::Started {
            step: Step::Start { node, .. },
        } = e
        {
            if node.0 != HEAD {
                assert!(i > head_ready, "{node} started before the head was ready");
            }
        }
    }
}

#[tokio::test]
async fn a_head_whose_gcs_never_answers_fails_and_no_worker_starts() {
    let c = cluster();
    c.gcs_never();
    let (plan, desired) = plan_for(&c, &[]).await;
    let mut o = options(8);
    o.head_ready_timeout = Duration::from_millis(100);
    let (report, _) = execute(&c, &plan, &desired, &o).await;
    assert!(matches!(
        outcome(&report, "wait-gcs", HEAD),
        Outcome::Failed { error } if error.contains("GCS did not answer on port 6380")
    ));
    let started: Vec<String> = c
        .journal()
        .into_iter()
        .filter(|l| l.contains(" start "))
        .collect();
    assert_eq!(started, vec!["10.0.0.1 start fake-ray-head"]);
}

/// A head that dies once its GCS answered ends every worker's wait at once,
/// with the cause, instead of each running out `timeouts.nodes_alive`.
#[tokio::test]
async fn a_head_that_dies_ends_every_wait_at_once() {
    let c = cluster();
    c.head_dies_once_gcs_answers();
    let (plan, desired) = plan_for(&c, &[]).await;
    let mut o = options(8);
    o.nodes_alive_timeout = Duration::from_secs(60);
    let started = std::time::Instant::now();
    let (report, _) = execute(&c, &plan, &desired, &o).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "waits ran out their timeout: {:?}",
        started.elapsed()
    );
    assert!(matches!(
        outcome(&report, "wait-ready", HEAD),
        Outcome::Failed { error } if error.contains("exited (exit code 1)")
    ));
    for w in desired.workers() {
        match outcome(&report, "wait-ready", w.name.as_str()) {
            Outcome::Failed { error } => {
                assert!(error.contains("did not come up"), "{}: {error}", w.name)
            }
            other => panic!("{}: {other:?}", w.name),
        }
    }
}

/// A failure Ray prints while the container still runs ends the wait with
/// the cause in one sentence, not after the timeout.
#[tokio::test]
async fn a_known_ray_failure_in_the_log_ends_the_wait_with_its_cause() {
    let c = cluster();
    let node = "fake-ray-remote-10.0.0.2-1";
    c.block_join(node);
    c.log_line(
        node,
        "ray.exceptions.RpcError: WrongClusterID: the cluster ID does not match\n",
    );
    let (plan, desired) = plan_for(&c, &[]).await;
    let mut o = options(8);
    o.nodes_alive_timeout = Duration::from_secs(60);
    let started = std::time::Instant::now();
    let (report, _) = execute(&c, &plan, &desired, &o).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    match outcome(&report, "wait-ready", node) {
        Outcome::Failed { error } => {
            assert!(
                error.contains("reached a GCS of another Ray cluster"),
                "{error}"
            );
            assert!(error.contains("hint:"), "{error}");
            assert!(
                error.contains("WrongClusterID"),
                "the log lines are shown: {error}"
            );
        }
        other => panic!("{other:?}"),
    }
}

/// A host lost mid-apply: its steps fail naming the lost connection, the
/// other hosts finish.
#[tokio::test]
async fn a_lost_host_fails_its_own_steps_by_name_and_the_rest_finish() {
    let c = cluster();
    let (plan, desired) = plan_for(&c, &[]).await;
    c.partition("10.0.0.4");
    let (report, _) = execute(&c, &plan, &desired, &options(8)).await;
    for node in ["fake-ray-remote-10.0.0.4-1", "fake-ray-remote-10.0.0.4-2"] {
        match outcome(&report, "create", node) {
            Outcome::Failed { error } => assert!(
                error.starts_with("SSH connection to `10.0.0.4` lost"),
                "{error}"
            ),
            other => panic!("{node}: {other:?}"),
        }
    }
    for w in desired.workers().filter(|w| w.host.as_str() != "10.0.0.4") {
        assert!(matches!(
            outcome(&report, "wait-ready", w.name.as_str()),
            Outcome::Done { .. }
        ));
    }
}

#[tokio::test]
async fn a_failed_step_skips_its_dependents_and_independent_steps_go_on() {
    let c = cluster();
    c.fail(
        "10.0.0.4",
        "create",
        "fake-ray-remote-10.0.0.4-1",
        "disk full",
    );
    let (_, report, _) = apply_once(&c, &[], 8).await;
    assert!(!report.succeeded());
    assert!(
        matches!(outcome(&report, "create", "fake-ray-remote-10.0.0.4-1"), Outcome::Failed { error } if error.contains("disk full"))
    );
    for verb in ["start", "wait-ready"] {
        assert!(matches!(
            outcome(&report, verb, "fake-ray-remote-10.0.0.4-1"),
            Outcome::Skipped { .. }
        ));
    }
    // Independent nodes went on.
    for node in ["fake-ray-remote-10.0.0.4-2", HEAD] {
        assert!(matches!(
            outcome(&report, "wait-ready", node),
            Outcome::Done { .. }
        ));
    }
    // A failed head skips every worker's start.
    let c = cluster();
    c.fail("10.0.0.1", "start", HEAD, "boom");
    let (_, report, _) = apply_once(&c, &[], 8).await;
    let started: Vec<_> = c
        .journal()
        .into_iter()
        .filter(|l| l.contains(" start "))
        .collect();
    assert_eq!(started, vec!["10.0.0.1 start fake-ray-head"]);
    assert!(report
        .outcomes
        .iter()
        .filter(|(s, _)| matches!(s, Step::Start { .. }) && s.node().unwrap().0 != HEAD)
        .all(|(_, o)| matches!(o, Outcome::Skipped { .. })));
}

#[tokio::test]
async fn max_parallel_is_never_exceeded() {
    for parallel in [1, 2, 3] {
        let mut c = cluster();
        c.latency = Duration::from_millis(3);
        let (_, report, _) = apply_once(&c, &[], parallel).await;
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
    apply_once(&c, &[], 8).await;
    assert!(c.max_in_flight() > 1);
}

#[tokio::test]
async fn a_second_apply_is_a_no_op() {
    let c = cluster();
    let (first, report, _) = apply_once(&c, &[], 4).await;
    assert!(report.succeeded());
    let desired = first.desired();
    assert_eq!(first.summary().add, desired.nodes.len());
    let ids = c.container_ids();
    let (second, report, _) = apply_once(&c, &[], 4).await;
    assert!(second.summary().is_empty(), "{:?}", second.summary());
    assert!(report.outcomes.is_empty());
    assert_eq!(c.container_ids(), ids, "containers were recreated");
    let head_id = report.containers[&desired.head().name].clone();
    let nodes = apply::wait_whole(
        &desired,
        &head_id,
        &backends(&c),
        &Default::default(),
        None,
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
    apply_once(&c, &[], 4).await;
    // A worker killed by hand is started again.
    c.kill("10.0.0.2", "fake-ray-remote-10.0.0.2-1", 137);
    let (plan, _) = plan_for(&c, &[]).await;
    let change = plan.effective().next().unwrap();
    assert_eq!(change.action, Action::Start);
    assert_eq!(change.cause(), "container exited (code 137)");
    // Changing the head's image replaces the head, then every worker, and converges.
    c.add_host("10.0.0.1", &["ray:test", "ray:new"]);
    let sets = ["head.image=ray:new"];
    let (plan, report, _) = apply_once(&c, &sets, 4).await;
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
    for w in plan.desired().workers() {
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
    assert!(plan_for(&c, &sets).await.0.summary().is_empty());
}

#[tokio::test]
async fn scale_down_drains_each_removed_worker_through_ray_before_stopping_it() {
    let c = cluster();
    apply_once(&c, &[], 4).await;
    let ids = c.container_ids();
    let (plan, report, _) = apply_once(&c, &["workers.remote.count=1"], 4).await;
    assert!(report.succeeded(), "{:?}", report.failures());
    let mut removed: Vec<(String, String)> = plan
        .effective()
        .map(|c| {
            assert_eq!(c.action, Action::Remove, "{} {}", c.node, c.cause());
            (c.host.0.clone(), c.node.0.clone())
        })
        .collect();
    removed.sort();
    assert_eq!(
        removed,
        [
            (
                "10.0.0.2".to_string(),
                "fake-ray-remote-10.0.0.2-2".to_string()
            ),
            (
                "10.0.0.3".to_string(),
                "fake-ray-remote-10.0.0.3-2".to_string()
            ),
            (
                "10.0.0.4".to_string(),
                "fake-ray-remote-10.0.0.4-2".to_string()
            ),
        ]
    );
    // Each was drained through Ray (by its own Ray node ID), then stopped,
    // then removed.
    let journal = c.journal();
    let drained = c.drained();
    for (host, node) in &removed {
        let ray_id = FakeCluster::ray_node_id(&ids[&(host.clone(), node.clone())]);
        assert!(
            drained.contains(&ray_id),
            "{node} was not drained: {drained:?}"
        );
        let drain = journal
            .iter()
            .position(|l| {
                l.contains("ray drain-node") && l.contains(&format!("--node-id={ray_id}"))
            })
            .expect("drain-node ran in the head");
        let stop = position(&journal, &format!("{host} stop {node}"));
        let remove = position(&journal, &format!("{host} remove {node}"));
        assert!(drain < stop && stop < remove, "{node}: drain, stop, remove");
    }
    assert_eq!(drained.len(), removed.len(), "only the removed nodes drain");
    assert!(plan_for(&c, &["workers.remote.count=1"])
        .await
        .0
        .summary()
        .is_empty());
}

#[tokio::test]
async fn a_killed_workers_leftover_ray_entry_is_not_taken_for_its_replacement() {
    let c = cluster();
    apply_once(&c, &[], 4).await;
    // Removed by hand; Ray still lists the old node ALIVE for a while, and
    // the new container cannot join.
    let node = "fake-ray-remote-10.0.0.2-1";
    let old = c.container_ids()[&("10.0.0.2".to_string(), node.to_string())].clone();
    c.forget("10.0.0.2", node);
    c.add_ghost(node, &FakeCluster::ray_node_id(&old), "10.0.0.2", 1);
    c.block_join(node);
    let (plan, report, _) = apply_once(&c, &[], 4).await;
    assert_eq!(plan.summary().add, 1);
    let wait = outcome(&report, "wait-ready", node);
    assert!(
        matches!(&wait, Outcome::Failed { error } if error.contains("did not join Ray")),
        "{wait:?}"
    );
}

/// After observation, every call that names a container names it by ID.
#[tokio::test]
async fn every_action_after_observation_names_the_container_by_id() {
    let c = cluster();
    apply_once(&c, &[], 4).await;
    c.kill("10.0.0.3", "fake-ray-remote-10.0.0.3-1", 137);
    apply_once(&c, &[], 4).await;
    apply_once(&c, &["workers.remote.count=1"], 4).await;
    apply_once(&c, &["workers.local.cpus=2", "workers.remote.count=1"], 4).await;
    let journal = c.journal();
    let by_name: Vec<&String> = journal.iter().filter(|l| l.contains("(by name)")).collect();
    assert!(by_name.is_empty(), "acted by name:\n{by_name:#?}");
}

/// A container recreated by someone else between the plan and the apply is
/// not touched: the step fails, naming the cause.
#[tokio::test]
async fn a_container_recreated_since_the_plan_is_not_touched() {
    let c = cluster();
    apply_once(&c, &[], 4).await;
    let node = "fake-ray-remote-10.0.0.2-1";
    c.kill("10.0.0.2", node, 137);
    let (plan, desired) = plan_for(&c, &[]).await;
    assert_eq!(plan.effective().next().unwrap().action, Action::Start);
    // Someone recreates it by hand, with the same name.
    c.forget("10.0.0.2", node);
    let theirs = c.add_container("10.0.0.2", node, "other:1", &[], &["sleep", "infinity"]);
    c.kill("10.0.0.2", node, 0);
    let (report, _) = execute(&c, &plan, &desired, &options(4)).await;
    assert!(matches!(
        outcome(&report, "start", node),
        Outcome::Failed { error } if error.contains("is gone since the plan was made")
    ));
    assert_eq!(
        c.container_ids()[&("10.0.0.2".to_string(), node.to_string())],
        theirs
    );
    assert_eq!(c.state_of("10.0.0.2", node).as_deref(), Some("exited"));
}

/// A container that carries our labels and a running worker's node name,
/// but is not that worker (a forged or copied label set): planned for
/// nothing, and the real worker is neither drained nor stopped.
#[tokio::test]
async fn a_forged_container_never_leads_to_the_real_worker() {
    let c = cluster();
    let (first, report, _) = apply_once(&c, &[], 4).await;
    assert!(report.succeeded());
    let real = "fake-ray-remote-10.0.0.2-1";
    let real_id = c.container_ids()[&("10.0.0.2".to_string(), real.to_string())].clone();
    let id = &first.cluster.id;
    c.add_container(
        "10.0.0.2",
        "impostor",
        "ray:test",
        &[
            ("io.seedcore.cluster", "fake"),
            ("io.seedcore.cluster-id", id),
            ("io.seedcore.node", real),
            ("io.seedcore.role", "worker"),
            ("io.seedcore.group", "remote"),
        ],
        &["ray", "start", &format!("--node-name={real}"), "--block"],
    );
    let (plan, report, _) = apply_once(&c, &["workers.remote.count=1"], 4).await;
    assert!(report.succeeded(), "{:?}", report.failures());
    assert!(
        plan.effective()
            .all(|ch| ch.node.0 != real && ch.node.0 != "impostor"),
        "{:?}",
        plan.effective().map(|c| &c.node).collect::<Vec<_>>()
    );
    let journal = c.journal();
    assert!(
        !journal.iter().any(|l| l.contains(&format!("stop {real}"))
            || l.contains("stop impostor")
            || l.contains("remove impostor")),
        "{journal:#?}"
    );
    assert!(!c.drained().contains(&FakeCluster::ray_node_id(&real_id)));
    assert_eq!(c.state_of("10.0.0.2", real).as_deref(), Some("running"));
    assert_eq!(
        c.state_of("10.0.0.2", "impostor").as_deref(),
        Some("running")
    );
}

/// Two clusters of the same name with different heads: applying one leaves
/// the other's nodes alone, and its plan names the other cluster.
#[tokio::test]
async fn another_cluster_of_the_same_name_is_left_alone() {
    let c = cluster();
    // The other cluster: head on 10.0.0.4, a worker group `b` on 10.0.0.2.
    let other_cfg = CONFIG
        .replace("host = \"10.0.0.1\"", "host = \"10.0.0.4\"")
        .replace("[workers.local]\nhosts = [\"10.0.0.1\"]\ncount = 2\n", "")
        .replace(
            "[workers.remote]\nhosts = [\"10.0.0.2\", \"10.0.0.3\", \"10.0.0.4\"]\ncount = 2\nworker_ports_per_node = 8\n",
            "[workers.b]\nhosts = [\"10.0.0.2\"]\nobject_manager_port = 9100\nnode_manager_port = 9101\nworker_ports = \"12000-12019\"\n",
        );
    let loaded = config::parse("other.toml", &other_cfg, &[]).unwrap();
    let other = topology::lower_fresh(&loaded.config).unwrap();
    let b = backends(&c);
    let view: BTreeMap<HostName, Result<&FakeBackend, String>> =
        b.iter().map(|(h, b)| (h.clone(), Ok(b))).collect();
    let observed = observe::observe(&view, &other, 8).await;
    let plan = plan::build(&other, &observed, DiffOptions::default(), Vec::new()).unwrap();
    let report = apply::execute(
        &plan,
        &other,
        &b,
        &options(4),
        &RecordingReporter::default(),
    )
    .await;
    assert!(report.succeeded(), "{:?}", report.failures());
    let theirs = c.container_ids();

    // Ours, with different ports on 10.0.0.4 for the head (the other head
    // holds 6380 there... it is on 10.0.0.4, ours on 10.0.0.1).
    let (plan, report, _) = apply_once(&c, &[], 4).await;
    assert!(report.succeeded(), "{:?}", report.failures());
    assert!(plan.effective().all(|ch| ch.action == Action::Create));
    assert!(
        plan.notes
            .iter()
            .any(|n| n.contains("Another cluster `fake`") && n.contains("head on `10.0.0.4`")),
        "{:?}",
        plan.notes
    );
    // Destroy ours: theirs stay.
    let (observed, desired) = observe_and_settle(&c, &[]).await;
    let destroy = plan::destroy(&desired, &observed, false);
    assert!(destroy
        .effective()
        .all(|ch| !theirs.contains_key(&(ch.host.0.clone(), ch.node.0.clone()))));
    let report = apply::execute(
        &destroy,
        &desired,
        &b,
        &options(4),
        &RecordingReporter::default(),
    )
    .await;
    assert!(report.succeeded(), "{:?}", report.failures());
    let now = c.container_ids();
    for (k, id) in &theirs {
        assert_eq!(
            now.get(k),
            Some(id),
            "{k:?} of the other cluster was touched"
        );
    }
}

/// `local` nodes advertise 127.0.0.1, and Ray reports them there.
#[tokio::test]
async fn local_nodes_are_matched_at_their_loopback_address() {
    let c = FakeCluster::new();
    c.add_host("local", &["ray:test"]);
    let cfg = "[cluster]\nname = \"solo\"\nimage = \"ray:test\"\n[head]\nhost = \"local\"\n[workers.w]\nhosts = [\"local\"]\ncount = 2\n";
    let loaded = config::parse("solo.toml", cfg, &[]).unwrap();
    let desired = topology::lower_fresh(&loaded.config).unwrap();
    let b: BTreeMap<HostName, FakeBackend> =
        [(HostName("local".to_string()), c.backend("local"))].into();
    let view: BTreeMap<HostName, Result<&FakeBackend, String>> =
        b.iter().map(|(h, b)| (h.clone(), Ok(b))).collect();
    let observed = observe::observe(&view, &desired, 8).await;
    let plan = plan::build(&desired, &observed, DiffOptions::default(), Vec::new()).unwrap();
    let report = apply::execute(
        &plan,
        &desired,
        &b,
        &options(4),
        &RecordingReporter::default(),
    )
    .await;
    // Ray reports `local` nodes at 127.0.0.1, where they advertise themselves.
    assert!(report.succeeded(), "{:?}", report.failures());
}

/// Ray is asked through the head host's loopback (the dashboard's state
/// API, with the cluster's token), starting no process in the head; a
/// refused request falls back to asking from inside the container.
#[tokio::test]
async fn ray_is_asked_over_the_hosts_loopback_with_the_token() {
    use seedcore::engine::{ContainerFile, DockerBackend};
    let c = cluster();
    let (_, report, _) = apply_once(&c, &[], 8).await;
    assert!(report.succeeded(), "{:?}", report.failures());
    let (_, desired) = plan_for(&c, &[]).await;
    let head_spec = desired.head();
    let head_id = report.containers[&head_spec.name].clone();
    let head = c.backend("10.0.0.1");
    let asked = |from: usize| -> Vec<String> { c.journal()[from..].to_vec() };

    let from = c.journal().len();
    let nodes = seedcore::ray::nodes(&head, &head_id, head_spec, None).await;
    assert_eq!(nodes.unwrap().len(), desired.nodes.len());
    let work = seedcore::ray::work(&head, &head_id, head_spec, None).await;
    assert!(work.is_ok(), "{work:?}");
    let lines = asked(from);
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("10.0.0.1 get :8265 /api/v0/")),
        "{lines:#?}"
    );
    assert_eq!(
        lines.len(),
        5,
        "nodes; then nodes, jobs, actors, placement groups: {lines:#?}"
    );

    // With token authentication, the head refuses a request without it.
    head.put_files(
        &head_id,
        &[ContainerFile {
            path: seedcore::model::NODE_TOKEN_PATH.to_string(),
            bytes: b"s3cret\n".to_vec(),
            mode: 0o400,
        }],
    )
    .await
    .unwrap();
    let from = c.journal().len();
    let nodes = seedcore::ray::nodes(&head, &head_id, head_spec, Some("s3cret")).await;
    assert_eq!(nodes.unwrap().len(), desired.nodes.len());
    let lines = asked(from);
    assert!(lines.iter().all(|l| !l.contains(" exec ")), "{lines:#?}");
    let from = c.journal().len();
    let nodes = seedcore::ray::nodes(&head, &head_id, head_spec, None).await;
    assert_eq!(nodes.unwrap().len(), desired.nodes.len());
    assert!(
        asked(from)
            .iter()
            .any(|l| l.starts_with("10.0.0.1 exec fake-ray-head: python3 -c ")),
        "refused over the loopback: asked from inside the head"
    );
}

/// When the whole cluster goes, every node stops at once; a worker whose stop
/// is still under way once the head has stopped can no longer leave Ray (its
/// raylet waits for the GCS until Docker kills it) and is removed at once.
#[tokio::test]
async fn a_worker_still_stopping_when_the_head_is_down_is_removed_at_once() {
    let c = cluster();
    let (_, report, _) = apply_once(&c, &[], 8).await;
    assert!(report.succeeded(), "{:?}", report.failures());
    let (observed, desired) = observe_and_settle(&c, &[]).await;
    let destroy = plan::destroy(&desired, &observed, false);
    let worker = destroy
        .changes
        .iter()
        .find(|ch| ch.role == seedcore::model::Role::Worker)
        .expect("a worker to remove")
        .clone();
    c.stall(&worker.host.0, "stop", &worker.node.0);
    let from = c.journal().len();
    let (report, events) = tokio::time::timeout(
        Duration::from_secs(10),
        execute(&c, &destroy, &desired, &options(8)),
    )
    .await
    .expect("the destroy waited for a worker that cannot leave Ray");
    assert!(report.succeeded(), "{:?}", report.failures());
    assert!(c.container_ids().is_empty(), "{:?}", c.container_ids());
    let journal = c.journal()[from..].to_vec();
    let head = desired.head();
    let head_stopped = position(&journal, &format!("{} stop {}", head.host.0, head.name.0));
    let worker_removed = position(
        &journal,
        &format!("{} remove {}", worker.host.0, worker.node.0),
    );
    assert!(head_stopped < worker_removed, "{journal:#?}");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Progress { step, message }
            if step.node() == Some(&worker.node) && message.contains("the head has stopped"))),
        "{events:#?}"
    );
}
