//! The command line's side of the operations that talk to the hosts: it
//! runs them on a runtime (closing every session on Ctrl-C), shows plans,
//! asks for approval, draws progress and prints the outcome. The work itself
//! is in [`crate::ops`].

use super::progress::CliReporter;
use super::{exit, print_plan, ApplyArgs, OutputFormat, Result, UserError};
use crate::config::Loaded;
use crate::model::{DesiredState, ObservedState};
use crate::ops::{self, apply::Kind, apply::Prepared};
use crate::render::Style;
use std::future::Future;
use std::io::{BufRead, IsTerminal, Write};

impl From<ops::Error> for UserError {
    fn from(e: ops::Error) -> Self {
        UserError(e.to_string())
    }
}

/// Runs a future on a runtime, ending it cleanly on `SIGINT`, `SIGTERM` or
/// `SIGHUP`. Before any step runs, the future (and with it the lock and every
/// SSH session) is dropped and we exit 128 + the signal. While steps run, the
/// executor winds down itself (see [`crate::interrupt`]). A second signal
/// aborts at once; the lock keeper and the SSH watchdog clean up after us.
pub fn block_on<T>(fut: impl Future<Output = T>) -> Result<T> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| UserError(format!("error: cannot start the async runtime: {e}")))?;
    let interrupt = crate::interrupt::global();
    let finished = rt.block_on(async {
        tokio::spawn(listen(interrupt.clone()));
        let before_steps = async {
            loop {
                let signal = interrupt.wait().await;
                if !interrupt.executing() {
                    return signal;
                }
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            v = fut => Ok(v),
            signal = before_steps => Err(signal),
        }
    });
    // Don't wait for a blocked reader (the confirmation prompt).
    rt.shutdown_background();
    match finished {
        Ok(v) => Ok(v),
        Err(signal) => {
            eprintln!(
                "\nInterrupted ({}) before any step ran: nothing was changed; the lock is released and every SSH connection closed.",
                crate::interrupt::name(signal)
            );
            std::process::exit(i32::from(crate::interrupt::exit_code(signal)));
        }
    }
}

/// Fires the interrupt on the first signal; exits at once on the second.
async fn listen(interrupt: std::sync::Arc<crate::interrupt::Interrupt>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        return;
    };
    let mut seen = 0;
    loop {
        let signo = tokio::select! {
            _ = int.recv() => 2,
            _ = term.recv() => 15,
            _ = hup.recv() => 1,
        };
        seen += 1;
        if seen > 1 {
            eprintln!(
                "\nAborted ({}): steps under way may have stopped halfway; `seedcore plan` shows where the hosts stand.",
                crate::interrupt::name(signo)
            );
            std::process::exit(i32::from(crate::interrupt::exit_code(signo)));
        }
        if interrupt.executing() {
            eprintln!(
                "\nInterrupted ({}): starting no new step, letting the Docker calls under way finish (again to abort at once)...",
                crate::interrupt::name(signo)
            );
        }
        interrupt.fire(signo);
    }
}

/// Runs a future that handles Ctrl-C itself (e.g. `logs -f`).
pub fn block_on_until_done<T>(fut: impl Future<Output = T>) -> Result<T> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| UserError(format!("error: cannot start the async runtime: {e}")))?;
    Ok(rt.block_on(fut))
}

/// `seedcore observe` / `plan` without `--observed`: the observation, and
/// the desired state settled against it.
pub async fn observe_only(
    loaded: &Loaded,
    fresh: &DesiredState,
    parallel: Option<usize>,
    partial: bool,
) -> Result<(ObservedState, DesiredState)> {
    let (hosts, mut observed, desired) =
        ops::session::open(loaded, fresh, parallel, partial).await?;
    // A recorded observation holds what runs where too.
    if observed.ray.is_some() {
        observed.work = ops::session::cluster_work(&hosts, &observed, &desired, loaded).await;
    }
    warn(&hosts.warnings());
    hosts.close().await;
    Ok((observed, desired))
}

pub(crate) fn warn(lines: &[String]) {
    for l in lines {
        eprintln!("{l}");
    }
}

fn confirm() -> Result<bool> {
    let mut err = std::io::stderr();
    let _ = write!(
        err,
        "\nDo you want to perform these actions?\n  seedcore will perform the actions described above.\n  Only 'yes' will be accepted to approve.\n\n  Enter a value: "
    );
    let _ = err.flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| UserError(format!("error: cannot read the answer: {e}")))?;
    Ok(line.trim() == "yes")
}

/// `seedcore apply`.
pub async fn apply(
    loaded: &Loaded,
    fresh: &DesiredState,
    args: &ApplyArgs,
    style: Style,
) -> Result<u8> {
    let saved = match &args.planfile {
        Some(p) => Some(ops::apply::read_saved(p, loaded)?),
        None => None,
    };
    if saved.is_none() && !args.auto_approve && !std::io::stdin().is_terminal() {
        return Err(UserError(
            "error: refusing to apply without confirmation: stdin is not a terminal\nhint: review `seedcore plan`, then run `seedcore apply --auto-approve` (or save the plan with `seedcore plan --out FILE` and apply that file)".to_string(),
        ));
    }
    let mut scope = args.scope.scope();
    scope.lock_timeout = super::day2::lock_timeout(&args.lock_timeout)?;
    let prepared = ops::apply::prepare(loaded, fresh, saved, &scope).await?;
    if prepared.saved {
        eprintln!(
            "The hosts are as the saved plan found them: executing its {} step(s).",
            prepared.plan.graph.len()
        );
    }
    let approved = prepared.saved || args.auto_approve;
    run(prepared, loaded, style, approved, scope.parallel).await
}

/// Shows a prepared plan, gets it approved, executes it and reports; closes
/// the session on every path.
pub async fn run(
    prepared: Prepared,
    loaded: &Loaded,
    style: Style,
    approved: bool,
    parallel: Option<usize>,
) -> Result<u8> {
    let result = show_and_execute(&prepared, loaded, style, approved, parallel).await;
    prepared.hosts.close().await;
    result
}

async fn show_and_execute(
    prepared: &Prepared,
    loaded: &Loaded,
    style: Style,
    approved: bool,
    parallel: Option<usize>,
) -> Result<u8> {
    warn(&prepared.hosts.warnings());
    let (plan, desired) = (&prepared.plan, &prepared.desired);
    print_plan(plan, OutputFormat::Text, style)?;
    if let Some(p) = plan.preflight.as_ref().filter(|p| p.failed()) {
        return Err(UserError(format!(
            "error: preflight found {} problem(s) that would stop nodes from coming up (listed above with their fixes): nothing was changed\nhint: fix them and run again, or pass `--skip-preflight` to go on regardless",
            p.failures().count()
        )));
    }
    if plan.summary().is_empty() {
        if prepared.kind == Kind::Apply {
            let gaps = ops::apply::await_gaps(prepared, loaded, &|n, timeout| {
                eprintln!(
                    "Waiting until Ray lists the {n} node(s) still joining (timeouts.nodes_alive: {}s)...",
                    timeout.as_secs()
                )
            })
            .await;
            warn(&ops::apply::repair_lists(prepared).await);
            if !gaps.is_empty() {
                let list: Vec<String> = gaps
                    .iter()
                    .map(|(node, why)| format!("  {node}: {why}"))
                    .collect();
                return Err(UserError(format!(
                    "error: nothing to change in Docker, but Ray does not list every node ALIVE:\n{}\nhint: `seedcore logs NODE` shows why; `seedcore restart NODE` replaces it",
                    list.join("\n")
                )));
            }
            super::write_stdout(&access_lines(desired))?;
        }
        return Ok(exit::OK);
    }
    if !approved {
        if !std::io::stdin().is_terminal() {
            return Err(UserError(
                "error: refusing to go on without confirmation: stdin is not a terminal\nhint: review the plan above, then run again with `--auto-approve`".to_string(),
            ));
        }
        let answer = tokio::task::spawn_blocking(confirm)
            .await
            .map_err(|e| UserError(format!("error: cannot read the answer: {e}")))??;
        if !answer {
            eprintln!("Cancelled: nothing was changed.");
            return Ok(exit::ERROR);
        }
    }
    let reporter = CliReporter::new();
    let waiting = |nodes: usize, timeout: std::time::Duration| {
        reporter.finish();
        eprintln!(
            "Waiting until Ray lists all {nodes} nodes ALIVE with their CPUs (timeouts.nodes_alive: {}s)...",
            timeout.as_secs()
        );
    };
    let finished = ops::apply::execute(prepared, loaded, parallel, &reporter, &waiting).await;
    reporter.finish();
    let finished = match finished {
        Err(ops::Error::Interrupted { text, signal }) => {
            eprintln!("{text}");
            return Ok(crate::interrupt::exit_code(signal));
        }
        other => other?,
    };
    let s = finished.summary;
    let secs = finished.elapsed.as_secs_f64();
    if prepared.kind == Kind::Destroy {
        super::write_stdout(&format!(
            "\nDestroy complete! Nodes: {} destroyed. ({secs:.1}s)\n",
            s.destroy
        ))?;
        warn(&finished.warnings);
        return Ok(exit::OK);
    }
    let mut out = format!(
        "\nApply complete! Nodes: {} added, {} changed, {} destroyed. ({secs:.1}s)\n",
        s.add, s.change, s.destroy
    );
    out.push_str(&access_lines(desired));
    super::write_stdout(&out)?;
    warn(&finished.warnings);
    Ok(exit::OK)
}

/// The dashboard URL and the client address.
pub fn access_lines(desired: &DesiredState) -> String {
    let head = desired.head();
    let Some(p) = &head.ports.head else {
        return String::new();
    };
    let mut out = format!(
        "Dashboard: http://{}:{}\nRAY_ADDRESS=ray://{}:{}\n",
        head.node_ip, p.dashboard, head.node_ip, p.client_server
    );
    if let Some(serve) = p.serve {
        out.push_str(&format!("Serve: http://{}:{serve}\n", head.node_ip));
    }
    out
}
