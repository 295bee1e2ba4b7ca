//! Environments on the real lab (issue 13): one configuration file, two
//! environments, two clusters side by side on the same lab hosts.
//!
//! The file is `.lab/seedcore.toml` with `[env.staging]` and `[env.prod]`
//! overlays: each is its own cluster (`seedlab-staging`, derived from the
//! base's name; `seedlab-prod`, named by its overlay), on ports of its own
//! (the lab's host-network containers share each host's network namespace,
//! so two clusters on one host need disjoint ports, and both stay clear of
//! the base cluster `seedlab` the other lab suites leave running), with small
//! worker counts: the head and one `local` worker on labhost1, one `remote`
//! worker on labhost2 (the overlays replace the group's `hosts`).
//!
//! The test applies both, checks each cluster's containers and Ray's node
//! list (neither Ray sees the other's nodes), destroys staging and checks
//! that prod is untouched (same container IDs, still whole), and destroys
//! both at the end, also when it fails (a drop guard). The base cluster's
//! containers, if any, are checked unchanged too. About 2-3 minutes.
//!
//! Run: `cargo test --test lab_envs -- --nocapture --test-threads=1` (after
//! `tests/lab/lab up`). Without the lab, it fails.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::lab::{run_with_timeout, Lab, OnDrop, Run};

const ENVS: [&str; 2] = ["staging", "prod"];
const LAB_HOSTS: [usize; 3] = [1, 2, 3];

/// The overlays written after the lab's own configuration. Every port a
/// node binds is written, each environment in a range of its own.
const OVERLAYS: &str = r#"

# ---- environments (tests/lab_envs.rs) ----
[env.staging.cluster]
agent_ports = "22000-22099"

[env.staging.head]
gcs_port = 16380
client_server_port = 16001
dashboard_port = 16265
serve_port = 16000
object_manager_port = 16076
node_manager_port = 16077
worker_ports = "16100-16199"

[env.staging.workers.local]
object_manager_port = 16276
node_manager_port = 16277
worker_ports = "16300-16320"

[env.staging.workers.remote]
hosts = ["10.77.0.12"]
object_manager_port = 16476
node_manager_port = 16477
worker_ports = "16500-16520"

[env.prod.cluster]
name = "seedlab-prod"
agent_ports = "23000-23099"

[env.prod.head]
gcs_port = 17380
client_server_port = 17001
dashboard_port = 17265
serve_port = 17000
object_manager_port = 17076
node_manager_port = 17077
worker_ports = "17100-17199"

[env.prod.workers.local]
object_manager_port = 17276
node_manager_port = 17277
worker_ports = "17300-17320"

[env.prod.workers.remote]
hosts = ["10.77.0.12"]
object_manager_port = 17476
node_manager_port = 17477
worker_ports = "17500-17520"
"#;

/// The cluster an environment runs.
fn cluster(env: &str) -> String {
    match env {
        "staging" => "seedlab-staging".to_string(),
        "prod" => "seedlab-prod".to_string(),
        other => panic!("no environment {other} in this test"),
    }
}

/// An environment's nodes with the lab host each runs on.
fn nodes(env: &str) -> Vec<(usize, String)> {
    let c = cluster(env);
    vec![
        (1, format!("{c}-ray-head")),
        (1, format!("{c}-ray-local-10.77.0.11-1")),
        (2, format!("{c}-ray-remote-10.77.0.12-1")),
    ]
}

fn head(env: &str) -> String {
    format!("{}-ray-head", cluster(env))
}

/// `.lab/seedcore.toml` with the overlays, in a scratch directory.
fn config(lab: &Lab) -> PathBuf {
    let base = std::fs::read_to_string(lab.config_path()).expect("the lab's configuration");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("lab-envs");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("seedcore.toml");
    std::fs::write(&path, format!("{base}{OVERLAYS}")).unwrap();
    path
}

/// `seedcore --env ENV ARGS...` with the environments' file.
fn in_env(lab: &Lab, cfg: &Path, env: &str, args: &[&str]) -> Run {
    let mut all = vec!["--env", env];
    all.extend_from_slice(args);
    lab.seedcore_with(cfg, &all)
}

/// Names of the containers labelled for `cluster` on each lab host.
fn labelled(lab: &Lab, cluster: &str) -> BTreeMap<usize, BTreeSet<String>> {
    LAB_HOSTS
        .iter()
        .map(|k| {
            let label = format!("io.seedcore.cluster={cluster}");
            (
                *k,
                lab.containers_with_label(*k, &label).into_iter().collect(),
            )
        })
        .collect()
}

/// Container ID of each of an environment's nodes (panics when one is missing
/// or not running).
fn ids(lab: &Lab, env: &str) -> BTreeMap<String, String> {
    nodes(env)
        .into_iter()
        .map(|(k, name)| {
            let c = lab
                .container(k, &name)
                .unwrap_or_else(|| panic!("no container {name} on labhost{k}"));
            assert_eq!(c.status, "running", "{name} on labhost{k}");
            assert_eq!(c.cluster_label, cluster(env), "{name}'s cluster label");
            (name, c.id)
        })
        .collect()
}

/// Every container of the base cluster `seedlab` (ID by name), if it runs.
fn base_ids(lab: &Lab) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (k, names) in labelled(lab, "seedlab") {
        for name in names {
            if let Some(c) = lab.container(k, &name) {
                out.insert(name, c.id);
            }
        }
    }
    out
}

/// Ray's ALIVE nodes, seen from the environment's head, are exactly its own.
fn assert_ray_is_its_own(lab: &Lab, env: &str) {
    let want: BTreeSet<String> = nodes(env).into_iter().map(|(_, n)| n).collect();
    let listed = lab.wait_for_alive(1, &head(env), want.len(), Duration::from_secs(90));
    let alive: BTreeSet<String> = listed
        .iter()
        .filter(|n| n.alive())
        .map(|n| n.node_name.clone())
        .collect();
    assert_eq!(
        alive, want,
        "Ray of `{env}` lists exactly its own nodes ALIVE: {listed:#?}"
    );
}

#[test]
fn two_environments_run_side_by_side_on_the_same_hosts() {
    let lab = Lab::require();
    let cfg = config(&lab);
    let destroy = |env: &str| in_env(&lab, &cfg, env, &["destroy", "--auto-approve"]);
    // Whatever happens, both environments are gone at the end.
    let _cleanup = OnDrop(|| {
        for env in ENVS {
            let run = destroy(env);
            if run.code() != Some(0) {
                eprintln!("cleanup: destroying `{env}` failed:\n{}", run.output());
            }
        }
    });
    // Leftovers of an earlier, interrupted run.
    for env in ENVS {
        destroy(env).expect_ok();
    }
    let base_before = base_ids(&lab);

    // The plans name their environment and cluster.
    for env in ENVS {
        let plan = in_env(&lab, &cfg, env, &["plan"]);
        plan.expect_ok();
        let header = format!("Cluster `{}` (environment `{env}`, id `", cluster(env));
        assert!(plan.stdout.starts_with(&header), "{}", plan.stdout);
        assert!(plan.stdout.contains("Plan: 3 to add"), "{}", plan.stdout);
    }

    // Both applied; each is whole, with its own containers and its own Ray.
    for env in ENVS {
        in_env(&lab, &cfg, env, &["apply", "--auto-approve"]).expect_ok();
    }
    for env in ENVS {
        let mut want: BTreeMap<usize, BTreeSet<String>> =
            LAB_HOSTS.iter().map(|k| (*k, BTreeSet::new())).collect();
        for (k, name) in nodes(env) {
            want.get_mut(&k).unwrap().insert(name);
        }
        assert_eq!(labelled(&lab, &cluster(env)), want, "`{env}`'s containers");
        assert_ray_is_its_own(&lab, env);
    }
    // `SEEDCORE_ENV` selects like `--env`.
    let mut status = lab.seedcore_command_with(&cfg, &["status"]);
    status.env("SEEDCORE_ENV", "prod");
    let status = run_with_timeout(status, Duration::from_secs(120));
    status.expect_ok();
    assert!(
        status
            .stdout
            .starts_with("Cluster `seedlab-prod` (environment `prod`, id `"),
        "{}",
        status.stdout
    );
    // Nothing left to do in either.
    for env in ENVS {
        in_env(&lab, &cfg, env, &["plan", "--detailed-exitcode"]).expect_ok();
    }

    // Destroying staging leaves prod (and the base cluster) untouched.
    let prod_before = ids(&lab, "prod");
    ids(&lab, "staging");
    destroy("staging").expect_ok();
    for (k, names) in labelled(&lab, &cluster("staging")) {
        assert!(names.is_empty(), "labhost{k} still runs {names:?}");
    }
    assert_eq!(
        ids(&lab, "prod"),
        prod_before,
        "prod's containers are the same"
    );
    assert_ray_is_its_own(&lab, "prod");
    in_env(&lab, &cfg, "prod", &["plan", "--detailed-exitcode"]).expect_ok();
    assert_eq!(base_ids(&lab), base_before, "the base cluster is untouched");

    destroy("prod").expect_ok();
    for (k, names) in labelled(&lab, &cluster("prod")) {
        assert!(names.is_empty(), "labhost{k} still runs {names:?}");
    }
    assert_eq!(base_ids(&lab), base_before, "the base cluster is untouched");
}
