//! The commands that fit seedcore into its surroundings: `init` (a starter
//! configuration), `schema` (the file's JSON Schema for editors),
//! `completions` and `man` (from the clap definitions themselves), and the
//! SVG rendering of the step graph through Graphviz.

use super::{exit, write_stdout, Cli, Result, UserError};
use clap::{CommandFactory, ValueEnum};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A shell `seedcore completions` writes for.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// `seedcore init`'s arguments.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Where to write the configuration (default: the `-c` path, `seedcore.toml`).
    #[arg(value_name = "PATH")]
    pub path: Option<PathBuf>,
    /// The head's host: an address (or a name every host resolves). Default: `local`.
    #[arg(long, value_name = "HOST")]
    pub head: Option<String>,
    /// Worker hosts, comma-separated: one worker on each.
    #[arg(long, value_name = "HOST,...", value_delimiter = ',')]
    pub workers: Vec<String>,
    /// CPUs of every node (default 1).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub cpus: Option<i64>,
    /// Overwrite an existing file.
    #[arg(long)]
    pub force: bool,
}

/// `seedcore init`: writes a starter configuration, never over an existing
/// file unless `--force`.
pub fn init(args: &InitArgs, config: &Path) -> Result<u8> {
    let path = args.path.as_deref().unwrap_or(config);
    let text = crate::config::starter(&crate::config::Starter {
        head: args.head.clone(),
        workers: args.workers.clone(),
        cpus: args.cpus,
    })
    .map_err(|e| UserError(e.to_string()))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if args.force {
        options.create(true).truncate(true);
    } else {
        // Atomic: a file created meanwhile is never overwritten either.
        options.create_new(true);
    }
    let written = options
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()));
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(UserError(format!(
                "error: `{}` exists already: nothing was written\nhint: pass `--force` to overwrite it, or give another PATH",
                path.display()
            )))
        }
        Err(e) => {
            return Err(UserError(format!(
                "error: cannot write `{}`: {e}",
                path.display()
            )))
        }
    }
    if super::verbosity() > super::Verbosity::Quiet {
        let check = if path == Path::new("seedcore.toml") {
            "seedcore validate".to_string()
        } else {
            format!("seedcore validate -c {}", path.display())
        };
        eprintln!(
            "Wrote `{}`: check it with `{check}`, then `seedcore plan`.",
            path.display()
        );
    }
    Ok(exit::OK)
}

/// `seedcore schema`.
pub fn schema() -> Result<u8> {
    write_stdout(&crate::config::json_schema_text())?;
    Ok(exit::OK)
}

/// `seedcore completions SHELL`.
pub fn completions(shell: Shell) -> Result<u8> {
    let mut buf = Vec::new();
    let mut cmd = Cli::command();
    match shell {
        Shell::Bash => {
            clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, "seedcore", &mut buf)
        }
        Shell::Zsh => {
            clap_complete::generate(clap_complete::Shell::Zsh, &mut cmd, "seedcore", &mut buf)
        }
        Shell::Fish => {
            clap_complete::generate(clap_complete::Shell::Fish, &mut cmd, "seedcore", &mut buf)
        }
    }
    write_stdout(&String::from_utf8_lossy(&buf))?;
    Ok(exit::OK)
}

/// `seedcore man`: the manual page, in roff, for `man -l -`.
pub fn man() -> Result<u8> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut buf)
        .map_err(|e| UserError(format!("error: cannot render the manual page: {e}")))?;
    write_stdout(&String::from_utf8_lossy(&buf))?;
    Ok(exit::OK)
}

const NO_DOT: &str = "error: `--format svg` needs Graphviz's `dot`, which is not installed (no `dot` in PATH)\nhint: install Graphviz (`apt-get install graphviz`), or print DOT with `--format dot` and render it elsewhere";

/// Graphviz's `dot` from PATH, checked before anything is planned.
pub fn find_dot() -> Result<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("dot"))
        .find(|p| p.is_file())
        .ok_or_else(|| UserError(NO_DOT.to_string()))
}

/// The DOT text rendered to SVG by `dot -Tsvg`.
pub fn svg(dot: &Path, graph: &str) -> Result<String> {
    let failed = |e: &dyn std::fmt::Display| {
        UserError(format!("error: Graphviz's `{}` failed: {e}", dot.display()))
    };
    let mut child = Command::new(dot)
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => UserError(NO_DOT.to_string()),
            _ => failed(&e),
        })?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let input = graph.to_string();
    // Written from a thread: `dot` may start writing before it read everything.
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().map_err(|e| failed(&e))?;
    let _ = writer.join();
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr);
        return Err(failed(&crate::model::bounded(why.trim(), 2000)));
    }
    String::from_utf8(out.stdout).map_err(|e| failed(&e))
}
