//! Secrets in `[cluster.env]` and Ray token authentication.
//!
//! A planted secret (inline, from the operator's environment, from a file,
//! from `--set`) must never show: not in `validate`, not in any rendering of
//! the plan, not in a saved plan, not in a configuration error (quoted lines
//! are masked), not in the fake engines' journal, not in a label. It must
//! still reach the nodes: as a 0400 file put into every container this apply
//! creates, with keyed digests in the `io.seedcore.secrets` label, and a
//! changed value must replace the nodes carrying the old digest.
//!
//! Every planted value contains `PLANTED`, so one substring check catches a
//! leak of any of them, whole or cut.

use seedcore::apply::{self, ApplyOptions, Event, RecordingReporter};
use seedcore::config::{self, Auth, EnvValue, Loaded, Override, Secret, SecretOrigin, TokenSource};
use seedcore::engine::fake::{FakeBackend, FakeCluster};
use seedcore::engine::DockerBackend;
use seedcore::model::{
    DesiredState, HostName, HostObservation, ObservedContainer, ObservedState, Role,
    LABEL_APPLIED_AT, LABEL_APPLIED_BY, LABEL_SECRETS, NODE_DIGEST_KEY_PATH, NODE_SECRETS_PATH,
    NODE_TOKEN_PATH, SENSITIVE, TOKEN_SECRET_NAME,
};
use seedcore::plan::{self, Action, DiffOptions, Plan, Reason};
use seedcore::secrets::{self, HeadSecrets};
use seedcore::{observe, ownership, render, topology};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The marker every planted value holds.
const PLANTED: &str = "PLANTED";
/// `HF_TOKEN = { value = "...", secret = true }`.
const INLINE: &str = "hf_PLANTED_6c1f0e";
/// `WANDB_API_KEY = { env = "..." }`, read from this variable.
const FROM_ENV: &str = "wandb_PLANTED_93ab17";
const ENV_VAR: &str = "SEEDCORE_TEST_WANDB_KEY_93ab17";
/// `DB_PASSWORD = { file = "..." }` (the file ends with a newline, dropped).
const FROM_FILE: &str = "pg_PLANTED_a5d220";
/// `--set cluster.env.HF_TOKEN=...`.
const OVERRIDE: &str = "hf_OVERRIDE_PLANTED_47d3";
/// A variable no test environment sets.
const UNSET_VAR: &str = "SEEDCORE_TEST_UNSET_VAR_XYZ_51c2";

const HOSTS: [&str; 2] = ["10.0.0.1", "10.0.0.2"];
/// The least a configuration needs.
const HEAD_TABLE: &str = "[head]\nhost = \"10.0.0.1\"\n";

// ---------------------------------------------------------------------------
// Helpers

fn assert_no_secret(what: &str, text: &str) {
    assert!(
        !text.trim().is_empty(),
        "{what} is empty: nothing was checked"
    );
    for s in [INLINE, FROM_ENV, FROM_FILE, OVERRIDE, PLANTED] {
        assert!(!text.contains(s), "{what} shows the secret `{s}`:\n{text}");
    }
}

/// The `seedcore` binary with no ambient override or colour setting, and
/// the planted variable `{ env = ... }` reads.
fn seedcore() -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::new(env!("CARGO_BIN_EXE_seedcore"));
    cmd.env_remove("HEAD_IP_OVERRIDE")
        .env_remove("NO_COLOR")
        .env_remove(UNSET_VAR)
        .env(ENV_VAR, FROM_ENV);
    cmd
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Everything printed, for leak checks.
    fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

fn run(cmd: &mut assert_cmd::Command) -> Run {
    let out = cmd.output().expect("the binary runs");
    Run {
        code: out.status.code().expect("an exit code, not a signal"),
        stdout: String::from_utf8(out.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("UTF-8 stderr"),
    }
}

/// A configuration with one secret of each kind and one plain value, its
/// secret file, and an observation of its two hosts, empty.
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    observed: PathBuf,
}

fn config_text(dir: &Path) -> String {
    format!(
        r#"[cluster]
name = "vault"
image = "ray:test"

[cluster.env]
HF_HOME = "/data/hf"
HF_TOKEN = {{ value = "{INLINE}", secret = true }}
WANDB_API_KEY = {{ env = "{ENV_VAR}" }}
DB_PASSWORD = {{ file = "{}" }}

[head]
host = "10.0.0.1"

[workers.w]
hosts = ["10.0.0.2"]
"#,
        dir.join("db_password").display()
    )
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("db_password"), format!("{FROM_FILE}\n")).unwrap();
    let config = dir.path().join("seedcore.toml");
    std::fs::write(&config, config_text(dir.path())).unwrap();
    let mut o = ObservedState::new();
    for h in HOSTS {
        o.hosts
            .insert(HostName(h.to_string()), reachable(Vec::new()));
    }
    let observed = dir.path().join("observed.json");
    std::fs::write(&observed, serde_json::to_string_pretty(&o).unwrap()).unwrap();
    Setup {
        dir,
        config,
        observed,
    }
}

fn reachable(containers: Vec<ObservedContainer>) -> HostObservation {
    HostObservation {
        reachable: true,
        error: None,
        engine: None,
        images: None,
        layers: None,
        containers,
        listening: Vec::new(),
    }
}

fn flag(text: &str) -> Override {
    Override::parse_flag(text).expect("a well-formed --set")
}

/// The error `config::parse` gives, as the CLI prints it.
fn parse_error(text: &str, overrides: &[Override]) -> String {
    match config::parse("secrets.toml", text, overrides) {
        Ok(_) => panic!("should be refused:\n{text}"),
        Err(e) => e.to_string(),
    }
}

fn parse(text: &str) -> Loaded {
    config::parse("secrets.toml", text, &[]).unwrap_or_else(|e| panic!("should load:\n{e}"))
}

/// The line of `text` that names `needle`.
fn line_with<'a>(text: &'a str, needle: &str) -> &'a str {
    text.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with `{needle}` in:\n{text}"))
}

// ---------------------------------------------------------------------------
// 1. A planted secret never shows in what the CLI prints or saves

#[test]
fn validate_never_shows_a_secret() {
    let s = setup();
    let r = run(seedcore().arg("-c").arg(&s.config).arg("validate"));
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    assert!(
        r.stdout.contains("The configuration is valid"),
        "{}",
        r.stdout
    );
    assert_no_secret("validate", &r.all());
}

#[test]
fn the_plan_in_every_format_shows_secrets_as_sensitive_and_plain_values_as_they_are() {
    let s = setup();
    let plan = |format: &str| {
        let r = run(seedcore()
            .arg("-c")
            .arg(&s.config)
            .args(["plan", "--output", format, "--observed"])
            .arg(&s.observed));
        assert_eq!(r.code, 0, "plan --output {format}: {}", r.stderr);
        assert_no_secret(&format!("plan --output {format}"), &r.all());
        r.stdout
    };

    let text = plan("text");
    for key in ["env.HF_TOKEN", "env.WANDB_API_KEY", "env.DB_PASSWORD"] {
        let line = line_with(&text, key);
        assert!(line.contains(SENSITIVE), "`{key}` is not masked: {line}");
    }
    // A plain value is shown: masking is per key, not blanket.
    assert!(line_with(&text, "env.HF_HOME").contains("/data/hf"));
    assert!(line_with(&text, "env.RAY_AUTH_MODE").contains("token"));
    assert!(line_with(&text, "env.RAY_AUTH_TOKEN_PATH").contains(NODE_TOKEN_PATH));

    let markdown = plan("markdown");
    assert!(markdown.contains(SENSITIVE), "{markdown}");

    let json: serde_json::Value = serde_json::from_str(&plan("json")).unwrap();
    let changes = json["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 2, "{json:#}");
    for c in changes {
        let after = &c["after"];
        assert_eq!(
            after["secret_env"],
            serde_json::json!(["DB_PASSWORD", "HF_TOKEN", "WANDB_API_KEY"]),
            "{c:#}"
        );
        let env = after["env"].as_object().unwrap();
        for k in ["DB_PASSWORD", "HF_TOKEN", "WANDB_API_KEY"] {
            assert!(
                !env.contains_key(k),
                "the secret `{k}` is in the node's env"
            );
        }
        assert_eq!(env["HF_HOME"], "/data/hf");
        assert_eq!(env["RAY_AUTH_MODE"], "token");
        assert_eq!(env["RAY_AUTH_TOKEN_PATH"], NODE_TOKEN_PATH);
        // The node loads its secrets from the file, through a fixed script.
        let command: Vec<&str> = after["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(command[..2], ["bash", "-c"], "{command:?}");
        assert!(command[2].contains(NODE_SECRETS_PATH), "{command:?}");
        assert!(command[2].ends_with("exec \"$@\"") || c["role"] == "head");
        assert_eq!(command[3], "seedcore");
        assert!(command.contains(&"start"), "{command:?}");
    }

    let r = run(seedcore()
        .arg("-c")
        .arg(&s.config)
        .args(["graph", "--observed"])
        .arg(&s.observed));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_no_secret("graph", &r.all());
}

#[test]
fn a_saved_plan_holds_no_secret_and_is_private() {
    let s = setup();
    let fresh = s.dir.path().join("fresh-plan.json");
    let existing = s.dir.path().join("existing-plan.json");
    std::fs::write(&existing, "old").unwrap();
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o644)).unwrap();
    for out in [&fresh, &existing] {
        let r = run(seedcore()
            .arg("-c")
            .arg(&s.config)
            .args(["plan", "--observed"])
            .arg(&s.observed)
            .arg("--out")
            .arg(out));
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_no_secret("plan --out (printed)", &r.all());
        let saved = std::fs::read_to_string(out).unwrap();
        assert!(saved.contains("\"secret_env\""), "{saved}");
        assert_no_secret("the saved plan", &saved);
        let mode = std::fs::metadata(out).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "`{}` is not private", out.display());
    }
}

/// An error whose location is the secret's own line quotes it masked.
#[test]
fn configuration_errors_quote_secret_lines_masked() {
    let cases = [
        // An unknown key in the secret's own table: the error is on its line.
        (
            "unknown key in the secret's table",
            format!(
                "[cluster.env]\nHF_TOKEN = {{ value = \"{INLINE}\", secret = true, colour = 1 }}\n[head]\nhost = \"10.0.0.1\"\n"
            ),
            "unknown key `colour`",
        ),
        // Another env entry on the same line is wrong.
        (
            "another entry on the line",
            format!(
                "[cluster]\nenv = {{ HF_TOKEN = {{ value = \"{INLINE}\" }}, BAD = 5 }}\n[head]\nhost = \"10.0.0.1\"\n"
            ),
            "`cluster.env.BAD`",
        ),
        // A type error elsewhere on the line (serde's stage).
        (
            "a type error on the line",
            format!(
                "cluster = {{ name = 5, env = {{ HF_TOKEN = {{ value = \"{INLINE}\" }} }} }}\n[head]\nhost = \"10.0.0.1\"\n"
            ),
            "`cluster.name` has the wrong type",
        ),
        // A plain string value is masked too (the line may hold a secret).
        (
            "a plain value on a wrong line",
            format!(
                "[cluster]\nenv = {{ HF_HOME = \"{INLINE}\", \"1X\" = \"v\" }}\n[head]\nhost = \"10.0.0.1\"\n"
            ),
            "is not an environment variable name",
        ),
    ];
    for (what, text, message) in &cases {
        let e = parse_error(text, &[]);
        assert!(e.contains(message), "{what}: {e}");
        assert!(e.contains("secrets.toml:"), "{what}: not located: {e}");
        assert!(e.contains(SENSITIVE), "{what}: the line is not quoted: {e}");
        assert_no_secret(what, &e);
    }

    // And through the CLI, which prints the same error on stderr.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, &cases[0].1).unwrap();
    let r = run(seedcore().arg("-c").arg(&path).arg("validate"));
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("HF_TOKEN = (sensitive)"), "{}", r.stderr);
    assert_no_secret("validate of a bad file", &r.all());

    // An error elsewhere in a file with secrets of every kind.
    let s = setup();
    let text = std::fs::read_to_string(&s.config).unwrap().replace(
        "[workers.w]\nhosts = [\"10.0.0.2\"]",
        "[workers.w]\nhosts = [\"10.0.0.2\"]\ncpus = 0",
    );
    std::fs::write(&s.config, text).unwrap();
    let r = run(seedcore().arg("-c").arg(&s.config).arg("validate"));
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("workers.w.cpus"), "{}", r.stderr);
    assert_no_secret("an error beside secrets", &r.all());
}

/// TOML syntax errors are found before the file's keys are known: the line
/// they quote must not show a secret written on it either.
#[test]
fn toml_syntax_errors_on_a_secrets_line_do_not_quote_it() {
    let mut leaks = Vec::new();
    for (what, text) in [
        (
            "junk after the inline table",
            format!(
                "[cluster.env]\nHF_TOKEN = {{ value = \"{INLINE}\", secret = true }} x\n{HEAD_TABLE}"
            ),
        ),
        (
            "a key written twice",
            format!(
                "[cluster.env]\nHF_TOKEN = {{ value = \"{INLINE}\" }}\nHF_TOKEN = {{ value = \"{INLINE}\" }}\n{HEAD_TABLE}"
            ),
        ),
        (
            "an unclosed string after the secret",
            format!("[cluster.env]\nHF_TOKEN = {{ value = \"{INLINE}\", file = \"x }}\n{HEAD_TABLE}"),
        ),
    ] {
        let e = parse_error(&text, &[]);
        assert!(e.contains("invalid TOML"), "{what}: {e}");
        if e.contains(PLANTED) {
            leaks.push(format!("{what}:\n{e}"));
        }
    }
    assert!(
        leaks.is_empty(),
        "TOML syntax errors quote a secret:\n{}",
        leaks.join("\n")
    );
}

/// Values that cannot be used are refused without being echoed.
#[test]
fn unusable_secret_values_are_refused_without_echo() {
    let dir = tempfile::tempdir().unwrap();
    let nul = dir.path().join("nul");
    std::fs::write(&nul, format!("{FROM_FILE}\0tail")).unwrap();
    let binary = dir.path().join("binary");
    let mut bytes = FROM_FILE.as_bytes().to_vec();
    bytes.extend_from_slice(&[0xff, 0xfe, b'\n']);
    std::fs::write(&binary, bytes).unwrap();
    let huge = format!("{FROM_FILE} ").repeat(3000);
    for (what, entry, message) in [
        (
            "a file holding NUL",
            format!("DB_PASSWORD = {{ file = \"{}\" }}", nul.display()),
            "NUL",
        ),
        (
            "a file that is not UTF-8",
            format!("DB_PASSWORD = {{ file = \"{}\" }}", binary.display()),
            "not UTF-8",
        ),
        (
            "an inline value too long",
            format!("HF_TOKEN = {{ value = \"{huge}\" }}"),
            "bytes, more than 32768",
        ),
    ] {
        let text = format!("[cluster.env]\n{entry}\n[head]\nhost = \"10.0.0.1\"\n");
        let e = parse_error(&text, &[]);
        assert!(e.contains(message), "{what}: {e}");
        assert_no_secret(what, &e);
    }

    // From the environment, through the CLI (the variable is the child's).
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!("[cluster.env]\nWANDB_API_KEY = {{ env = \"{ENV_VAR}\" }}\n[head]\nhost = \"10.0.0.1\"\n"),
    )
    .unwrap();
    let r = run(seedcore()
        .arg("-c")
        .arg(&path)
        .arg("validate")
        .env(ENV_VAR, &huge));
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stderr.contains(&format!(
            "the environment variable `{ENV_VAR}` cannot be used"
        )),
        "{}",
        r.stderr
    );
    assert_no_secret("a variable too long", &r.all());
}

// ---------------------------------------------------------------------------
// 2. `--set` on a secret

#[test]
fn a_set_on_a_secret_is_shown_as_sensitive_everywhere() {
    let s = setup();
    let set = format!("cluster.env.HF_TOKEN={OVERRIDE}");
    let r = run(seedcore()
        .arg("-c")
        .arg(&s.config)
        .args(["--set", &set, "--set", "cluster.env.HF_HOME=/other"])
        .arg("validate"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout
            .contains("Override in force: cluster.env.HF_TOKEN = (sensitive) (--set)"),
        "{}",
        r.stdout
    );
    // A plain value set the same way is shown: the file decides.
    assert!(
        r.stdout
            .contains("Override in force: cluster.env.HF_HOME = /other (--set)"),
        "{}",
        r.stdout
    );
    assert_no_secret("validate --set", &r.all());

    for format in ["text", "markdown", "json"] {
        let r = run(seedcore()
            .arg("-c")
            .arg(&s.config)
            .args(["--set", &set, "plan", "--output", format, "--observed"])
            .arg(&s.observed));
        assert_eq!(r.code, 0, "{format}: {}", r.stderr);
        assert!(
            r.stdout
                .contains("cluster.env.HF_TOKEN = (sensitive) (--set)"),
            "{format}: the header does not name the override:\n{}",
            r.stdout
        );
        assert_no_secret(&format!("plan --set --output {format}"), &r.all());
    }

    // The override is the value the node gets, still a secret. (`{ env =
    // ... }` would read this test process's environment: leave it out.)
    let text = config_text(s.dir.path())
        .replace(&format!("WANDB_API_KEY = {{ env = \"{ENV_VAR}\" }}\n"), "");
    let loaded = config::parse("secrets.toml", &text, &[flag(&set)]).unwrap();
    match &loaded.config.cluster.env["HF_TOKEN"] {
        EnvValue::Secret(v) => assert_eq!(v.expose(), OVERRIDE),
        other => panic!("the override made HF_TOKEN plain: {other:?}"),
    }
    assert_eq!(
        loaded.source.overrides()[0].describe(),
        "cluster.env.HF_TOKEN = (sensitive) (--set)"
    );
}

#[test]
fn a_saved_plan_made_with_a_set_on_a_secret_holds_no_secret() {
    let s = setup();
    let out = s.dir.path().join("plan.json");
    let r = run(seedcore()
        .arg("-c")
        .arg(&s.config)
        .args(["--set", &format!("cluster.env.HF_TOKEN={OVERRIDE}")])
        .args(["plan", "--observed"])
        .arg(&s.observed)
        .arg("--out")
        .arg(&out));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_no_secret("plan --set --out (printed)", &r.all());
    assert_no_secret(
        "a plan saved with --set",
        &std::fs::read_to_string(&out).unwrap(),
    );
}

#[test]
fn an_error_located_at_a_set_on_env_does_not_echo_its_value() {
    let text = "[cluster.env]\nHF_TOKEN = { value = \"x\" }\n[head]\nhost = \"10.0.0.1\"\n";
    let huge = format!("{OVERRIDE}-").repeat(2000);
    for set in [
        format!("cluster.env.bad-key={OVERRIDE}"),
        format!("cluster.env.HF_TOKEN={huge}"),
        format!("cluster.env.NEW_PLAIN={huge}"),
    ] {
        let e = parse_error(text, &[flag(&set)]);
        let key = set.split_once('=').unwrap().0;
        assert!(
            e.contains(&format!("--set {key}=(sensitive)")),
            "`{key}`: the location does not name the override:\n{e}"
        );
        assert_no_secret(&format!("the error of --set {key}"), &e);
    }
}

// ---------------------------------------------------------------------------
// 3. The diff replaces a node whose secrets' digests differ

const EXAMPLE: &str = "examples/seedcore.toml";
const CONVERGED: &str = "fixtures/observed/converged.json";
const HEAD: &str = "seedcore-ray-head";
const LOCAL_1: &str = "seedcore-ray-local-172.31.17.143-1";
const REMOTE_1: &str = "seedcore-ray-remote-172.31.20.11-1";

fn converged_example() -> (DesiredState, ObservedState) {
    let (loaded, _) = seedcore::cli::load(Path::new(EXAMPLE), &[]).expect("the example loads");
    let observed = seedcore::cli::read_observation(Path::new(CONVERGED)).expect("the fixture");
    let desired = seedcore::ops::settle(&loaded, &observed).expect("the example settles");
    (desired, observed)
}

fn container<'a>(o: &'a mut ObservedState, name: &str) -> &'a mut ObservedContainer {
    o.hosts
        .values_mut()
        .flat_map(|h| h.containers.iter_mut())
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container `{name}`"))
}

fn label_all(o: &mut ObservedState, label: &str) {
    for c in o.hosts.values_mut().flat_map(|h| h.containers.iter_mut()) {
        c.labels
            .insert(LABEL_SECRETS.to_string(), label.to_string());
    }
}

fn set_label(o: &mut ObservedState, name: &str, label: &str) {
    container(o, name)
        .labels
        .insert(LABEL_SECRETS.to_string(), label.to_string());
}

fn digests(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn plan_with(desired: &DesiredState, o: &ObservedState, expected: Option<&[(&str, &str)]>) -> Plan {
    plan::build(
        desired,
        o,
        DiffOptions {
            secrets: expected.map(digests),
            ..Default::default()
        },
        Vec::new(),
    )
    .unwrap_or_else(|e| panic!("the plan builds:\n{e}"))
}

/// `(node, action, cause)` of every change that does something.
fn effective(plan: &Plan) -> Vec<(String, Action, String)> {
    plan.effective()
        .map(|c| (c.node.0.clone(), c.action, c.cause()))
        .collect()
}

#[test]
fn nodes_whose_secret_digests_differ_are_replaced_and_equal_ones_kept() {
    let (desired, converged) = converged_example();
    let token = [(TOKEN_SECRET_NAME, "d1")];
    let both = [("HF_TOKEN", "h1"), (TOKEN_SECRET_NAME, "d1")];

    // Converged, digests unknown (no key): nothing to do.
    assert_eq!(effective(&plan_with(&desired, &converged, None)), []);

    // Every node carries what is expected: nothing to do.
    let mut o = converged.clone();
    label_all(&mut o, "RAY_AUTH_TOKEN=d1");
    assert_eq!(effective(&plan_with(&desired, &o, Some(&token))), []);
    label_all(&mut o, "HF_TOKEN=h1,RAY_AUTH_TOKEN=d1");
    let p = plan_with(&desired, &o, Some(&both));
    assert_eq!(effective(&p), []);
    assert!(p.changes.iter().all(|c| c.action == Action::NoOp));

    // Without a key the labels are not judged.
    set_label(&mut o, REMOTE_1, "RAY_AUTH_TOKEN=d0");
    assert_eq!(effective(&plan_with(&desired, &o, None)), []);

    // One worker carries an old token: it alone is replaced.
    let mut o = converged.clone();
    label_all(&mut o, "RAY_AUTH_TOKEN=d1");
    set_label(&mut o, REMOTE_1, "RAY_AUTH_TOKEN=d0");
    let p = plan_with(&desired, &o, Some(&token));
    assert_eq!(
        effective(&p),
        [(
            REMOTE_1.to_string(),
            Action::Replace,
            "the Ray token changed (sensitive)".to_string()
        )]
    );
    let change = p.changes.iter().find(|c| c.node.0 == REMOTE_1).unwrap();
    assert_eq!(
        change.reason,
        Reason::SecretsChanged {
            names: vec![TOKEN_SECRET_NAME.to_string()]
        }
    );
    assert!(
        change.container().is_some(),
        "a replacement acts on the old container"
    );
    let text = render::text(&p, render::Style { color: false });
    assert!(text.contains("the Ray token changed (sensitive)"), "{text}");

    // One worker lacks a secret, one has an extra one: each named.
    let mut o = converged.clone();
    label_all(&mut o, "HF_TOKEN=h1,RAY_AUTH_TOKEN=d1");
    set_label(&mut o, LOCAL_1, "RAY_AUTH_TOKEN=d1");
    set_label(&mut o, REMOTE_1, "HF_TOKEN=h2,OLD=x,RAY_AUTH_TOKEN=d0");
    let p = plan_with(&desired, &o, Some(&both));
    assert_eq!(
        effective(&p),
        [
            (
                LOCAL_1.to_string(),
                Action::Replace,
                "env.HF_TOKEN changed (sensitive)".to_string()
            ),
            (
                REMOTE_1.to_string(),
                Action::Replace,
                "env.HF_TOKEN, env.OLD, the Ray token changed (sensitive)".to_string()
            ),
        ]
    );

    // A container with no label at all carries none of them.
    let mut o = converged.clone();
    label_all(&mut o, "HF_TOKEN=h1,RAY_AUTH_TOKEN=d1");
    container(&mut o, LOCAL_1).labels.remove(LABEL_SECRETS);
    let p = plan_with(&desired, &o, Some(&both));
    let change = p.changes.iter().find(|c| c.node.0 == LOCAL_1).unwrap();
    assert_eq!(change.action, Action::Replace);
    assert_eq!(
        change.reason,
        Reason::SecretsChanged {
            names: vec!["HF_TOKEN".to_string(), TOKEN_SECRET_NAME.to_string()]
        }
    );

    // An exited worker with old digests is replaced, not merely started.
    let mut o = converged.clone();
    label_all(&mut o, "RAY_AUTH_TOKEN=d1");
    let c = container(&mut o, REMOTE_1);
    c.state = "exited".to_string();
    c.exit_code = Some(1);
    let p = plan_with(&desired, &o, Some(&token));
    assert_eq!(
        effective(&p)
            .into_iter()
            .find(|(n, ..)| n == REMOTE_1)
            .map(|(_, a, _)| a),
        Some(Action::Start)
    );
    set_label(&mut o, REMOTE_1, "RAY_AUTH_TOKEN=d0");
    let p = plan_with(&desired, &o, Some(&token));
    let change = p.changes.iter().find(|c| c.node.0 == REMOTE_1).unwrap();
    assert_eq!(
        (change.action, change.cause().as_str()),
        (Action::Replace, "the Ray token changed (sensitive)")
    );

    // The head with an old token: replaced, and every worker with it.
    let mut o = converged.clone();
    label_all(&mut o, "RAY_AUTH_TOKEN=d1");
    set_label(&mut o, HEAD, "RAY_AUTH_TOKEN=d0");
    let p = plan_with(&desired, &o, Some(&token));
    for c in &p.changes {
        assert_eq!(c.action, Action::Replace, "{}", c.node);
        if c.role == Role::Head {
            assert_eq!(c.cause(), "the Ray token changed (sensitive)");
        } else {
            assert!(
                matches!(c.reason, Reason::HeadReplaced { .. }),
                "{}: {:?}",
                c.node,
                c.reason
            );
        }
    }
}

/// The example with one inline secret whose value is `value`.
fn example_with_secret(value: &str) -> Loaded {
    let text = std::fs::read_to_string(EXAMPLE).unwrap()
        + &format!(
            "\n[cluster.env]\nHF_TOKEN = {{ value = \"{value}\" }}\nHF_HOME = \"/data/hf\"\n"
        );
    parse(&text)
}

/// A changed value is seen through its digest alone: the spec (and so its
/// hash) does not hold it, and nothing shown names it.
#[test]
fn a_changed_secret_value_replaces_every_node_through_digests_alone() {
    let old = example_with_secret(INLINE);
    let new = example_with_secret("hf_PLANTED_rotated_77");
    let desired_old = topology::lower_fresh(&old.config).unwrap();
    let desired_new = topology::lower_fresh(&new.config).unwrap();
    assert_eq!(
        desired_old, desired_new,
        "a secret's value is not in the spec"
    );
    for n in &desired_new.nodes {
        assert_eq!(n.secret_env, ["HF_TOKEN"]);
        assert!(!n.env.contains_key("HF_TOKEN"));
        assert_no_secret("a node's canonical spec", &n.canonical_json());
        let labels = format!("{:?}", n.labels(&desired_new.cluster));
        assert_no_secret("a node's labels", &labels);
        let lines = n.review_lines();
        assert!(lines.contains(&("env.HF_TOKEN".to_string(), SENSITIVE.to_string())));
    }
    assert_no_secret("the config's Debug", &format!("{:?}", new.config));

    let head = HeadSecrets {
        digest_key: Some(b"0123456789abcdef0123456789abcdef".to_vec()),
        token: Some(Secret::new(SecretOrigin::Inline, "f".repeat(64))),
    };
    let carried = secrets::expected(&old.config, &head).unwrap();
    let expected = secrets::expected(&new.config, &head).unwrap();
    assert_eq!(
        carried.keys().collect::<Vec<_>>(),
        ["HF_TOKEN", TOKEN_SECRET_NAME]
    );
    assert_ne!(carried["HF_TOKEN"], expected["HF_TOKEN"]);
    assert_eq!(carried[TOKEN_SECRET_NAME], expected[TOKEN_SECRET_NAME]);
    // Keyed: another key, other digests.
    let other_key = HeadSecrets {
        digest_key: Some(b"another key, another cluster....".to_vec()),
        ..head.clone()
    };
    assert_ne!(secrets::expected(&old.config, &other_key).unwrap(), carried);
    // Bound to the name: a value moved from one name to another is a change.
    let twins = parse(&with_env(&format!(
        "A = {{ value = \"{INLINE}\" }}\nB = {{ value = \"{INLINE}\" }}"
    )));
    let d = secrets::expected(&twins.config, &head).unwrap();
    assert_ne!(d["A"], d["B"], "two names, one value, one digest");
    // Without the head's key nothing is expected (nothing can be judged).
    assert_eq!(
        secrets::expected(&old.config, &HeadSecrets::default()),
        None
    );

    // The hosts run the old value.
    let mut o = ObservedState::new();
    for h in desired_old.hosts() {
        o.hosts.insert(h, reachable(Vec::new()));
    }
    for (i, n) in desired_old.nodes.iter().enumerate() {
        let mut labels = n.labels(&desired_old.cluster);
        labels.insert(LABEL_SECRETS.to_string(), secrets::label(&carried));
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
                labels,
            });
    }
    let options = |secrets| DiffOptions {
        secrets,
        ..Default::default()
    };
    let same = plan::build(&desired_old, &o, options(Some(carried.clone())), Vec::new()).unwrap();
    assert_eq!(effective(&same), []);

    let p = plan::build(
        &desired_new,
        &o,
        options(Some(expected.clone())),
        Vec::new(),
    )
    .unwrap();
    assert_eq!(
        p.secrets.as_ref(),
        Some(&expected),
        "the plan records the digests"
    );
    for c in &p.changes {
        assert_eq!(c.action, Action::Replace, "{}", c.node);
        assert_eq!(
            c.reason,
            Reason::SecretsChanged {
                names: vec!["HF_TOKEN".to_string()]
            },
            "{}",
            c.node
        );
        assert_eq!(c.cause(), "env.HF_TOKEN changed (sensitive)");
        assert!(c.fields.is_empty(), "nothing else changed: {:?}", c.fields);
    }
    for (what, shown) in [
        ("text", render::text(&p, render::Style { color: false })),
        ("markdown", render::markdown(&p)),
        ("json", render::json(&p)),
    ] {
        assert!(shown.contains("env.HF_TOKEN changed (sensitive)"), "{what}");
        assert_no_secret(&format!("the {what} plan of a rotated secret"), &shown);
    }
}

// ---------------------------------------------------------------------------
// 4. Apply hands the secrets to the containers as files, labels digests

const FAKE_IMAGE: &str = "ray:test";

fn fake_config(dir: &Path) -> String {
    format!(
        r#"[cluster]
name = "vault"
image = "{FAKE_IMAGE}"

[cluster.env]
HF_HOME = "/data/hf"
HF_TOKEN = {{ value = "{INLINE}" }}
DB_PASSWORD = {{ file = "{}" }}

[head]
host = "10.0.0.1"

[workers.w]
hosts = ["10.0.0.1", "10.0.0.2"]
"#,
        dir.join("db_password").display()
    )
}

fn fake_cluster() -> FakeCluster {
    let c = FakeCluster::new();
    for h in HOSTS {
        c.add_host(h, &[FAKE_IMAGE]);
    }
    c
}

fn backends(c: &FakeCluster) -> BTreeMap<HostName, FakeBackend> {
    HOSTS
        .iter()
        .map(|h| (HostName(h.to_string()), c.backend(h)))
        .collect()
}

/// Short timeouts and polls; every other option as the configuration's.
fn options(config: &config::Config, node_files: apply::NodeFiles) -> ApplyOptions {
    ApplyOptions {
        stop_timeout: Duration::from_secs(1),
        head_ready_timeout: Duration::from_secs(5),
        nodes_alive_timeout: Duration::from_secs(5),
        drain_timeout: Duration::from_secs(1),
        poll_interval: Duration::from_millis(5),
        node_files,
        ..ApplyOptions::from_config(config, Some(8))
    }
}

/// Observes the fake hosts and plans `loaded` against them, as `plan` does.
async fn fake_plan(
    c: &FakeCluster,
    loaded: &Loaded,
    expected: Option<BTreeMap<String, String>>,
) -> (Plan, DesiredState) {
    let fresh = topology::lower_fresh(&loaded.config).unwrap();
    let b = backends(c);
    let view: BTreeMap<HostName, Result<&FakeBackend, String>> =
        b.iter().map(|(h, b)| (h.clone(), Ok(b))).collect();
    let observed = observe::observe(&view, &fresh, 8).await;
    let identity = ownership::resolve(&loaded.config, &observed);
    let kept = ownership::kept_ports(&identity, &observed);
    let desired = topology::lower(&loaded.config, &identity, &kept).unwrap();
    let options = DiffOptions {
        secrets: expected,
        ..Default::default()
    };
    let plan = plan::build(&desired, &observed, options, Vec::new()).unwrap();
    (plan, desired)
}

/// Every container on the fake hosts: `(host, container)`.
async fn containers(c: &FakeCluster) -> Vec<(String, ObservedContainer)> {
    let mut out = Vec::new();
    for (h, b) in backends(c) {
        for x in b.all_containers().await.unwrap() {
            out.push((h.0.clone(), x));
        }
    }
    out
}

fn file<'a>(files: &'a [seedcore::engine::ContainerFile], path: &str) -> &'a [u8] {
    &files
        .iter()
        .find(|f| f.path == path)
        .unwrap_or_else(|| panic!("no `{path}` among {files:?}"))
        .bytes
}

#[tokio::test]
async fn apply_puts_the_secrets_into_every_new_container_and_labels_only_digests() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("db_password"), format!("{FROM_FILE}\n")).unwrap();
    let loaded = parse(&fake_config(dir.path()));
    assert!(matches!(
        loaded.config.cluster.auth,
        Auth::Token(TokenSource::Generated)
    ));

    // A new cluster: no key or token kept by a head yet.
    let files = seedcore::ops::apply::node_files(&loaded.config, &HeadSecrets::default());
    let token_file = String::from_utf8(file(&files.head, NODE_TOKEN_PATH).to_vec()).unwrap();
    let token = token_file
        .strip_suffix('\n')
        .expect("one token line")
        .to_string();
    assert!(
        token.len() >= 32 && token.chars().all(|ch| ch.is_ascii_hexdigit()),
        "a generated token: {token}"
    );
    let key = file(&files.head, NODE_DIGEST_KEY_PATH).to_vec();
    assert!(key.len() >= 16, "a digest key of {} bytes", key.len());
    assert_eq!(
        file(&files.worker, NODE_TOKEN_PATH),
        token_file.as_bytes(),
        "workers get the head's token"
    );
    assert!(
        files.worker.iter().all(|f| f.path != NODE_DIGEST_KEY_PATH),
        "only the head keeps the digest key"
    );
    let secrets_file = format!("DB_PASSWORD={FROM_FILE}\0HF_TOKEN={INLINE}\0").into_bytes();
    assert_eq!(
        file(&files.head, NODE_SECRETS_PATH),
        secrets_file.as_slice()
    );
    assert_eq!(
        file(&files.worker, NODE_SECRETS_PATH),
        secrets_file.as_slice()
    );
    assert!(
        files
            .head
            .iter()
            .chain(&files.worker)
            .all(|f| f.mode == 0o400),
        "{:?}",
        files.head
    );
    let shown = format!("{:?} {:?}", files.head, files.worker);
    assert_no_secret("the files' Debug", &shown);
    assert!(!shown.contains(&token), "{shown}");

    let c = fake_cluster();
    let (plan, desired) = fake_plan(&c, &loaded, None).await;
    assert_eq!(plan.summary().add, 3, "{:?}", effective(&plan));
    let reporter = RecordingReporter::default();
    let report = apply::execute(
        &plan,
        &desired,
        &backends(&c),
        &options(&loaded.config, files.clone()),
        &reporter,
    )
    .await;
    assert!(report.succeeded(), "{:?}", report.failures());

    // The journal names each file, its size and mode, never its bytes.
    let journal = c.journal();
    let all = journal.join("\n");
    assert_no_secret("the journal", &all);
    assert!(!all.contains(&token), "the journal shows the token:\n{all}");
    let secrets_len = secrets_file.len();
    for n in &desired.nodes {
        let mut listed = vec![
            format!("{NODE_TOKEN_PATH} ({} bytes, 0400)", token_file.len()),
            format!("{NODE_SECRETS_PATH} ({secrets_len} bytes, 0400)"),
        ];
        if n.role == Role::Head {
            listed.push(format!(
                "{NODE_DIGEST_KEY_PATH} ({} bytes, 0400)",
                key.len()
            ));
        }
        let put = format!("{} put-files {}: {}", n.host, n.name, listed.join(", "));
        let at = |line: &str| {
            journal
                .iter()
                .position(|l| l == line)
                .unwrap_or_else(|| panic!("`{line}` not in the journal:\n{all}"))
        };
        let (create, put, start) = (
            at(&format!("{} create {}", n.host, n.name)),
            at(&put),
            at(&format!("{} start {}", n.host, n.name)),
        );
        assert!(
            create < put && put < start,
            "{}: files after create, before start",
            n.name
        );
    }
    let events = format!("{:?}", reporter.events.lock().unwrap());
    assert_no_secret("the apply's events", &events);
    assert!(!events.contains(&token));
    let events: Vec<Event> = reporter.events.lock().unwrap().clone();
    assert!(!events.is_empty());

    // Each container holds its files, and labels with digests only.
    let head_secrets = HeadSecrets {
        digest_key: Some(key.clone()),
        token: Some(Secret::new(SecretOrigin::Inline, token.clone())),
    };
    let expected = secrets::expected(&loaded.config, &head_secrets).unwrap();
    assert_eq!(
        expected.keys().collect::<Vec<_>>(),
        ["DB_PASSWORD", "HF_TOKEN", TOKEN_SECRET_NAME]
    );
    assert_eq!(
        expected["HF_TOKEN"],
        secrets::digest(&key, "HF_TOKEN", INLINE)
    );
    assert_eq!(
        expected[TOKEN_SECRET_NAME],
        secrets::digest(&key, TOKEN_SECRET_NAME, &token)
    );
    let listed = containers(&c).await;
    assert_eq!(listed.len(), 3);
    let names: BTreeSet<&str> = desired.nodes.iter().map(|n| n.name.as_str()).collect();
    for (host, x) in &listed {
        assert!(names.contains(x.name.as_str()), "{}", x.name);
        let carried = secrets::parse_label(x.labels.get(LABEL_SECRETS).map(String::as_str));
        assert_eq!(carried, expected, "{} carries other digests", x.name);
        for d in carried.values() {
            assert_eq!(d.len(), 24, "{d}");
            assert!(d.chars().all(|ch| ch.is_ascii_hexdigit()), "{d}");
        }
        assert!(x
            .labels
            .get(LABEL_APPLIED_BY)
            .is_some_and(|v| v.contains('@')));
        assert!(x.labels.contains_key(LABEL_APPLIED_AT));
        let labels = format!("{:?}", x.labels);
        assert_no_secret(&format!("the labels of {}", x.name), &labels);
        assert!(!labels.contains(&token), "{labels}");

        let b = c.backend(host);
        let read = |path: &'static str| {
            let b = b.clone();
            let id = x.id.clone();
            async move { b.read_file(&id, path).await.unwrap() }
        };
        assert_eq!(
            read(NODE_SECRETS_PATH).await,
            Some(secrets_file.clone()),
            "{}",
            x.name
        );
        assert_eq!(
            read(NODE_TOKEN_PATH).await,
            Some(token_file.clone().into_bytes()),
            "{}",
            x.name
        );
        let is_head = x.labels.get("io.seedcore.role").map(String::as_str) == Some("head");
        assert_eq!(
            read(NODE_DIGEST_KEY_PATH).await,
            is_head.then(|| key.clone()),
            "{}",
            x.name
        );
    }

    // What the head keeps is what the next plan expects: nothing to do.
    let (again, _) = fake_plan(&c, &loaded, Some(expected.clone())).await;
    assert_eq!(
        effective(&again),
        [],
        "a converged cluster with its secrets"
    );

    // The value changed in the file: every node is replaced for it.
    let rotated = parse(&fake_config(dir.path()).replace(INLINE, "hf_PLANTED_rotated_77"));
    let expected = secrets::expected(&rotated.config, &head_secrets).unwrap();
    let (again, _) = fake_plan(&c, &rotated, Some(expected)).await;
    assert_eq!(again.changes.len(), 3);
    for c in &again.changes {
        assert_eq!(c.action, Action::Replace, "{}", c.node);
        assert_eq!(c.cause(), "env.HF_TOKEN changed (sensitive)", "{}", c.node);
    }
}

#[test]
fn node_files_keep_the_heads_token_and_key_and_follow_the_auth_setting() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("db_password"), format!("{FROM_FILE}\n")).unwrap();
    let loaded = parse(&fake_config(dir.path()));

    // A running head's token and key are kept, not regenerated.
    let kept = HeadSecrets {
        digest_key: Some(vec![7; 32]),
        token: Some(Secret::new(SecretOrigin::Inline, "a".repeat(64))),
    };
    let files = seedcore::ops::apply::node_files(&loaded.config, &kept);
    assert_eq!(
        file(&files.head, NODE_TOKEN_PATH),
        format!("{}\n", "a".repeat(64)).as_bytes()
    );
    assert_eq!(file(&files.head, NODE_DIGEST_KEY_PATH), &[7; 32]);
    assert_eq!(
        files.labels[LABEL_SECRETS],
        secrets::label(&secrets::expected(&loaded.config, &kept).unwrap())
    );
    assert_no_secret("the labels", &format!("{:?}", files.labels));

    // A new head: a new token and key each time.
    let a = seedcore::ops::apply::node_files(&loaded.config, &HeadSecrets::default());
    let b = seedcore::ops::apply::node_files(&loaded.config, &HeadSecrets::default());
    assert_ne!(
        file(&a.head, NODE_TOKEN_PATH),
        file(&b.head, NODE_TOKEN_PATH)
    );
    assert_ne!(
        file(&a.head, NODE_DIGEST_KEY_PATH),
        file(&b.head, NODE_DIGEST_KEY_PATH)
    );

    // The operator's token (`token_file`) is the one handed over.
    let token = "0123456789abcdef0123456789abcdef";
    let token_path = dir.path().join("token");
    std::fs::write(&token_path, format!("{token}\n")).unwrap();
    let given = parse(&fake_config(dir.path()).replace(
        "[cluster.env]",
        &format!("token_file = \"{}\"\n\n[cluster.env]", token_path.display()),
    ));
    match &given.config.cluster.auth {
        Auth::Token(TokenSource::Given(t)) => {
            assert_eq!(t.expose(), token);
            assert_eq!(t.origin, SecretOrigin::File(token_path.clone()));
        }
        other => panic!("{other:?}"),
    }
    let files = seedcore::ops::apply::node_files(&given.config, &kept);
    assert_eq!(
        file(&files.worker, NODE_TOKEN_PATH),
        format!("{token}\n").as_bytes()
    );
    let carried = secrets::parse_label(Some(&files.labels[LABEL_SECRETS]));
    assert_eq!(
        carried[TOKEN_SECRET_NAME],
        secrets::digest(&[7; 32], TOKEN_SECRET_NAME, token)
    );

    // `auth = "none"`: no token file, no token digest; the secrets still go.
    let open = parse(
        &fake_config(dir.path()).replace("[cluster.env]", "auth = \"none\"\n\n[cluster.env]"),
    );
    let files = seedcore::ops::apply::node_files(&open.config, &HeadSecrets::default());
    assert!(files
        .head
        .iter()
        .chain(&files.worker)
        .all(|f| f.path != NODE_TOKEN_PATH));
    file(&files.worker, NODE_SECRETS_PATH);
    let carried = secrets::parse_label(Some(&files.labels[LABEL_SECRETS]));
    assert_eq!(
        carried.keys().collect::<Vec<_>>(),
        ["DB_PASSWORD", "HF_TOKEN"]
    );

    // Neither secrets nor a token: nothing to hand over, no secrets label.
    let bare = parse(
        "[cluster]\nauth = \"none\"\n[cluster.env]\nHF_HOME = \"/x\"\n[head]\nhost = \"10.0.0.1\"\n",
    );
    let files = seedcore::ops::apply::node_files(&bare.config, &HeadSecrets::default());
    assert!(
        files.head.is_empty() && files.worker.is_empty(),
        "{files:?}"
    );
    assert!(!files.labels.contains_key(LABEL_SECRETS));
    assert!(files.labels.contains_key(LABEL_APPLIED_BY));
}

// ---------------------------------------------------------------------------
// 5. What the configuration refuses, and how it says so

fn with_env(entry: &str) -> String {
    format!("[cluster.env]\n{entry}\n{HEAD_TABLE}")
}

fn with_cluster(lines: &str) -> String {
    format!("[cluster]\n{lines}\n{HEAD_TABLE}")
}

#[test]
fn an_unset_variable_is_named_with_the_fix() {
    let e = parse_error(
        &with_env(&format!("WANDB_API_KEY = {{ env = \"{UNSET_VAR}\" }}")),
        &[],
    );
    assert!(
        e.contains(&format!(
            "error: `cluster.env.WANDB_API_KEY`: the environment variable `{UNSET_VAR}` is not set"
        )),
        "{e}"
    );
    assert!(
        e.contains(&format!(
            "hint: export `{UNSET_VAR}` before running seedcore"
        )),
        "{e}"
    );
    assert!(
        e.contains("--> secrets.toml:2:"),
        "located at the entry: {e}"
    );

    let e = parse_error(&with_env("K = { env = \"NOT-A-NAME\" }"), &[]);
    assert!(
        e.contains("`NOT-A-NAME` is not an environment variable name"),
        "{e}"
    );
}

#[test]
fn an_unreadable_file_is_named() {
    let e = parse_error(
        &with_env("DB_PASSWORD = { file = \"/nonexistent/seedcore-db\" }"),
        &[],
    );
    assert!(
        e.contains("`cluster.env.DB_PASSWORD`: cannot read `/nonexistent/seedcore-db`"),
        "{e}"
    );
    assert!(e.contains("hint: check the path"), "{e}");
}

#[test]
fn a_file_secret_loses_one_trailing_newline() {
    let dir = tempfile::tempdir().unwrap();
    for (written, read) in [
        (format!("{FROM_FILE}\n"), FROM_FILE.to_string()),
        (format!("{FROM_FILE}\r\n"), FROM_FILE.to_string()),
        (format!("{FROM_FILE}\n\n"), format!("{FROM_FILE}\n")),
        (FROM_FILE.to_string(), FROM_FILE.to_string()),
    ] {
        let path = dir.path().join("secret");
        std::fs::write(&path, &written).unwrap();
        let loaded = parse(&with_env(&format!(
            "DB = {{ file = \"{}\" }}",
            path.display()
        )));
        match &loaded.config.cluster.env["DB"] {
            EnvValue::Secret(s) => {
                assert_eq!(s.expose(), read, "{written:?}");
                assert_eq!(s.origin, SecretOrigin::File(path.clone()));
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn the_shapes_of_an_env_entry() {
    let loaded = parse(&with_env(&format!(
        "A = \"plain\"\nB = {{ value = \"{INLINE}\" }}\nC = {{ value = \"{INLINE}\", secret = true }}\nD = {{ value = \"shown\", secret = false }}"
    )));
    let env = &loaded.config.cluster.env;
    assert_eq!(env["A"], EnvValue::Plain("plain".to_string()));
    assert!(env["B"].is_secret(), "the table form defaults to secret");
    assert!(env["C"].is_secret());
    assert_eq!(env["D"], EnvValue::Plain("shown".to_string()));

    for (entry, message) in [
        (
            format!("K = {{ value = \"{INLINE}\", env = \"Y\" }}"),
            "give exactly one of `value`, `env` and `file`",
        ),
        (
            "K = { env = \"Y\", file = \"/x\" }".to_string(),
            "give exactly one of `value`, `env` and `file`",
        ),
        (
            "K = {}".to_string(),
            "give exactly one of `value`, `env` and `file`",
        ),
        (
            format!("K = {{ env = \"{UNSET_VAR}\", secret = false }}"),
            "a value from `env` or `file` is always secret",
        ),
        (
            format!("K = {{ value = \"{INLINE}\", secret = \"yes\" }}"),
            "`secret` takes `true` or `false`",
        ),
        ("K = { value = 5 }".to_string(), "`value` takes a string"),
        ("K = 5".to_string(), "the value must be a string or a table"),
        (
            format!("K = {{ value = \"{INLINE}\", hidden = true }}"),
            "unknown key `hidden`",
        ),
    ] {
        let e = parse_error(&with_env(&entry), &[]);
        assert!(
            e.contains(&format!("`cluster.env.K`: {message}")),
            "{entry}: {e}"
        );
        assert_no_secret(&entry, &e);
    }
}

#[test]
fn ray_auth_variables_are_seedcores_own() {
    for entry in [
        "RAY_AUTH_MODE = \"disabled\"".to_string(),
        format!("RAY_AUTH_TOKEN = {{ value = \"{INLINE}\" }}"),
        "RAY_AUTH_TOKEN_PATH = \"/tmp/t\"".to_string(),
    ] {
        let e = parse_error(&with_env(&entry), &[]);
        let key = entry.split_once(' ').unwrap().0;
        assert!(
            e.contains(&format!("`{key}` is set by seedcore from `cluster.auth`")),
            "{e}"
        );
        assert!(e.contains("hint: set `cluster.auth`"), "{e}");
        assert_no_secret(&entry, &e);
    }
    // Through `--set` too.
    let e = parse_error(
        &with_env("A = \"1\""),
        &[flag("cluster.env.RAY_AUTH_MODE=disabled")],
    );
    assert!(e.contains("`RAY_AUTH_MODE` is set by seedcore"), "{e}");
}

#[test]
fn auth_settings_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let good = write("good", "0123456789abcdef0123456789abcdef\n");
    let short = write("short", "tok_PLANTED\n");
    let spaced = write("spaced", "tok_PLANTED_0123 456789abcdef\n");

    let e = parse_error(
        &with_cluster(&format!("auth = \"none\"\ntoken_file = \"{good}\"")),
        &[],
    );
    assert!(
        e.contains("`cluster.auth` is `none`, but a token is given"),
        "{e}"
    );
    let e = parse_error(
        &with_cluster(&format!("auth = \"none\"\ntoken_env = \"{UNSET_VAR}\"")),
        &[],
    );
    assert!(
        e.contains("`cluster.auth` is `none`, but a token is given"),
        "{e}"
    );

    for path in [&short, &spaced] {
        let e = parse_error(&with_cluster(&format!("token_file = \"{path}\"")), &[]);
        assert!(
            e.contains("the Ray token is shorter than 16 characters or holds spaces"),
            "{e}"
        );
        assert!(
            e.contains("secrets.toml:2:"),
            "located at `token_file`: {e}"
        );
        assert_no_secret("a refused token", &e);
    }

    let e = parse_error(
        &with_cluster(&format!(
            "token_file = \"{good}\"\ntoken_env = \"{UNSET_VAR}\""
        )),
        &[],
    );
    assert!(
        e.contains("give one of `token_file` and `token_env`, not both"),
        "{e}"
    );

    let e = parse_error(&with_cluster(&format!("token_env = \"{UNSET_VAR}\"")), &[]);
    assert!(
        e.contains(&format!(
            "the Ray token: the environment variable `{UNSET_VAR}` is not set"
        )),
        "{e}"
    );

    let e = parse_error(&with_cluster("auth = \"tokens\""), &[]);
    assert!(
        e.contains("`cluster.auth` is `tokens`; it takes `token` or `none`"),
        "{e}"
    );

    // Accepted settings, and what every node gets from them.
    let node_env = |text: &str| {
        let desired = topology::lower_fresh(&parse(text).config).unwrap();
        let envs: Vec<BTreeMap<String, String>> =
            desired.nodes.iter().map(|n| n.env.clone()).collect();
        envs[0].clone()
    };
    for text in [
        HEAD_TABLE.to_string(),
        with_cluster("auth = \"token\""),
        with_cluster(&format!("token_file = \"{good}\"")),
    ] {
        let env = node_env(&text);
        assert_eq!(env["RAY_AUTH_MODE"], "token", "{text}");
        assert_eq!(env["RAY_AUTH_TOKEN_PATH"], NODE_TOKEN_PATH, "{text}");
    }
    let env = node_env(&with_cluster("auth = \"none\""));
    assert_eq!(env["RAY_AUTH_MODE"], "disabled");
    assert!(!env.contains_key("RAY_AUTH_TOKEN_PATH"));
    assert_eq!(
        parse(&with_cluster("auth = \"none\"")).config.cluster.auth,
        Auth::None
    );
}

#[test]
fn a_node_without_secrets_runs_ray_directly() {
    let text = |env: &str| {
        format!(
            "[cluster.env]\nHF_HOME = \"/x\"\n{env}\n{HEAD_TABLE}serve = false\n[workers.w]\nhosts = [\"10.0.0.2\"]\n"
        )
    };
    let desired = topology::lower_fresh(&parse(&text("")).config).unwrap();
    for n in &desired.nodes {
        assert_eq!(
            n.command[..2],
            ["ray", "start"],
            "{}: {:?}",
            n.name,
            n.command
        );
        assert!(n.secret_env.is_empty());
    }
    let secret = parse(&text(&format!("HF_TOKEN = {{ value = \"{INLINE}\" }}")));
    let desired = topology::lower_fresh(&secret.config).unwrap();
    assert_eq!(desired.nodes.len(), 2);
    for n in &desired.nodes {
        assert_eq!(n.command[..2], ["bash", "-c"], "{}", n.name);
        assert!(n.command[2].contains(NODE_SECRETS_PATH));
        assert!(n.command[2].ends_with("exec \"$@\""), "{:?}", n.command[2]);
        assert_eq!(n.command[3], "seedcore");
        assert_eq!(n.command[4..6], ["ray", "start"]);
        assert_eq!(n.command.last().unwrap(), "--block");
        assert_no_secret("a node's command", &n.command.join(" "));
    }
}
