//! The recorded observations in `fixtures/observed/` are derived from
//! `examples/seedcore.toml`; this test keeps them in step with the code.
//! Regenerate with `UPDATE_FIXTURES=1 cargo test --test fixtures`.

use seedcore::config;
use seedcore::model::{EngineInfo, HostObservation, ObservedContainer, ObservedState};
use seedcore::topology;
use std::collections::BTreeMap;
use std::path::Path;

fn example() -> seedcore::model::DesiredState {
    let loaded = config::load(Path::new("examples/seedcore.toml"), &[]).unwrap();
    topology::lower_fresh(&loaded.config).unwrap()
}

fn host(containers: Vec<ObservedContainer>) -> HostObservation {
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

fn empty() -> ObservedState {
    let mut o = ObservedState::new();
    for h in example().hosts() {
        o.hosts.insert(h, host(Vec::new()));
    }
    o
}

fn converged() -> ObservedState {
    let desired = example();
    let mut o = empty();
    for (i, n) in desired.nodes.iter().enumerate() {
        o.hosts
            .get_mut(&n.host)
            .unwrap()
            .containers
            .push(ObservedContainer {
                name: n.name.0.clone(),
                id: format!("{:064x}", i + 1),
                image: n.image.clone(),
                state: "running".to_string(),
                exit_code: None,
                created: None,
                image_id: None,
                labels: n
                    .labels(&desired.cluster)
                    .into_iter()
                    .collect::<BTreeMap<_, _>>(),
            });
    }
    o
}

fn check(path: &str, state: &ObservedState) {
    let text = serde_json::to_string_pretty(state).unwrap() + "\n";
    if std::env::var_os("UPDATE_FIXTURES").is_some() {
        std::fs::write(path, &text).unwrap();
    }
    let on_disk = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        on_disk == text,
        "{path} is out of date: run `UPDATE_FIXTURES=1 cargo test --test fixtures`"
    );
}

#[test]
fn observed_fixtures_match_the_example() {
    check("fixtures/observed/empty.json", &empty());
    check("fixtures/observed/converged.json", &converged());
}
