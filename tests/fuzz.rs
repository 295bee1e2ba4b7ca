//! A bounded fuzz harness that runs in CI: arbitrary bytes and near-valid
//! TOML through parse, validate, lower and plan, and mangled recorded
//! observations through plan. The only property: no panic, no hang (each
//! case is small; the run is bounded by its case count). Findings are kept
//! as regression cases in `REGRESSIONS`.

use proptest::prelude::*;
use seedcore::config;
use seedcore::model::ObservedState;
use seedcore::plan::{self, DiffOptions};
use seedcore::topology;

const EXAMPLE: &str = include_str!("../examples/seedcore.toml");
const CONVERGED: &str = include_str!("../fixtures/observed/converged.json");

/// Inputs that once broke something, kept forever.
const REGRESSIONS: &[&str] = &[
    "[head]\nhost = \"10.0.0.1\"\n[timeouts]\nhead_ready = 9223372036854775807\n",
    "[head]\nhost = \"10.0.0.1\"\n[timeouts]\nstop = 4294967297\n",
    "[head]\nhost = \"0.0.0.0\"\n",
    "[head]\nhost = \"10.0.0.1\"\n[cluster]\nimage = \"--privileged\"\n",
    "[head]\nhost = \"10.0.0.1\"\n[cluster.env]\n\"-e\" = \"x\"\n",
    "[head]\nhost = \"10.0.0.1\"\n[workers.w]\nhosts = [\"10.0.0.2\"]\nworker_ports = \"12000-65535\"\nworker_ports_per_node = 65535\n",
    "[head]\nhost = \"10.0.0.1\"\nobject_manager_port = 65535\n[workers.w]\nhosts = [\"10.0.0.1\"]\ncount = 256\nobject_manager_port = 65535\n",
    "[head]\nhost = \"10.0.0.1\"\n[cluster]\nagent_ports = \"65533-65535\"\n",
    "[head]\nhost = \"10.0.0.1\"\n[cluster.env]\nK = { value = \"a\\u0000b\", secret = true }\n",
    "[head]\nhost = \"10.0.0.1\"\n[cluster.env]\nK = { file = \"/proc/self/mem\" }\n",
    "[head]\nhost = \"10.0.0.1\"\n[cluster]\nauth = \"none\"\ntoken_env = \"\"\n",
    "[head]\nhost = \"10.0.0.1\"\n[cluster.env]\nK = { file = \"/dev/stdin\" }\n",
];

/// Everything a configuration text goes through before apply.
fn run_config(text: &str) {
    let Ok(loaded) = config::parse("fuzz.toml", text, &[]) else {
        return;
    };
    let Ok(desired) = topology::lower_fresh(&loaded.config) else {
        return;
    };
    let mut observed = ObservedState::new();
    for h in desired.hosts() {
        observed.hosts.insert(
            h,
            serde_json::from_str(
                r#"{"reachable": true, "engine": {"version": "x", "api_version": "1.41", "cpus": 64}}"#,
            )
            .unwrap(),
        );
    }
    if let Ok(p) = plan::build(&desired, &observed, DiffOptions::default(), Vec::new()) {
        let _ = seedcore::render::text(&p, seedcore::render::Style::default());
        let _ = seedcore::render::markdown(&p);
        let _ = seedcore::render::json(&p);
    }
}

#[test]
fn regressions_do_not_panic() {
    for r in REGRESSIONS {
        run_config(r);
    }
}

/// A line of near-valid TOML: a known key with a value of any shape.
fn near_valid_line() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "host",
        "hosts",
        "count",
        "cpus",
        "image",
        "gcs_port",
        "object_manager_port",
        "node_manager_port",
        "worker_ports",
        "worker_ports_per_node",
        "agent_ports",
        "shm_size",
        "name",
        "id",
        "head_ready",
        "stop",
        "serve",
        "public",
        "known_hosts",
        "port",
        "auth",
        "token_file",
        "token_env",
        "HF_TOKEN",
    ]);
    let value = prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        "[0-9]{1,6}-[0-9]{1,6}".prop_map(|v| format!("\"{v}\"")),
        "\\PC{0,40}".prop_map(|v| format!("{v:?}")),
        prop::collection::vec("[0-9.]{1,15}", 0..4).prop_map(|v| format!("{v:?}")),
        Just("true".to_string()),
        "\\PC{0,20}".prop_map(|v| format!("{{ value = {v:?}, secret = true }}")),
        "[A-Z_]{0,8}".prop_map(|v| format!("{{ env = {v:?} }}")),
        "[a-z.~]{0,8}".prop_map(|v| format!("{{ file = {v:?} }}")),
        Just("{ value = \"x\", env = \"Y\" }".to_string()),
        Just("\"none\"".to_string()),
    ];
    let table = prop::sample::select(vec![
        "",
        "[cluster]\n",
        "[head]\n",
        "[workers.w]\n",
        "[workers.x]\n",
        "[timeouts]\n",
        "[ssh]\n",
        "[cluster.env]\n",
    ]);
    (table, key, value).prop_map(|(t, k, v)| format!("{t}{k} = {v}\n"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        run_config(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn near_valid_configs_never_panic(lines in prop::collection::vec(near_valid_line(), 0..12)) {
        let text = format!("[head]\nhost = \"10.0.0.1\"\n{}", lines.concat());
        run_config(&text);
        run_config(&format!("{EXAMPLE}\n{}", lines.concat()));
    }

    #[test]
    fn mangled_observations_never_panic(
        cut in 0usize..CONVERGED.len(),
        junk in "\\PC{0,20}",
        flip in any::<u8>(),
    ) {
        let loaded = config::parse("example.toml", EXAMPLE, &[]).unwrap();
        let desired = topology::lower_fresh(&loaded.config).unwrap();
        let mut text = CONVERGED.to_string();
        text.insert_str(text.floor_char_boundary(cut), &junk);
        let mut bytes = text.into_bytes();
        let i = cut.min(bytes.len().saturating_sub(1));
        bytes[i] ^= flip & 0x7f;
        if let Ok(observed) = serde_json::from_slice::<ObservedState>(&bytes) {
            let identity = seedcore::ownership::resolve(&loaded.config, &observed);
            let kept = seedcore::ownership::kept_ports(&identity, &observed);
            let settled = topology::lower(&loaded.config, &identity, &kept).unwrap_or(desired);
            let _ = plan::build(&settled, &observed, DiffOptions::default(), Vec::new());
        }
    }
}
