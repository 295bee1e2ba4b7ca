//! Environments (`[env.NAME]` overlays, `--env NAME`, `SEEDCORE_ENV`),
//! offline: one file plans two different clusters, errors in an overlay point
//! at the overlay's line, an unknown environment lists the known ones, and a
//! saved plan is applied only in the environment it was made in. Every
//! message a user reads is a snapshot.

use seedcore::config::{self, Override, Selection};
use seedcore::model::DesiredState;
use std::path::Path;

mod support;
use support::cli::{run, seedcore};

const ENVS: &str = "fixtures/config/environments/seedcore.toml";
const BAD: &str = "fixtures/config/environments/bad_overlay.toml";
const EMPTY: &str = "fixtures/observed/empty.json";
const EXAMPLE: &str = "examples/seedcore.toml";

fn desired(env: Option<&str>) -> DesiredState {
    let selection = env.map(Selection::flag);
    seedcore::cli::load_in(Path::new(ENVS), selection.as_ref(), &[])
        .unwrap_or_else(|e| panic!("{ENVS} in {env:?} should load:\n{e}"))
        .1
}

/// The error `parse_in` gives for this text in this environment, as printed.
fn error_in(text: &str, env: &str, sets: &[&str]) -> String {
    let overrides: Vec<Override> = sets
        .iter()
        .map(|s| Override::parse_flag(s).unwrap())
        .collect();
    match config::parse_in("envs.toml", text, Some(&Selection::flag(env)), &overrides) {
        Ok(loaded) => match seedcore::topology::lower_fresh(&loaded.config) {
            Ok(_) => panic!("should fail in `{env}`:\n{text}"),
            Err(e) => loaded.source.errors(e).to_string(),
        },
        Err(e) => e.to_string(),
    }
}

const BASE: &str = r#"[cluster]
name = "shop"

[head]
host = "10.0.0.1"
gcs_port = 6380

[workers.w]
hosts = ["10.0.0.2"]
"#;

// ---------------------------------------------------------------------------
// Two clusters from one file

#[test]
fn two_environments_plan_two_clusters_from_one_file() {
    let plan = |env: &str| {
        let r = run(seedcore().args([
            "--env",
            env,
            "plan",
            "-c",
            ENVS,
            "--observed",
            EMPTY,
            "--output",
            "json",
        ]));
        assert_eq!(r.code, 0, "{}", r.stderr);
        serde_json::from_str::<serde_json::Value>(&r.stdout).unwrap()
    };
    let (staging, prod) = (plan("staging"), plan("prod"));
    assert_eq!(staging["environment"], "staging");
    assert_eq!(prod["environment"], "prod");
    assert_eq!(staging["format_version"], "2.2");
    // Its own name (derived `BASE-ENV`, or the overlay's own), its own id.
    assert_eq!(staging["cluster"]["name"], "shop-staging");
    assert_eq!(prod["cluster"]["name"], "shop-production");
    assert_ne!(staging["cluster"]["id"], prod["cluster"]["id"]);
    assert_eq!(staging["summary"]["add"], 3);
    assert_eq!(prod["summary"]["add"], 5);

    // The base alone is a third cluster: `shop`.
    let base = desired(None);
    let (s, p) = (desired(Some("staging")), desired(Some("prod")));
    assert_eq!(base.cluster.name, "shop");
    let ids = [&base.cluster.id, &s.cluster.id, &p.cluster.id];
    assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2]);
    // No container name in common, and on every host the two environments
    // bind disjoint ports: they run side by side.
    for a in &s.nodes {
        assert!(p.nodes.iter().all(|b| b.name != a.name), "{}", a.name);
        for b in p.nodes.iter().filter(|b| b.host == a.host) {
            for (a0, a1, what_a) in a.ports.all() {
                for (b0, b1, what_b) in b.ports.all() {
                    assert!(
                        a1 < b0 || b1 < a0,
                        "{} {what_a} {a0}-{a1} overlaps {} {what_b} {b0}-{b1} on {}",
                        a.name,
                        b.name,
                        a.host
                    );
                }
            }
        }
    }
    let head_gcs = |d: &DesiredState| d.head().ports.head.as_ref().unwrap().gcs;
    assert_eq!((head_gcs(&s), head_gcs(&p)), (7380, 6380));
    // What was merged, and what was kept from the base.
    assert_eq!(s.head().cpus, 1, "staging's overlay sets head.cpus");
    assert_eq!(p.head().cpus, 2, "prod keeps the base's head.cpus");
    assert_eq!(s.workers().count(), 2);
    assert_eq!(p.workers().count(), 4, "prod's overlay sets count = 2");

    // The headers name the environment: text and markdown.
    for env in ["staging", "prod"] {
        let text = run(seedcore().args(["--env", env, "plan", "-c", ENVS, "--observed", EMPTY]));
        assert_eq!(text.code, 0, "{}", text.stderr);
        insta::assert_snapshot!(format!("plan_{env}"), text.stdout);
        let md = run(seedcore().args([
            "--env",
            env,
            "plan",
            "-c",
            ENVS,
            "--observed",
            EMPTY,
            "--output",
            "markdown",
        ]));
        let first = md.stdout.lines().next().unwrap_or_default().to_string();
        insta::assert_snapshot!(format!("plan_{env}_markdown_title"), first);
    }
}

#[test]
fn validate_names_the_environment_and_the_base_plans_alone() {
    let r = run(seedcore().args(["--env", "staging", "validate", "-c", ENVS]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    insta::assert_snapshot!("validate_staging", r.stdout);
    // A file with environments and no `--env`: the base alone, named as such.
    let r = run(seedcore().args(["validate", "-c", ENVS]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    insta::assert_snapshot!("validate_base", r.stdout);
    // A file without environments is planned exactly as before.
    let r = run(seedcore().args(["plan", "-c", EXAMPLE, "--observed", EMPTY]));
    assert!(
        r.stdout.starts_with("Cluster `seedcore` (id `"),
        "{}",
        r.stdout
    );
    let r = run(seedcore().args([
        "plan",
        "-c",
        EXAMPLE,
        "--observed",
        EMPTY,
        "--output",
        "json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(v.get("environment").is_none());
}

#[test]
fn seedcore_env_selects_like_the_flag() {
    let flag = run(seedcore().args(["--env", "prod", "validate", "-c", ENVS]));
    let var = run(seedcore()
        .env(config::ENV_VAR, "prod")
        .args(["validate", "-c", ENVS]));
    assert_eq!(var.code, 0, "{}", var.stderr);
    assert_eq!(flag.stdout, var.stdout);
    assert!(
        var.stdout.contains("(environment `prod`)"),
        "{}",
        var.stdout
    );
    // The flag wins over the variable; an empty variable selects nothing.
    let both = run(seedcore()
        .env(config::ENV_VAR, "staging")
        .args(["--env", "prod", "validate", "-c", ENVS]));
    assert_eq!(both.stdout, flag.stdout);
    let empty = run(seedcore()
        .env(config::ENV_VAR, "")
        .args(["validate", "-c", ENVS]));
    assert_eq!(empty.code, 0, "{}", empty.stderr);
    assert!(empty.stdout.contains("cluster `shop`,"), "{}", empty.stdout);
    // A wrong name from the variable is located there.
    let r = run(seedcore()
        .env(config::ENV_VAR, "stagin")
        .args(["validate", "-c", ENVS]));
    assert_eq!(r.code, 1);
    insta::assert_snapshot!("unknown_env_from_variable", r.stderr);
}

#[test]
fn set_applies_on_top_of_the_environment() {
    let r = run(seedcore().args([
        "--env",
        "staging",
        "plan",
        "-c",
        ENVS,
        "--observed",
        EMPTY,
        "--set",
        "head.gcs_port=7390",
    ]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("--port                        = 7390"),
        "{}",
        r.stdout
    );
    let header: Vec<&str> = r.stdout.lines().take(3).collect();
    insta::assert_snapshot!("plan_staging_with_set_header", header.join("\n"));
    // `--set cluster.name` wins over the derived name too.
    let overrides = [Override::parse_flag("cluster.name=shop-qa").unwrap()];
    let loaded = config::parse_in(
        ENVS,
        &std::fs::read_to_string(ENVS).unwrap(),
        Some(&Selection::flag("staging")),
        &overrides,
    )
    .unwrap();
    assert_eq!(loaded.config.cluster.name, "shop-qa");
    // An overlay itself cannot be `--set`.
    let r = run(seedcore().args([
        "--env",
        "staging",
        "validate",
        "-c",
        ENVS,
        "--set",
        "env.staging.head.cpus=2",
    ]));
    assert_eq!(r.code, 1);
    insta::assert_snapshot!("set_into_an_overlay", r.stderr);
}

// ---------------------------------------------------------------------------
// Errors point at the overlay

#[test]
fn an_error_in_an_overlay_points_at_the_overlays_line() {
    let r = run(seedcore().args(["--env", "staging", "validate", "-c", BAD]));
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains(&format!("{BAD}:11:12")), "{}", r.stderr);
    insta::assert_snapshot!("overlay_value_out_of_range", r.stderr);
    // The other environment of the same file is fine.
    let r = run(seedcore().args(["--env", "prod", "validate", "-c", BAD]));
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn overlay_errors_of_every_kind_are_located_in_the_overlay() {
    // A value the base sets too: the overlay's line, not the base's.
    let text = format!("{BASE}\n[env.staging.head]\ngcs_port = 0\n");
    let e = error_in(&text, "staging", &[]);
    assert!(e.contains("envs.toml:12:12"), "{e}");
    insta::assert_snapshot!("overlay_replaces_a_base_value", e);
    // A wrong type (serde's check of the whole file, every overlay).
    let text = format!("{BASE}\n[env.prod.workers.w]\ncount = \"two\"\n");
    insta::assert_snapshot!("overlay_wrong_type", error_in(&text, "prod", &[]));
    // An unknown key, with its did-you-mean.
    let text = format!("{BASE}\n[env.staging.head]\ngcs_prot = 7380\n");
    insta::assert_snapshot!("overlay_unknown_key", error_in(&text, "staging", &[]));
    // A port clash the overlay makes (topology), at the overlay's line.
    let text = format!("{BASE}\n[env.staging.head]\ndashboard_port = 6380\n");
    let e = error_in(&text, "staging", &[]);
    assert!(e.contains("envs.toml:12:"), "{e}");
    insta::assert_snapshot!("overlay_port_clash", e);
    // A group the overlay declares, missing its hosts: at its table.
    let text = format!("{BASE}\n[env.staging.workers.gpu]\ncount = 2\n");
    insta::assert_snapshot!(
        "overlay_new_group_without_hosts",
        error_in(&text, "staging", &[])
    );
    // An environment that is not a table; a table name that is not a name.
    let text = format!("{BASE}\n[env]\nstaging = 1\n");
    insta::assert_snapshot!("overlay_not_a_table", error_in(&text, "staging", &[]));
    let text = format!("{BASE}\n[env.Staging.head]\ncpus = 2\n");
    insta::assert_snapshot!("overlay_bad_name", error_in(&text, "staging", &[]));
    // A derived name that would be too long.
    let long = "a".repeat(30);
    let text = BASE.replace("\"shop\"", &format!("\"{long}\""))
        + "\n[env.staging-eu-west.head]\ncpus = 2\n";
    insta::assert_snapshot!(
        "overlay_derived_name_too_long",
        error_in(&text, "staging-eu-west", &[])
    );
}

#[test]
fn a_secret_in_an_overlay_is_never_quoted() {
    let text = format!(
        "{BASE}\n[env.staging.cluster.env]\n\"1BAD\" = {{ value = \"hunter2\", secret = true }}\n"
    );
    let e = error_in(&text, "staging", &[]);
    assert!(!e.contains("hunter2"), "{e}");
    insta::assert_snapshot!("overlay_secret_hidden", e);
    // Also when another environment is selected and the file is quoted.
    let text = format!(
        "{BASE}\n[env.prod.cluster]\nenv = {{ TOKEN = {{ value = \"hunter2\" }}, X = 1 }}\n"
    );
    let e = error_in(&text, "staging", &[]);
    assert!(!e.contains("hunter2"), "{e}");
}

#[test]
fn an_unknown_environment_lists_the_known_ones() {
    let r = run(seedcore().args(["--env", "stagin", "plan", "-c", ENVS, "--observed", EMPTY]));
    assert_eq!(r.code, 1);
    assert_eq!(r.stdout, "");
    insta::assert_snapshot!("unknown_env", r.stderr);
    let r = run(seedcore().args(["--env", "qa", "validate", "-c", ENVS]));
    insta::assert_snapshot!("unknown_env_no_near_name", r.stderr);
    let r = run(seedcore().args(["--env", "staging", "validate", "-c", EXAMPLE]));
    assert_eq!(r.code, 1);
    insta::assert_snapshot!("unknown_env_file_without_environments", r.stderr);
    let r = run(seedcore().args(["--env", "Staging!", "validate", "-c", ENVS]));
    assert_eq!(r.code, 1);
    insta::assert_snapshot!("env_name_invalid", r.stderr);
}

// ---------------------------------------------------------------------------
// Saved plans

#[test]
fn a_saved_plan_is_applied_only_in_its_environment() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("staging.json");
    let r = run(seedcore()
        .args([
            "--env",
            "staging",
            "plan",
            "-c",
            ENVS,
            "--observed",
            EMPTY,
            "--out",
        ])
        .arg(&out));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(saved["format_version"], "1.1");
    assert_eq!(saved["config"]["environment"], "staging");
    assert_eq!(saved["plan"]["environment"], "staging");
    assert_eq!(saved["plan"]["cluster"]["name"], "shop-staging");
    let shown = |s: &str| s.replace(&dir.path().display().to_string(), "TMP");

    // Another environment: refused before anything is contacted.
    let r = run(seedcore()
        .args(["--env", "prod", "apply", "-c", ENVS])
        .arg(&out));
    assert_eq!(r.code, 1);
    insta::assert_snapshot!("saved_plan_other_env", shown(&r.stderr));
    // No environment at all (the base): refused too.
    let r = run(seedcore().args(["apply", "-c", ENVS]).arg(&out));
    assert_eq!(r.code, 1);
    insta::assert_snapshot!("saved_plan_no_env", shown(&r.stderr));
    // A plan of the base, applied in an environment (here through the variable).
    let base = dir.path().join("base.json");
    let r = run(seedcore()
        .args(["plan", "-c", ENVS, "--observed", EMPTY, "--out"])
        .arg(&base));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&base).unwrap()).unwrap();
    assert!(v["config"].get("environment").is_none());
    let r = run(seedcore()
        .env(config::ENV_VAR, "staging")
        .args(["apply", "-c", ENVS])
        .arg(&base));
    assert_eq!(r.code, 1);
    insta::assert_snapshot!("saved_plan_of_the_base_in_an_env", shown(&r.stderr));

    // The library check, directly.
    let text = std::fs::read_to_string(&out).unwrap();
    let plan = seedcore::plan::artifact::SavedPlan::from_json(&text).unwrap();
    let mut now = plan.config.clone();
    assert!(plan.check_config(&now).is_ok());
    now.environment = Some("prod".to_string());
    assert!(matches!(
        plan.check_config(&now),
        Err(seedcore::plan::artifact::SavedPlanError::Environment { .. })
    ));
}
