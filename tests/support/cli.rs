//! The `seedcore` binary for offline CLI tests, and what a run of it printed.

/// The `seedcore` binary with no ambient override, environment or colour setting.
pub fn seedcore() -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::new(env!("CARGO_BIN_EXE_seedcore"));
    cmd.env_remove("HEAD_IP_OVERRIDE")
        .env_remove("NO_COLOR")
        .env_remove(seedcore::config::ENV_VAR);
    cmd
}

/// Exit code and output of one run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(cmd: &mut assert_cmd::Command) -> Run {
    let out = cmd.output().expect("the binary runs");
    Run {
        code: out.status.code().expect("an exit code, not a signal"),
        stdout: String::from_utf8(out.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("UTF-8 stderr"),
    }
}
