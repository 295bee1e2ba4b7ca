//! Snapshots of every help text, so a change to what users read is reviewed.

use std::process::Command;

fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_seedcore"))
        .args(args)
        .env_remove("HEAD_IP_OVERRIDE")
        .env("NO_COLOR", "1")
        .output()
        .expect("seedcore runs");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn every_command_has_help() {
    insta::assert_snapshot!("help", help(&["--help"]));
    for cmd in [
        "validate",
        "plan",
        "check",
        "graph",
        "observe",
        "apply",
        "status",
        "logs",
        "destroy",
        "restart",
        "env",
        "lock",
        "history",
        "init",
        "schema",
        "completions",
        "man",
    ] {
        insta::assert_snapshot!(format!("help_{cmd}"), help(&[cmd, "--help"]));
    }
    for sub in ["status", "release"] {
        insta::assert_snapshot!(format!("help_lock_{sub}"), help(&["lock", sub, "--help"]));
    }
}

#[test]
fn down_is_an_alias_of_destroy() {
    assert_eq!(help(&["down", "--help"]), help(&["destroy", "--help"]));
}
