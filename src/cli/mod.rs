//! The command line: clap definitions, one thin handler per command, exit
//! codes, and the only place that decides what goes to stdout (data) and what
//! to stderr (progress, errors).

use crate::config::{self, Loaded, Override};
use crate::model::{DesiredState, ObservedState};
use crate::plan::Plan;
use crate::render::{self, Style};
use crate::topology;
use clap::{Parser, Subcommand, ValueEnum};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Operate a Ray cluster of Docker containers across hosts, in plan/apply style.
#[derive(Debug, Parser)]
#[command(
    name = "seedcore",
    version,
    about,
    long_about = None,
    after_help = "Exit codes: 0 success (no changes with --detailed-exitcode), 1 error, 2 changes present (plan --detailed-exitcode), 130 interrupted.\nThe README is the manual: configuration keys, port rules, and every command."
)]
pub struct Cli {
    /// Path of the cluster configuration.
    #[arg(
        short = 'c',
        long = "config",
        global = true,
        default_value = "seedcore.toml"
    )]
    pub config: PathBuf,
    /// Override a configuration value, e.g. `--set workers.local.count=3` (repeatable).
    /// `HEAD_IP_OVERRIDE` in the environment acts like `--set head.host=...`.
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    pub set: Vec<String>,
    /// Select an environment: the file's `[env.NAME]` tables merged over the rest,
    /// a cluster of its own (named `BASE-NAME` unless the overlay names it).
    #[arg(
        long = "env",
        value_name = "NAME",
        global = true,
        env = "SEEDCORE_ENV",
        hide_env_values = true
    )]
    pub env: Option<String>,
    /// The environment came from `SEEDCORE_ENV`, not `--env` (for messages).
    #[arg(skip)]
    pub env_from_var: bool,
    /// When to colour output (`auto`: on a terminal, unless `NO_COLOR` is set).
    #[arg(long, value_enum, global = true, default_value = "auto")]
    pub color: ColorChoice,
    /// Print only errors, warnings and data: no progress, no notes on stderr.
    #[arg(short = 'q', long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// More progress detail on stderr: `-v` every step event on its own line,
    /// with the time each phase took; `-vv` also each step's host and its whole error,
    /// and at the end where the time went, per host and phase.
    #[arg(short = 'v', long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum OutputFormat {
    Text,
    Markdown,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum GraphFormat {
    Dot,
    Mermaid,
    // DOT rendered by Graphviz's `dot -Tsvg`.
    Svg,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a starter configuration (Ray's default ports, token authentication on).
    Init(ecosystem::InitArgs),
    /// Check the configuration and print the nodes it describes.
    Validate,
    /// Show what apply would change, and why.
    Plan(PlanArgs),
    /// Print the plan's step graph.
    Graph {
        /// Plan against a recorded observation instead of the live hosts.
        #[arg(long, value_name = "FILE")]
        observed: Option<PathBuf>,
        /// `svg` renders the DOT with Graphviz's `dot -Tsvg` (Graphviz must be installed).
        #[arg(long, value_enum, default_value = "dot")]
        format: GraphFormat,
        #[command(flatten)]
        scope: ScopeArgs,
    },
    /// Check ports, connections and capacity on every host (what `plan` checks first).
    Check {
        #[command(flatten)]
        scope: ScopeArgs,
    },
    /// Record what every host runs, in the format `plan --observed` reads.
    Observe {
        /// Write to FILE instead of stdout.
        #[arg(short = 'o', long = "out", value_name = "FILE")]
        out: Option<PathBuf>,
        /// Hosts worked on at once (default: `ssh.max_parallel`).
        #[arg(long)]
        parallel: Option<usize>,
    },
    /// Make the hosts match the configuration: plan, confirm, execute.
    Apply(ApplyArgs),
    /// Each node's container and Ray's own view; exit 1 unless the cluster is whole.
    Status {
        #[arg(long, value_enum, default_value = "text")]
        output: OutputFormat,
        /// Hosts worked on at once (default: `ssh.max_parallel`).
        #[arg(long)]
        parallel: Option<usize>,
    },
    /// Container logs of the selected nodes, each line prefixed with its node.
    Logs {
        /// `head`, `workers`, group names or node names (default: every node).
        #[arg(value_name = "NODE")]
        nodes: Vec<String>,
        /// Keep following until Ctrl-C.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only the last N lines of each node.
        #[arg(long, value_name = "N")]
        tail: Option<u64>,
        /// Only lines newer than this, e.g. `10m`, `2h`.
        #[arg(long, value_name = "DURATION")]
        since: Option<String>,
    },
    /// Remove every container of this cluster (every node stops at once)
    #[command(alias = "down")]
    Destroy {
        /// Destroy without asking (required when stdin is not a terminal).
        #[arg(long)]
        auto_approve: bool,
        /// Keep the head; remove only the workers.
        #[arg(long)]
        workers_only: bool,
        /// Hosts and steps worked on at once (default: `ssh.max_parallel`).
        #[arg(long)]
        parallel: Option<usize>,
        /// Wait this long for another operator's lock on the cluster, e.g. `10m` (default: fail at once).
        #[arg(long, value_name = "DURATION", default_value = "0s")]
        lock_timeout: String,
    },
    /// Replace the named nodes (a restarted head takes every worker with it).
    Restart {
        /// `head`, `workers`, group names or node names.
        #[arg(value_name = "NODE")]
        nodes: Vec<String>,
        /// Restart every node.
        #[arg(long)]
        all: bool,
        /// Generate a new Ray token and restart every node with it (a generated token only).
        #[arg(long)]
        rotate_token: bool,
        /// Restart without asking (required when stdin is not a terminal).
        #[arg(long)]
        auto_approve: bool,
        /// Hosts and steps worked on at once (default: `ssh.max_parallel`).
        #[arg(long)]
        parallel: Option<usize>,
        /// Wait this long for another operator's lock on the cluster, e.g. `10m` (default: fail at once).
        #[arg(long, value_name = "DURATION", default_value = "0s")]
        lock_timeout: String,
    },
    /// Print shell exports for Ray clients: `eval "$(seedcore env)"`.
    Env,
    /// The cluster lock that apply, destroy and restart hold on the head's host.
    Lock {
        #[command(subcommand)]
        action: LockAction,
    },
    /// The latest changes made to the cluster, from the head's audit trail.
    History {
        /// How many of the latest entries.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
    },
    /// Print the JSON Schema of seedcore.toml (for editors; shipped as `seedcore.schema.json`).
    Schema,
    /// Print a shell completion script: `source <(seedcore completions bash)`.
    Completions {
        #[arg(value_enum)]
        shell: ecosystem::Shell,
    },
    /// Print the manual page in roff: `seedcore man | man -l -`.
    Man,
}

#[derive(Debug, Subcommand)]
pub enum LockAction {
    /// Who holds the lock, and whether they are still running (exit 1 when locked).
    Status,
    /// Remove a stale lock (one whose holder is gone).
    Release {
        /// Remove it even while its holder runs (stops that holder's keeper).
        #[arg(long)]
        force: bool,
    },
}

/// How far a plan reaches.
#[derive(Debug, Clone, clap::Args)]
pub struct ScopeArgs {
    /// Only change this node, group or host (`head`, `workers` too; repeatable).
    #[arg(long = "target", value_name = "NODE|GROUP|HOST")]
    pub targets: Vec<String>,
    /// Plan the reachable hosts and leave the unreachable ones alone (named in the plan).
    #[arg(long)]
    pub skip_unreachable: bool,
    /// Don't check ports and connections before planning (the plan says so).
    #[arg(long)]
    pub skip_preflight: bool,
    /// Hosts and steps worked on at once (default: `ssh.max_parallel`).
    #[arg(long)]
    pub parallel: Option<usize>,
    /// Workers of a group replaced at once: a count or a percentage (default: `rollout.max_unavailable`, else 1).
    #[arg(long, value_name = "N|N%", value_parser = parse_max_unavailable)]
    pub max_unavailable: Option<crate::config::MaxUnavailable>,
}

fn parse_max_unavailable(text: &str) -> std::result::Result<crate::config::MaxUnavailable, String> {
    crate::config::MaxUnavailable::parse(text).ok_or_else(|| {
        "a count of at least 1 (`2`) or a percentage from 1 to 100 (`25%`)".to_string()
    })
}

impl ScopeArgs {
    pub fn scope(&self) -> crate::ops::apply::Scope {
        crate::ops::apply::Scope {
            skip_unreachable: self.skip_unreachable,
            targets: self.targets.clone(),
            parallel: self.parallel,
            skip_preflight: self.skip_preflight,
            lock_timeout: std::time::Duration::ZERO,
            max_unavailable: self.max_unavailable,
            all_routes: false,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// A plan saved with `seedcore plan --out`; refused if the hosts changed since.
    #[arg(value_name = "PLANFILE")]
    pub planfile: Option<PathBuf>,
    /// Apply without asking (required when stdin is not a terminal).
    #[arg(long)]
    pub auto_approve: bool,
    /// Wait this long for another operator's lock on the cluster, e.g. `10m` (default: fail at once).
    #[arg(long, value_name = "DURATION", default_value = "0s")]
    pub lock_timeout: String,
    #[command(flatten)]
    pub scope: ScopeArgs,
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// Plan against a recorded observation instead of the live hosts.
    #[arg(long, value_name = "FILE")]
    pub observed: Option<PathBuf>,
    #[command(flatten)]
    pub scope: ScopeArgs,
    /// Save the plan for `seedcore apply PLANFILE`.
    #[arg(long, value_name = "PLANFILE")]
    pub out: Option<PathBuf>,
    /// Exit 2 when there are changes (0 when none, 1 on error).
    #[arg(long)]
    pub detailed_exitcode: bool,
    #[arg(long, value_enum, default_value = "text")]
    pub output: OutputFormat,
}

/// Exit codes, stable and documented.
pub mod exit {
    pub const OK: u8 = 0;
    pub const ERROR: u8 = 1;
    pub const CHANGES: u8 = 2;
}

/// An error already shaped for the user: printed as is.
#[derive(Debug)]
pub struct UserError(pub String);

impl std::fmt::Display for UserError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.trim_end())
    }
}

impl std::error::Error for UserError {}

type Result<T> = std::result::Result<T, UserError>;

fn user<E: std::fmt::Display>(e: E) -> UserError {
    UserError(e.to_string())
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    // Timings (`-vv`) count from here.
    crate::timings::now();
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    cli.env_from_var = matches.value_source("env") == Some(clap::parser::ValueSource::EnvVariable);
    let result = run(cli);
    print_timings();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let mut err = std::io::stderr();
            let text = e.to_string();
            let _ = if text.starts_with("error:") {
                writeln!(err, "{text}")
            } else {
                writeln!(err, "error: {text}")
            };
            ExitCode::from(exit::ERROR)
        }
    }
}

/// With `-vv`: where the time went (see `timings`), on stderr.
fn print_timings() {
    let spans = crate::timings::take();
    if spans.is_empty() {
        return;
    }
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "Timings (seconds since seedcore started):");
    for line in crate::timings::render(&spans) {
        let _ = writeln!(err, "  {line}");
    }
}

/// How much seedcore tells on stderr (`-q`, `-v`, `-vv`); data on stdout and
/// errors are never silenced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    /// `-q`: errors, warnings and data only.
    Quiet,
    /// Progress per node, notes.
    Normal,
    /// `-v`: every step event on its own line, and each phase's time.
    Verbose,
    /// `-vv`: also each step's host, a failed step's whole error, and where
    /// the time went (per host and phase, at the end).
    Debug,
}

static VERBOSITY: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(1);

/// The process's verbosity, set once from the command line.
pub fn verbosity() -> Verbosity {
    match VERBOSITY.load(std::sync::atomic::Ordering::Relaxed) {
        0 => Verbosity::Quiet,
        1 => Verbosity::Normal,
        2 => Verbosity::Verbose,
        _ => Verbosity::Debug,
    }
}

fn set_verbosity(v: Verbosity) {
    VERBOSITY.store(v as u8, std::sync::atomic::Ordering::Relaxed);
}

/// Whether to colour: `always` and `never` decide; `auto` colours a terminal
/// unless `NO_COLOR` is set to anything but the empty string (no-color.org).
pub fn use_color(choice: ColorChoice, no_color: Option<&std::ffi::OsStr>, terminal: bool) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => no_color.is_none_or(|v| v.is_empty()) && terminal,
    }
}

/// With `-v`: how long a phase took, on stderr.
fn phase(start: std::time::Instant, what: &str) {
    if verbosity() >= Verbosity::Verbose {
        eprintln!("[{:>6.1}s] {what}", start.elapsed().as_secs_f64());
    }
}

/// Runs a parsed command line; returns the exit code.
pub fn run(cli: Cli) -> Result<u8> {
    set_verbosity(match (cli.quiet, cli.verbose) {
        (true, _) => Verbosity::Quiet,
        (false, 0) => Verbosity::Normal,
        (false, 1) => Verbosity::Verbose,
        (false, _) => Verbosity::Debug,
    });
    if verbosity() >= Verbosity::Debug {
        crate::timings::enable();
    }
    let style = Style {
        color: use_color(
            cli.color,
            std::env::var_os("NO_COLOR").as_deref(),
            std::io::stdout().is_terminal(),
        ),
    };
    let overrides = overrides(&cli.set)?;
    let env = selection(cli.env.as_deref(), cli.env_from_var);
    // Every command loads the file in the selected environment.
    let load = |path: &Path, overrides: &[Override]| load_in(path, env.as_ref(), overrides);
    let start = std::time::Instant::now();
    match cli.command {
        Command::Init(args) => ecosystem::init(&args, &cli.config),
        Command::Schema => ecosystem::schema(),
        Command::Completions { shell } => ecosystem::completions(shell),
        Command::Man => ecosystem::man(),
        Command::Validate => validate(&cli.config, env.as_ref(), &overrides),
        Command::Plan(args) => {
            let (loaded, fresh) = load(&cli.config, &overrides)?;
            phase(start, "loaded the configuration");
            if let Some(out) = &args.out {
                refuse_config_path(out, &cli.config)?;
            }
            let scope = args.scope.scope();
            let plan = match args.observed.as_deref() {
                Some(path) => {
                    let observed = read_observation(path)?;
                    let desired = crate::ops::settle(&loaded, &observed)?;
                    make_plan(&loaded, &desired, &observed, &scope)?
                }
                None => live::block_on(crate::ops::apply::plan_live(&loaded, &fresh, &scope))??,
            };
            phase(
                start,
                &format!(
                    "observed {} host(s) and planned {} step(s)",
                    plan.hosts.len(),
                    plan.graph.len()
                ),
            );
            print_plan(&plan, args.output, style)?;
            if let Some(p) = plan.preflight.as_ref().filter(|p| p.failed()) {
                return Err(UserError(format!(
                    "error: preflight found {} problem(s) that would stop nodes from coming up (listed above with their fixes)\nhint: fix them and plan again; `seedcore check` runs the checks alone",
                    p.failures().count()
                )));
            }
            if let Some(out) = &args.out {
                save_plan(out, &loaded, &plan)?;
            }
            Ok(if args.detailed_exitcode && !plan.summary().is_empty() {
                exit::CHANGES
            } else {
                exit::OK
            })
        }
        Command::Graph {
            observed,
            format,
            scope,
        } => {
            // Graphviz is looked for before anything is observed.
            let dot = match format {
                GraphFormat::Svg => Some(ecosystem::find_dot()?),
                GraphFormat::Dot | GraphFormat::Mermaid => None,
            };
            let (loaded, fresh) = load(&cli.config, &overrides)?;
            let scope = scope.scope();
            let (observed, desired) =
                observe_or_read(&loaded, &fresh, observed.as_deref(), &scope)?;
            let plan = make_plan(&loaded, &desired, &observed, &scope)?;
            write_stdout(&match (format, dot) {
                (GraphFormat::Mermaid, _) => render::mermaid(&plan),
                (GraphFormat::Svg, Some(dot)) => ecosystem::svg(&dot, &render::dot(&plan))?,
                (GraphFormat::Dot | GraphFormat::Svg, _) => render::dot(&plan),
            })?;
            Ok(exit::OK)
        }
        Command::Check { scope } => {
            let (loaded, fresh) = load(&cli.config, &overrides)?;
            let mut scope = scope.scope();
            scope.skip_preflight = false;
            scope.all_routes = true;
            let plan = live::block_on(crate::ops::apply::plan_live(&loaded, &fresh, &scope))??;
            let report = plan.preflight.unwrap_or_default();
            write_stdout(&report.render())?;
            Ok(if report.failed() {
                exit::ERROR
            } else {
                exit::OK
            })
        }
        Command::Observe { out, parallel } => {
            let (loaded, fresh) = load(&cli.config, &overrides)?;
            let (observed, _) =
                live::block_on(live::observe_only(&loaded, &fresh, parallel, false))??;
            let text =
                serde_json::to_string_pretty(&observed).expect("observation serializes") + "\n";
            match out {
                Some(path) => std::fs::write(&path, text).map_err(|e| {
                    UserError(format!("error: cannot write `{}`: {e}", path.display()))
                })?,
                None => write_stdout(&text)?,
            }
            Ok(exit::OK)
        }
        Command::Apply(args) => {
            let (loaded, desired) = load(&cli.config, &overrides)?;
            live::block_on(live::apply(&loaded, &desired, &args, style))?
        }
        Command::Status { output, parallel } => {
            let (loaded, desired) = load(&cli.config, &overrides)?;
            live::block_on(day2::status(&loaded, &desired, output, parallel))?
        }
        Command::Logs {
            nodes,
            follow,
            tail,
            since,
        } => {
            let (loaded, desired) = load(&cli.config, &overrides)?;
            let color = style.color;
            live::block_on_until_done(day2::logs(
                &loaded,
                &desired,
                &nodes,
                follow,
                tail,
                since.as_deref(),
                color,
            ))?
        }
        Command::Destroy {
            auto_approve,
            workers_only,
            parallel,
            lock_timeout,
        } => {
            let lock_timeout = day2::lock_timeout(&lock_timeout)?;
            let (loaded, desired) = load(&cli.config, &overrides)?;
            live::block_on(day2::destroy(
                &loaded,
                &desired,
                workers_only,
                auto_approve,
                parallel,
                lock_timeout,
                style,
            ))?
        }
        Command::Restart {
            nodes,
            all,
            rotate_token,
            auto_approve,
            parallel,
            lock_timeout,
        } => {
            let lock_timeout = day2::lock_timeout(&lock_timeout)?;
            let (loaded, desired) = load(&cli.config, &overrides)?;
            live::block_on(day2::restart(
                &loaded,
                &desired,
                &nodes,
                day2::Restart { all, rotate_token },
                auto_approve,
                parallel,
                lock_timeout,
                style,
            ))?
        }
        Command::Lock { action } => {
            let (loaded, desired) = load(&cli.config, &overrides)?;
            match action {
                LockAction::Status => live::block_on(day2::lock_status(&loaded, &desired))?,
                LockAction::Release { force } => {
                    live::block_on(day2::lock_release(&loaded, &desired, force))?
                }
            }
        }
        Command::History { lines } => {
            let (loaded, desired) = load(&cli.config, &overrides)?;
            live::block_on(day2::history(&loaded, &desired, lines))?
        }
        Command::Env => {
            let (loaded, desired) = load(&cli.config, &overrides)?;
            write_stdout(&day2::env(&loaded, &desired))?;
            Ok(exit::OK)
        }
    }
}

/// `--set` flags plus `HEAD_IP_OVERRIDE`; flags given later win.
pub fn overrides(set: &[String]) -> Result<Vec<Override>> {
    let mut all = config::env_overrides(|k| std::env::var(k).ok());
    for s in set {
        all.push(Override::parse_flag(s).map_err(|e| {
            UserError(format!(
                "error: invalid `--set`: {e}\nhint: write `--set KEY=VALUE`, e.g. `--set workers.local.count=3`"
            ))
        })?);
    }
    Ok(all)
}

/// The environment selected with `--env NAME` or `SEEDCORE_ENV` (empty: none).
pub fn selection(name: Option<&str>, from_var: bool) -> Option<config::Selection> {
    let name = name.filter(|n| !n.is_empty())?;
    Some(if from_var {
        config::Selection::var(name)
    } else {
        config::Selection::flag(name)
    })
}

/// Loads, validates and lowers the configuration.
pub fn load(path: &Path, overrides: &[Override]) -> Result<(Loaded, DesiredState)> {
    load_in(path, None, overrides)
}

/// [`load`] in an environment (`[env.NAME]` merged over the rest of the file).
pub fn load_in(
    path: &Path,
    env: Option<&config::Selection>,
    overrides: &[Override],
) -> Result<(Loaded, DesiredState)> {
    let loaded = config::load_in(path, env, overrides).map_err(user)?;
    let desired =
        topology::lower_fresh(&loaded.config).map_err(|e| user(loaded.source.errors(e)))?;
    Ok((loaded, desired))
}

/// The observation (live, or recorded in `path`) and the desired state
/// settled against it: the cluster's identity, and the ports running nodes keep.
fn observe_or_read(
    loaded: &Loaded,
    fresh: &DesiredState,
    path: Option<&Path>,
    scope: &crate::ops::apply::Scope,
) -> Result<(ObservedState, DesiredState)> {
    match path {
        Some(path) => {
            let observed = read_observation(path)?;
            let desired = crate::ops::settle(loaded, &observed)?;
            Ok((observed, desired))
        }
        None => live::block_on(live::observe_only(
            loaded,
            fresh,
            scope.parallel,
            scope.skip_unreachable,
        ))?,
    }
}

/// `--out` must never overwrite the configuration it was read from.
fn refuse_config_path(out: &Path, config: &Path) -> Result<()> {
    let same = match (std::fs::canonicalize(out), std::fs::canonicalize(config)) {
        (Ok(a), Ok(b)) => a == b,
        _ => out == config,
    };
    if same {
        return Err(UserError(format!(
            "error: `--out {}` is the configuration file itself\nhint: save the plan elsewhere, e.g. `--out plan.json`",
            out.display()
        )));
    }
    Ok(())
}

fn validate(path: &Path, env: Option<&config::Selection>, overrides: &[Override]) -> Result<u8> {
    let (loaded, desired) = load_in(path, env, overrides)?;
    let mut out = format!(
        "The configuration is valid: cluster `{}`{}, {} node(s) on {} host(s).\n",
        desired.cluster.name,
        match &loaded.environment {
            Some(e) => format!(" (environment `{e}`)"),
            None => String::new(),
        },
        desired.nodes.len(),
        desired.hosts().len()
    );
    for o in loaded.source.overrides() {
        out.push_str(&format!("Override in force: {}\n", o.describe()));
    }
    for n in &desired.nodes {
        out.push_str(&format!(
            "  {:<40} {:<16} {} CPU(s)\n",
            n.name.as_str(),
            n.host.as_str(),
            n.cpus
        ));
    }
    if desired.workers().next().is_none() {
        out.push_str("Note: this cluster has no workers: only the head will run.\n");
    }
    write_stdout(&out)?;
    Ok(exit::OK)
}

/// Reads a recorded observation (the format `seedcore observe -o` writes).
pub fn read_observation(path: &Path) -> Result<ObservedState> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        UserError(format!(
            "error: cannot read the observation `{}`: {e}\nhint: record one with `seedcore observe -o {}`",
            path.display(),
            path.display()
        ))
    })?;
    let observed: ObservedState = serde_json::from_str(&text).map_err(|e| {
        UserError(format!(
            "error: `{}` is not a seedcore observation: {e}\nhint: record one with `seedcore observe -o FILE`",
            path.display()
        ))
    })?;
    if observed.format_version != crate::model::OBSERVATION_FORMAT {
        return Err(UserError(format!(
            "error: `{}` has observation format {}, this seedcore reads format {}\nhint: record it again with this seedcore",
            path.display(),
            observed.format_version,
            crate::model::OBSERVATION_FORMAT
        )));
    }
    Ok(observed)
}

/// Plans against an observation.
pub fn make_plan(
    loaded: &Loaded,
    desired: &DesiredState,
    observed: &ObservedState,
    scope: &crate::ops::apply::Scope,
) -> Result<Plan> {
    Ok(crate::ops::apply::make_plan(
        loaded,
        desired,
        observed,
        Default::default(),
        scope,
    )?)
}

pub(crate) fn print_plan(plan: &Plan, format: OutputFormat, style: Style) -> Result<()> {
    write_stdout(&match format {
        OutputFormat::Text => render::text(plan, style),
        OutputFormat::Markdown => render::markdown(plan),
        OutputFormat::Json => render::json(plan),
    })
}

/// Writes a saved plan (the typed plan and what it was made from), mode 0600.
fn save_plan(path: &Path, loaded: &Loaded, plan: &Plan) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let saved =
        crate::plan::artifact::SavedPlan::new(plan.clone(), crate::ops::config_digest(loaded));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        // An existing file keeps its mode on open: make it private too.
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        f.write_all(saved.to_json().as_bytes())
    };
    write().map_err(|e| {
        UserError(format!(
            "error: cannot write the plan to `{}`: {e}",
            path.display()
        ))
    })?;
    if verbosity() > Verbosity::Quiet {
        eprintln!(
            "Saved the plan to `{}`: apply it with `seedcore apply {}`.",
            path.display(),
            path.display()
        );
    }
    Ok(())
}

/// Writes data to stdout; a closed pipe (`seedcore plan | head`) is not an error.
pub fn write_stdout(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(UserError(format!("error: cannot write to stdout: {e}"))),
    }
}

mod day2;
mod ecosystem;
mod live;
mod progress;
