//! The lab itself works end to end (issue 3): a lab host answers `docker info` over SSH
//! with strict host-key checking, and a Ray head started by hand on labhost1 and a worker
//! on labhost2 (LAB.md section 5) form a two-node cluster. A broken lab fails here.
//!
//! The containers use their own names and ports, outside seedcore's defaults (GCS 6380,
//! client 10001, dashboard 8265, object/node manager 8076+, agents 52365-52464, worker ports
//! 10002-10099 and slices from 11000 up), so the test cannot collide with a seedcore cluster
//! running in the lab at the same time.

mod support;

use std::time::Duration;
use support::lab::Lab;

const IMAGE: &str = "seedcore-ray:lab";
const HEAD: &str = "labsmoke-ray-head";
const WORKER: &str = "labsmoke-ray-worker";
const GCS_PORT: u16 = 6390;

/// Removes both containers when dropped, even when the test panics (after printing their
/// logs, to explain the failure).
struct Cleanup<'a>(&'a Lab);

impl Cleanup<'_> {
    fn remove(&self) {
        let _ = self.0.docker(1, &["rm", "-f", HEAD]);
        let _ = self.0.docker(2, &["rm", "-f", WORKER]);
    }
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (k, name) in [(1, HEAD), (2, WORKER)] {
                let out = self.0.docker(k, &["logs", "--tail", "40", name]);
                eprintln!(
                    "--- labhost{k}: docker logs {name}\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        self.remove();
    }
}

fn ray_container(name: &str, ray_start: &[&str]) -> Vec<String> {
    let run = [
        "run",
        "-d",
        "--name",
        name,
        "--network",
        "host",
        "--init",
        "--shm-size=512m",
        IMAGE,
        "ray",
        "start",
        "--num-cpus=1",
        "--object-store-memory=268435456",
        "--disable-usage-stats",
        "--block",
    ];
    run.iter().chain(ray_start).map(|s| s.to_string()).collect()
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn lab_hosts_answer_over_ssh_and_form_a_two_node_ray_cluster() {
    let lab = Lab::require();

    let info = lab.ssh(2, "docker info");
    assert!(
        info.status.success(),
        "ssh root@{} docker info failed ({}): {}",
        lab.host_ip(2),
        info.status,
        String::from_utf8_lossy(&info.stderr)
    );

    let cleanup = Cleanup(&lab);
    cleanup.remove(); // leftovers of an interrupted run

    let head_ip = lab.host_ip(1);
    let worker_ip = lab.host_ip(2);
    let head_node_ip = format!("--node-ip-address={head_ip}");
    let head = ray_container(
        HEAD,
        &[
            "--head",
            &head_node_ip,
            &format!("--port={GCS_PORT}"),
            "--ray-client-server-port=6391",
            "--dashboard-host=127.0.0.1",
            "--dashboard-port=8275",
            "--dashboard-agent-listen-port=52600",
            "--dashboard-agent-grpc-port=52601",
            "--runtime-env-agent-port=52602",
            "--metrics-export-port=52603",
            "--node-manager-port=8287",
            "--object-manager-port=8286",
            "--min-worker-port=12000",
            "--max-worker-port=12049",
        ],
    );
    lab.docker_ok(1, &as_strs(&head));
    lab.wait_for_alive(1, HEAD, 1, Duration::from_secs(90));

    let worker = ray_container(
        WORKER,
        &[
            &format!("--address={head_ip}:{GCS_PORT}"),
            &format!("--node-ip-address={worker_ip}"),
            "--node-manager-port=8277",
            "--object-manager-port=8276",
            "--dashboard-agent-listen-port=52610",
            "--dashboard-agent-grpc-port=52611",
            "--runtime-env-agent-port=52612",
            "--metrics-export-port=52613",
            "--min-worker-port=12050",
            "--max-worker-port=12099",
        ],
    );
    lab.docker_ok(2, &as_strs(&worker));
    let nodes = lab.wait_for_alive(1, HEAD, 2, Duration::from_secs(90));

    let mut alive: Vec<_> = nodes
        .iter()
        .filter(|n| n.alive())
        .map(|n| (n.node_ip.as_str(), n.cpus, n.is_head))
        .collect();
    alive.sort_by(|a, b| a.0.cmp(b.0));
    assert_eq!(
        alive,
        vec![
            (head_ip.as_str(), 1.0, true),
            (worker_ip.as_str(), 1.0, false)
        ],
        "Ray membership seen from the head: {nodes:?}"
    );
}
