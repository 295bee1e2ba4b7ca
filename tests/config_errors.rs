//! Every way a `seedcore.toml` can be wrong, and what the user is told.
//!
//! `fixtures/config/invalid/` holds one file per kind of error; each file's
//! message is an insta snapshot named after the file, so a changed message is
//! reviewed like code. `fixtures/config/valid/` holds files that must load,
//! with a snapshot of what `seedcore validate` says about them. `--set` and
//! `HEAD_IP_OVERRIDE` errors are checked here too, since they are located
//! like file errors.

use seedcore::config::{self, Location, Override, OverrideSource};
use seedcore::topology;
use std::path::{Path, PathBuf};

const INVALID: &str = "fixtures/config/invalid";
const VALID: &str = "fixtures/config/valid";
const EXAMPLE: &str = "examples/seedcore.toml";

/// The `.toml` files of a corpus directory, sorted, as relative paths (so
/// that messages and snapshots do not depend on where the crate is checked out).
fn corpus(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list `{dir}`: {e}"))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| Path::new(dir).join(p.file_name().expect("a file name")))
        .collect();
    files.sort();
    files
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .expect("a file stem")
        .to_string_lossy()
        .into_owned()
}

/// What the CLI prints for a configuration that does not load: the error of
/// `cli::load`, the same path `validate`, `plan` and `graph` take.
fn load_error(path: &Path, overrides: &[Override]) -> String {
    match seedcore::cli::load(path, overrides) {
        Ok((_, desired)) => panic!(
            "`{}` should be rejected, but it lowers to {} node(s)",
            path.display(),
            desired.nodes.len()
        ),
        Err(e) => e.to_string(),
    }
}

/// The same errors as structured values: parse errors, then topology errors
/// located through the source, as `cli::load` does.
fn structured_errors(path: &Path) -> config::ConfigErrors {
    let text = std::fs::read_to_string(path).expect("readable fixture");
    let loaded = match config::parse(&path.display().to_string(), &text, &[]) {
        Err(e) => return e,
        Ok(loaded) => loaded,
    };
    match topology::lower_fresh(&loaded.config) {
        Err(e) => loaded.source.errors(e),
        Ok(_) => panic!("`{}` should be rejected", path.display()),
    }
}

fn flag(text: &str) -> Override {
    Override::parse_flag(text).expect("a well-formed --set")
}

fn example_text() -> String {
    std::fs::read_to_string(EXAMPLE).expect("the example configuration")
}

#[test]
fn the_invalid_corpus_covers_every_kind_of_error() {
    let names: Vec<String> = corpus(INVALID).iter().map(|p| stem(p)).collect();
    for required in [
        "unknown_key_did_you_mean",
        "unknown_top_level_table",
        "host_url",
        "host_with_port",
        "host_bad_ipv4",
        "host_with_space",
        "port_zero",
        "port_too_large",
        "range_reversed",
        "range_malformed",
        "overlap_local_group_with_head_gcs",
        "overlap_local_group_with_head_worker_ports",
        "overlap_two_groups_same_host",
        "slice_too_small",
        "cpus_zero",
        "cpus_negative",
        "image_empty",
        "duplicate_host_in_group",
        "missing_head",
        "missing_head_host",
        "known_hosts_off",
        "toml_syntax_error",
        "wrong_type_count",
        "hosts_empty",
        "agent_ports_too_small",
    ] {
        assert!(
            names.iter().any(|n| n == required),
            "`{INVALID}/{required}.toml` is missing from the corpus"
        );
    }
}

#[test]
fn every_invalid_config_has_a_snapshot_of_its_error() {
    let files = corpus(INVALID);
    assert!(
        files.len() >= 25,
        "the corpus shrank to {} files",
        files.len()
    );
    for path in files {
        let text = load_error(&path, &[]);
        insta::assert_snapshot!(stem(&path), text);
    }
}

#[test]
fn every_error_says_where_and_how_to_fix_it() {
    for path in corpus(INVALID) {
        let errors = structured_errors(&path);
        assert!(!errors.0.is_empty(), "{}: no errors", path.display());
        for e in &errors.0 {
            let shown = e.to_string();
            assert!(
                shown.starts_with("error: "),
                "{}: no `error:` prefix in\n{shown}",
                path.display()
            );
            assert!(
                shown.lines().any(|l| l.starts_with("hint: ")),
                "{}: no `hint:` line in\n{shown}",
                path.display()
            );
            assert!(
                shown.lines().any(|l| l.trim_start().starts_with("--> ")),
                "{}: no `-->` location line in\n{shown}",
                path.display()
            );
            assert!(
                shown.contains(&path.display().to_string()),
                "{}: the location does not name the file in\n{shown}",
                path.display()
            );
        }
    }
}

#[test]
fn errors_written_in_the_file_point_at_line_and_column() {
    // Everything in the corpus except a missing `[head]` has text to point at.
    for path in corpus(INVALID) {
        if stem(&path) == "missing_head" {
            continue;
        }
        let errors = structured_errors(&path);
        let first = &errors.0[0];
        match &first.location {
            Some(Location::File {
                line,
                column,
                line_text,
                ..
            }) => {
                assert!(*line >= 1 && *column >= 1, "{}: {first:?}", path.display());
                let text = std::fs::read_to_string(&path).unwrap();
                assert_eq!(
                    text.lines().nth(line - 1).map(str::trim_end),
                    Some(line_text.as_str()),
                    "{}: the quoted line is not line {line} of the file",
                    path.display()
                );
            }
            other => panic!(
                "{}: expected a file location, got {other:?}",
                path.display()
            ),
        }
    }
}

#[test]
fn the_location_underlines_the_offending_text() {
    let errors = structured_errors(Path::new("fixtures/config/invalid/port_too_large.toml"));
    let Some(Location::File {
        line,
        column,
        line_text,
        width,
        ..
    }) = &errors.0[0].location
    else {
        panic!("no file location: {errors:?}");
    };
    assert_eq!((*line, *column, *width), (6, 23, 5));
    assert_eq!(&line_text[column - 1..column - 1 + width], "70000");
}

#[test]
fn all_errors_of_a_file_are_reported_at_once() {
    let errors = structured_errors(Path::new("fixtures/config/invalid/several_errors.toml"));
    let messages: Vec<&str> = errors.0.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(messages.len(), 3, "{messages:#?}");
    assert!(messages[0].contains("head.cpus"));
    assert!(messages[1].contains("head.dashboard_port"));
    assert!(messages[2].contains("workers.remote.worker_ports"));
}

#[test]
fn an_unreadable_file_says_how_to_pass_one() {
    let text = load_error(Path::new("fixtures/config/does-not-exist.toml"), &[]);
    assert!(
        text.starts_with("error: cannot read `fixtures/config/does-not-exist.toml`"),
        "{text}"
    );
    assert!(
        text.contains("hint: pass the configuration with `-c PATH`"),
        "{text}"
    );
}

// ---------------------------------------------------------------------------
// Valid files

#[test]
fn every_valid_config_loads_and_validate_describes_it() {
    let files = corpus(VALID);
    assert!(
        files.len() >= 3,
        "the valid corpus has {} files",
        files.len()
    );
    for path in files {
        seedcore::cli::load(&path, &[])
            .unwrap_or_else(|e| panic!("`{}` should load:\n{e}", path.display()));
        let out = assert_cmd::Command::new(env!("CARGO_BIN_EXE_seedcore"))
            .args(["validate", "-c"])
            .arg(&path)
            .env_remove("HEAD_IP_OVERRIDE")
            .assert()
            .success()
            .get_output()
            .clone();
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).expect("UTF-8 output");
        insta::assert_snapshot!(format!("validate_{}", stem(&path)), stdout);
    }
}

#[test]
fn a_minimal_config_takes_every_default() {
    let (loaded, desired) =
        seedcore::cli::load(Path::new("fixtures/config/valid/minimal.toml"), &[]).unwrap();
    let c = &loaded.config;
    assert_eq!(c.cluster.name, "seedcore");
    assert_eq!(c.cluster.image, "rayproject/ray:2.60.0");
    assert_eq!(
        c.ssh.port, None,
        "ssh decides the port (~/.ssh/config, else 22)"
    );
    assert_eq!(c.ssh.known_hosts, config::KnownHostsPolicy::Strict);
    assert_eq!(
        (
            c.head.gcs_port,
            c.head.client_server_port,
            c.head.dashboard_port
        ),
        (6380, 10001, 8265)
    );
    assert!(c.head.serve);
    assert_eq!(c.head.serve_port, 8000);
    let g = &c.workers["remote"];
    assert_eq!((g.count, g.cpus), (1, 1));
    assert_eq!(g.worker_ports, None);

    let names: Vec<&str> = desired.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(
        names,
        ["seedcore-ray-head", "seedcore-ray-remote-10.0.0.2-1"]
    );
    let worker = &desired.nodes[1];
    assert!(worker
        .ray_start
        .contains(&"--address=10.0.0.1:6380".to_string()));
    assert!(worker
        .ray_start
        .contains(&"--node-ip-address=10.0.0.2".to_string()));
    assert_eq!(worker.network_mode, "host");
    assert_eq!(worker.restart_policy, "unless-stopped");
    assert!(worker.init);
}

#[test]
fn a_head_only_config_is_valid_and_the_plan_says_there_are_no_workers() {
    let (loaded, desired) =
        seedcore::cli::load(Path::new("fixtures/config/valid/head_only.toml"), &[]).unwrap();
    assert_eq!(desired.nodes.len(), 1);
    assert_eq!(desired.workers().count(), 0);
    let mut observed = seedcore::model::ObservedState::new();
    observed.hosts.insert(
        desired.head().host.clone(),
        seedcore::model::HostObservation {
            reachable: true,
            error: None,
            engine: None,
            images: None,
            layers: None,
            containers: Vec::new(),
            listening: Vec::new(),
        },
    );
    let plan = seedcore::cli::make_plan(&loaded, &desired, &observed, &Default::default()).unwrap();
    assert!(
        plan.notes.iter().any(|n| n.contains("no workers")),
        "{:?}",
        plan.notes
    );
    let text = seedcore::render::text(&plan, seedcore::render::Style::default());
    assert!(
        text.contains("Note: This cluster has no workers: only the head will run"),
        "{text}"
    );
    assert!(
        text.ends_with("Plan: 1 to add, 0 to change, 0 to destroy.\n"),
        "{text}"
    );
}

// ---------------------------------------------------------------------------
// `--set` and HEAD_IP_OVERRIDE

/// `--set` mistakes against the example: each is a snapshot, and each points
/// at the flag rather than at the file.
#[test]
fn set_errors_name_the_flag_and_suggest_the_key() {
    let text = example_text();
    let cases = [
        ("set_unknown_group_key", "workers.local.cout=3"),
        ("set_unknown_table", "hed.host=10.0.0.5"),
        ("set_not_an_integer", "workers.local.count=three"),
        ("set_not_a_bool", "head.serve=yes"),
        ("set_group_without_key", "workers.local=3"),
        ("set_a_table", "head=1"),
        ("set_below_a_scalar", "head.host.x=1"),
        ("set_invalid_port", "head.gcs_port=0"),
        ("set_invalid_host", "head.host=300.1.1.1"),
        (
            "set_duplicate_hosts",
            "workers.local.hosts=10.0.0.9,10.0.0.9",
        ),
    ];
    for (name, set) in cases {
        let o = flag(set);
        let err = match config::parse(EXAMPLE, &text, std::slice::from_ref(&o)) {
            Ok(_) => panic!("`--set {set}` should be rejected"),
            Err(e) => e,
        };
        assert_eq!(err.0.len(), 1, "--set {set}: {err}");
        assert_eq!(
            err.0[0].location,
            Some(Location::Override(format!("--set {set}"))),
            "--set {set}: the error should point at the flag"
        );
        insta::assert_snapshot!(name, err.to_string());
    }
}

#[test]
fn set_unknown_keys_get_a_did_you_mean() {
    let text = example_text();
    for (set, suggestion) in [
        (
            "workers.local.cout=3",
            "did you mean `workers.local.count`?",
        ),
        (
            "workers.remote.cpu=2",
            "did you mean `workers.remote.cpus`?",
        ),
        ("head.gcs_prot=7000", "did you mean `head.gcs_port`?"),
        ("hed.host=10.0.0.5", "did you mean `head.host`?"),
    ] {
        let err = config::parse(EXAMPLE, &text, &[flag(set)]).unwrap_err();
        assert_eq!(err.0[0].hint.as_deref(), Some(suggestion), "--set {set}");
    }
}

#[test]
fn malformed_set_flags_are_refused_before_loading() {
    assert!(Override::parse_flag("noequals")
        .unwrap_err()
        .contains("is not of the form KEY=VALUE"));
    assert!(Override::parse_flag("=5")
        .unwrap_err()
        .contains("empty key"));
    let err = seedcore::cli::overrides(&["noequals".to_string()]).unwrap_err();
    insta::assert_snapshot!("set_malformed_flag", err.to_string());
}

#[test]
fn set_overrides_scalars_of_every_type() {
    let text = example_text();
    let loaded = config::parse(
        EXAMPLE,
        &text,
        &[
            flag("workers.local.count=3"),
            flag("head.serve=false"),
            flag("cluster.image=rayproject/ray:2.59.0"),
            flag("workers.remote.hosts=10.0.0.7, 10.0.0.8"),
            flag("cluster.env.MY_SETTING=1"),
        ],
    )
    .unwrap();
    let c = &loaded.config;
    assert_eq!(c.workers["local"].count, 3);
    assert!(!c.head.serve);
    assert_eq!(c.cluster.image, "rayproject/ray:2.59.0");
    let hosts: Vec<&str> = c.workers["remote"]
        .hosts
        .iter()
        .map(|h| h.as_str())
        .collect();
    assert_eq!(hosts, ["10.0.0.7", "10.0.0.8"]);
    assert_eq!(
        c.cluster.env["MY_SETTING"],
        config::EnvValue::Plain("1".to_string())
    );
    let described: Vec<String> = loaded
        .source
        .overrides()
        .iter()
        .map(|o| o.describe())
        .collect();
    assert_eq!(described[0], "workers.local.count = 3 (--set)");
    assert_eq!(described.len(), 5);
}

#[test]
fn head_ip_override_acts_like_set_head_host() {
    let env =
        config::env_overrides(|k| (k == "HEAD_IP_OVERRIDE").then(|| " 10.9.9.9 ".to_string()));
    assert_eq!(
        env,
        [Override {
            key: "head.host".to_string(),
            value: "10.9.9.9".to_string(),
            source: OverrideSource::Env("HEAD_IP_OVERRIDE"),
            sensitive: false,
        }]
    );
    let loaded = config::parse(EXAMPLE, &example_text(), &env).unwrap();
    assert_eq!(loaded.config.head.host.as_str(), "10.9.9.9");
    assert_eq!(
        loaded.source.overrides()[0].describe(),
        "head.host = 10.9.9.9 (from $HEAD_IP_OVERRIDE)"
    );
    let desired = topology::lower_fresh(&loaded.config).unwrap();
    for w in desired.workers() {
        assert!(
            w.ray_start.contains(&"--address=10.9.9.9:6380".to_string()),
            "{}: {:?}",
            w.name,
            w.ray_start
        );
    }
}

#[test]
fn an_empty_head_ip_override_is_ignored() {
    assert!(config::env_overrides(|_| Some("  ".to_string())).is_empty());
    assert!(config::env_overrides(|_| None).is_empty());
}

#[test]
fn a_set_flag_wins_over_head_ip_override() {
    // `cli::overrides` puts the environment first and the flags after it.
    let mut all = config::env_overrides(|_| Some("10.9.9.9".to_string()));
    all.push(flag("head.host=10.8.8.8"));
    let loaded = config::parse(EXAMPLE, &example_text(), &all).unwrap();
    assert_eq!(loaded.config.head.host.as_str(), "10.8.8.8");
}

#[test]
fn an_invalid_head_ip_override_points_at_the_variable() {
    let env = config::env_overrides(|_| Some("300.1.1.1".to_string()));
    let err = config::parse(EXAMPLE, &example_text(), &env).unwrap_err();
    assert_eq!(
        err.0[0].location,
        Some(Location::Override(
            "$HEAD_IP_OVERRIDE=300.1.1.1".to_string()
        ))
    );
    insta::assert_snapshot!("head_ip_override_invalid", err.to_string());
}

#[test]
fn a_topology_error_caused_by_set_points_at_the_flag() {
    // The example's two local workers need at least 4 worker ports each;
    // squeezing their range through `--set` must blame the flag, not the file.
    let o = [flag("workers.local.worker_ports=11000-11005")];
    let loaded = config::parse(EXAMPLE, &example_text(), &o).unwrap();
    let errors = topology::lower_fresh(&loaded.config).unwrap_err();
    let shown = loaded.source.errors(errors).to_string();
    assert!(
        shown.contains("--> --set workers.local.worker_ports=11000-11005"),
        "{shown}"
    );
    insta::assert_snapshot!("set_slice_too_small", shown);
}

#[test]
fn a_build_tags_the_image_with_its_context_digest() {
    let dir = std::env::temp_dir().join(format!("seedcore-build-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("ctx/sub")).unwrap();
    std::fs::write(dir.join("ctx/Dockerfile"), "FROM scratch\n").unwrap();
    std::fs::write(dir.join("ctx/sub/app.py"), "print(1)\n").unwrap();
    let path = dir.join("seedcore.toml");
    let text = "[cluster]\nimage = \"my/app:dev\"\nbuild = { context = \"ctx\", args = { V = \"1\" } }\n[head]\nhost = \"10.0.0.1\"\n";
    let load = |text: &str| config::parse(path.to_str().unwrap(), text, &[]);
    let first = load(text).unwrap().config;
    assert!(
        first.cluster.image.starts_with("my/app:ctx-")
            && first.cluster.image.len() == "my/app:ctx-".len() + 12,
        "{}",
        first.cluster.image
    );
    assert_eq!(first.cluster.image_source, config::ImageSource::Push);
    assert_eq!(
        load(text).unwrap().config.cluster.image,
        first.cluster.image,
        "deterministic"
    );
    // A changed file, a changed arg: another tag.
    std::fs::write(dir.join("ctx/sub/app.py"), "print(2)\n").unwrap();
    let second = load(text).unwrap().config.cluster.image;
    assert_ne!(second, first.cluster.image);
    let third = load(&text.replace("V = \"1\"", "V = \"2\""))
        .unwrap()
        .config
        .cluster
        .image;
    assert_ne!(third, second);
    // A context without its Dockerfile, a missing context, pull with a build: refused.
    let err = load(&text.replace("context = \"ctx\"", "context = \"ctx/sub\""))
        .unwrap_err()
        .to_string();
    assert!(err.contains("has no `Dockerfile`"), "{err}");
    let err = load(&text.replace("context = \"ctx\"", "context = \"nowhere\""))
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not a directory"), "{err}");
    let err = load(&text.replace("[cluster]\n", "[cluster]\nimage_source = \"pull\"\n"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot take an image built on this machine"),
        "{err}"
    );
    let err = load(&text.replace("args = { V = \"1\" }", "dockerfile = \"../x\""))
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not a path inside the context"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
