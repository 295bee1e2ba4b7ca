//! The command line's side of the day-2 operations: status (printed from
//! [`crate::ops::status`]), logs, destroy and restart (shown and run through
//! [`super::live::run`]), env.

use super::live::{self, access_lines};
use super::{exit, write_stdout, OutputFormat, Result, UserError};
use crate::config::Loaded;
use crate::engine::{DockerBackend, LogOptions};
use crate::model::{DesiredState, NodeName, NodeSpec, Role};
use crate::ops;
use crate::render::Style;
use futures_util::stream::{self, StreamExt};
use std::collections::BTreeSet;
use std::io::{IsTerminal, Write};

fn uptime(started_at: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    match crate::model::unix_seconds(started_at) {
        Some(t) if now >= t => {
            let s = now - t;
            match s {
                0..=59 => format!("{s}s"),
                60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
                3600..=86399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
                _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
            }
        }
        _ => "-".to_string(),
    }
}

/// `seedcore status`: containers per host and Ray's own view.
pub async fn status(
    loaded: &Loaded,
    fresh: &DesiredState,
    output: OutputFormat,
    parallel: Option<usize>,
) -> Result<u8> {
    let report = ops::status::gather(loaded, fresh, parallel).await?;
    live::warn(&report.warnings);
    let (desired, statuses, ray) = (&report.desired, &report.nodes, &report.ray);
    let head = desired.head();
    let whole = statuses.iter().all(|s| s.ok);
    let alive = statuses.iter().filter(|s| s.ok).count();
    let text = match output {
        OutputFormat::Json => {
            let v = serde_json::json!({
                "format_version": "2.0",
                "cluster": desired.cluster,
                "whole": whole,
                "nodes": statuses,
                "ray_error": ray.as_ref().err(),
                "dashboard": format!("http://{}:{}", head.node_ip, head.ports.head.as_ref().map(|h| h.dashboard).unwrap_or(0)),
                "ray_address": format!("ray://{}:{}", head.node_ip, head.ports.head.as_ref().map(|h| h.client_server).unwrap_or(0)),
            });
            serde_json::to_string_pretty(&v).expect("status serializes") + "\n"
        }
        _ => {
            let mut out = format!(
                "Cluster `{}` ({}id `{}`)\n\n",
                desired.cluster.name,
                match &loaded.environment {
                    Some(e) => format!("environment `{e}`, "),
                    None => String::new(),
                },
                desired.cluster.id
            );
            let w = statuses
                .iter()
                .map(|s| s.node.len())
                .max()
                .unwrap_or(4)
                .max(4);
            let hw = statuses
                .iter()
                .map(|s| s.host.len())
                .max()
                .unwrap_or(4)
                .max(4);
            out.push_str(&format!(
                "{:w$}  {:hw$}  {:<14} {:>8} {:>8}  {:<12} {}\n",
                "NODE", "HOST", "CONTAINER", "UPTIME", "RESTARTS", "RAY", "IMAGE"
            ));
            let mut notes = Vec::new();
            for s in statuses {
                let container = if s.container.len() > 14 {
                    notes.push(format!("{}: {}", s.node, s.container));
                    s.container.split(':').next().unwrap_or("").to_string()
                } else {
                    s.container.clone()
                };
                let ray = match s.ray_cpus {
                    Some(c) if s.ray == "ALIVE" => format!("ALIVE {c} CPU"),
                    _ => s.ray.clone(),
                };
                out.push_str(&format!(
                    "{:w$}  {:hw$}  {:<14} {:>8} {:>8}  {:<12} {}\n",
                    s.node,
                    s.host,
                    container,
                    s.started_at
                        .as_deref()
                        .filter(|_| s.container == "running")
                        .map(uptime)
                        .unwrap_or_else(|| "-".into()),
                    s.restarts,
                    ray,
                    s.image.as_deref().unwrap_or("-")
                ));
            }
            for n in notes {
                out.push_str(&format!("  {n}\n"));
            }
            out.push('\n');
            match ray {
                Ok(nodes) => {
                    // DEAD now (a declared node, no ALIVE entry) versus the
                    // entries left by earlier containers.
                    let dead_now: Vec<&str> = statuses
                        .iter()
                        .filter(|s| s.ray == "DEAD")
                        .map(|s| s.node.as_str())
                        .collect();
                    let earlier = nodes
                        .iter()
                        .filter(|n| !n.is_alive())
                        .filter(|n| !dead_now.contains(&n.node_name.as_str()))
                        .count();
                    let mut extra = Vec::new();
                    if !dead_now.is_empty() {
                        extra.push(format!("DEAD now: {}", dead_now.join(", ")));
                    }
                    if earlier > 0 {
                        extra.push(format!("{earlier} DEAD entries left by earlier containers"));
                    }
                    out.push_str(&format!(
                        "Ray: {alive} of {} declared nodes running and ALIVE with their CPUs{}.\n",
                        statuses.len(),
                        if extra.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", extra.join("; "))
                        }
                    ));
                }
                Err(e) => out.push_str(&format!(
                    "Ray: cannot ask the head: {}\n",
                    crate::model::excerpt(e, 300)
                )),
            }
            if whole {
                out.push_str("The cluster is whole.\n");
            } else {
                let bad: Vec<&str> = statuses
                    .iter()
                    .filter(|s| !s.ok)
                    .map(|s| s.node.as_str())
                    .collect();
                out.push_str(&format!(
                    "Not whole: {}.\nhint: `seedcore plan` shows what apply would repair; `seedcore logs NODE` shows a node's log\n",
                    bad.join(", ")
                ));
            }
            out.push_str(&access_lines(desired));
            out
        }
    };
    write_stdout(&text)?;
    Ok(if whole { exit::OK } else { exit::ERROR })
}

/// Which nodes a `logs`/`restart` selection names.
pub fn select_nodes<'a>(
    desired: &'a DesiredState,
    selection: &[String],
) -> Result<Vec<&'a NodeSpec>> {
    if selection.is_empty() {
        return Ok(desired.nodes.iter().collect());
    }
    let mut out: Vec<&NodeSpec> = Vec::new();
    for s in selection {
        let matched: Vec<&NodeSpec> = match s.as_str() {
            "head" => desired
                .nodes
                .iter()
                .filter(|n| n.role == Role::Head)
                .collect(),
            "workers" => desired.workers().collect(),
            name => desired
                .nodes
                .iter()
                .filter(|n| n.name.0 == name || n.group.as_deref() == Some(name))
                .collect(),
        };
        if matched.is_empty() {
            let known: Vec<&str> = desired.nodes.iter().map(|n| n.name.as_str()).collect();
            return Err(UserError(format!(
                "error: `{s}` names no node of this cluster\nhint: use `head`, `workers`, a group name or a node name: {}",
                known.join(", ")
            )));
        }
        for m in matched {
            if !out.iter().any(|o| o.name == m.name) {
                out.push(m);
            }
        }
    }
    Ok(out)
}

/// Parses `30s`, `10m`, `2h`, `1d` into seconds.
pub fn parse_duration(text: &str) -> Option<i64> {
    let t = text.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: i64 = num.parse().ok()?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return None,
    };
    n.checked_mul(mult).filter(|s| *s <= i64::from(i32::MAX))
}

/// `seedcore logs`: every selected node's log at once, prefixed.
pub async fn logs(
    loaded: &Loaded,
    fresh: &DesiredState,
    selection: &[String],
    follow: bool,
    tail: Option<u64>,
    since: Option<&str>,
    color: bool,
) -> Result<u8> {
    select_nodes(fresh, selection)?;
    let since = match since {
        Some(s) => Some(parse_duration(s).ok_or_else(|| {
            UserError(format!(
                "error: `--since {s}` is not a duration\nhint: write e.g. `30s`, `10m`, `2h` or `1d`"
            ))
        })?),
        None => None,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (hosts, observed, desired) = ops::session::open(loaded, fresh, None, true).await?;
    live::warn(&hosts.warnings());
    let nodes = select_nodes(&desired, selection)?;
    let mut code = exit::OK;
    if !hosts.failures.is_empty() {
        code = exit::ERROR;
    }
    let width = nodes.iter().map(|n| n.name.0.len()).max().unwrap_or(0);
    const COLORS: [&str; 6] = ["36", "33", "35", "32", "34", "31"];
    let mut streams = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let Some(conn) = hosts.connections.get(&n.host) else {
            continue;
        };
        // The container observed as this node's, by ID.
        let Some(id) = observed.hosts.get(&n.host).and_then(|o| {
            crate::ownership::ours(&desired.cluster, &o.containers)
                .find(|c| c.name == n.name.0)
                .map(|c| c.id.clone())
        }) else {
            eprintln!(
                "warning: `{}` has no container (run `seedcore apply`)",
                n.name
            );
            continue;
        };
        let prefix = if color {
            format!(
                "\x1b[{}m{:width$}\x1b[0m | ",
                COLORS[i % COLORS.len()],
                n.name.0
            )
        } else {
            format!("{:width$} | ", n.name.0)
        };
        let name = n.name.0.clone();
        let s = conn
            .backend
            .logs(
                &id,
                LogOptions {
                    follow,
                    tail,
                    since: since.map(|s| now - s),
                },
            )
            .map(move |item| (prefix.clone(), name.clone(), item));
        streams.push(s.boxed());
    }
    let mut merged = stream::select_all(streams);
    let mut pending: std::collections::BTreeMap<String, String> = Default::default();
    let stop = async {
        if follow {
            let _ = tokio::signal::ctrl_c().await;
        } else {
            std::future::pending::<()>().await
        }
    };
    tokio::pin!(stop);
    loop {
        tokio::select! {
            item = merged.next() => {
                let Some((prefix, name, item)) = item else { break };
                match item {
                    Ok(chunk) => {
                        let buf = pending.entry(name.clone()).or_default();
                        buf.push_str(&chunk);
                        let mut out = String::new();
                        while let Some(pos) = buf.find('\n') {
                            let line: String = buf.drain(..=pos).collect();
                            let line = line.trim_end_matches(['\n', '\r']);
                            out.push_str(&prefix);
                            if color {
                                out.push_str(line);
                            } else {
                                // Ray colours its own lines; not on a pipe or with NO_COLOR.
                                out.push_str(&strip_ansi(line));
                            }
                            out.push('\n');
                        }
                        if !out.is_empty() {
                            let mut stdout = std::io::stdout().lock();
                            if stdout.write_all(out.as_bytes()).and_then(|_| stdout.flush()).is_err() {
                                break;
                            }
                        }
                    }
                    Err(e) if e.kind == crate::engine::ErrorKind::NotFound => {
                        eprintln!("warning: `{name}` has no container (run `seedcore apply`)");
                    }
                    Err(e) => {
                        eprintln!("error: logs of `{name}`: {e}");
                        code = exit::ERROR;
                    }
                }
            }
            _ = &mut stop => {
                eprintln!("Stopped following logs.");
                break;
            }
        }
    }
    drop(merged);
    hosts.close().await;
    Ok(code)
}

/// Removes ANSI escape sequences (`ESC [ ... letter`).
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' && chars.peek() == Some(&'[') {
            chars.next();
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `seedcore destroy`: removes every container of this cluster.
pub async fn destroy(
    loaded: &Loaded,
    fresh: &DesiredState,
    workers_only: bool,
    auto_approve: bool,
    parallel: Option<usize>,
    lock_timeout: std::time::Duration,
    style: Style,
) -> Result<u8> {
    if !auto_approve && !std::io::stdin().is_terminal() {
        return Err(UserError(
            "error: refusing to destroy without confirmation: stdin is not a terminal\nhint: review `seedcore status`, then run `seedcore destroy --auto-approve`".to_string(),
        ));
    }
    let prepared =
        ops::apply::prepare_destroy(loaded, fresh, workers_only, parallel, lock_timeout).await?;
    let unreachable: Vec<String> = prepared
        .hosts
        .failures
        .keys()
        .map(|h| format!("`{h}`"))
        .collect();
    match live::run(prepared, loaded, style, auto_approve, parallel).await {
        Ok(_) if !unreachable.is_empty() => Err(UserError(format!(
            "error: {} could not be reached: containers there were not removed\nhint: run `seedcore destroy` again once they answer",
            unreachable.join(", ")
        ))),
        other => other,
    }
}

/// What `seedcore restart` replaces.
#[derive(Debug, Clone, Copy)]
pub struct Restart {
    /// Every node.
    pub all: bool,
    /// With a new Ray token (every node).
    pub rotate_token: bool,
}

/// `seedcore restart`: replaces the named nodes (a head takes its workers).
#[allow(clippy::too_many_arguments)]
pub async fn restart(
    loaded: &Loaded,
    fresh: &DesiredState,
    selection: &[String],
    how: Restart,
    auto_approve: bool,
    parallel: Option<usize>,
    lock_timeout: std::time::Duration,
    style: Style,
) -> Result<u8> {
    if how.rotate_token
        && loaded.config.cluster.auth
            != crate::config::Auth::Token(crate::config::TokenSource::Generated)
    {
        return Err(UserError(
            "error: `--rotate-token` renews a token seedcore generated, and this cluster's token is not one (`token_file`, `token_env` or `auth = \"none\"`)\nhint: change the token where it comes from; the next `seedcore apply` replaces every node with the new one".to_string(),
        ));
    }
    let all = how.all || how.rotate_token;
    if selection.is_empty() && !all {
        return Err(UserError(
            "error: name the nodes to restart, or pass `--all`\nhint: `seedcore restart head`, `seedcore restart workers`, `seedcore restart NODE...`".to_string(),
        ));
    }
    let chosen: BTreeSet<NodeName> = if all {
        fresh.nodes.iter().map(|n| n.name.clone()).collect()
    } else {
        select_nodes(fresh, selection)?
            .into_iter()
            .map(|n| n.name.clone())
            .collect()
    };
    if !auto_approve && !std::io::stdin().is_terminal() {
        return Err(UserError(
            "error: refusing to restart without confirmation: stdin is not a terminal\nhint: run `seedcore restart ... --auto-approve`".to_string(),
        ));
    }
    let mut prepared =
        ops::apply::prepare_restart(loaded, fresh, chosen, parallel, lock_timeout).await?;
    if how.rotate_token {
        // The new nodes get a new token (see `ops::apply::node_files`).
        prepared.head_secrets.token = None;
        prepared.plan.notes.push(
            "A new Ray token is generated: every node restarts with it; clients need the new one (`seedcore env` says where it is).".to_string(),
        );
    }
    live::run(prepared, loaded, style, auto_approve, parallel).await
}

/// `--lock-timeout`: a duration such as `30s`, `10m`, `1h`.
pub fn lock_timeout(text: &str) -> Result<std::time::Duration> {
    match parse_duration(text) {
        Some(secs) if (0..=86_400).contains(&secs) => Ok(std::time::Duration::from_secs(secs as u64)),
        _ => Err(UserError(format!(
            "error: `--lock-timeout {}` is not a duration of at most a day\nhint: write e.g. `30s`, `10m` or `1h`",
            crate::model::excerpt(text, 40)
        ))),
    }
}

/// Connects to the head's host alone (for the lock and the history).
async fn head_connection(
    loaded: &Loaded,
    fresh: &DesiredState,
) -> Result<(crate::transport::Transport, crate::transport::Connection)> {
    let transport = crate::transport::Transport::new(&loaded.config.ssh)
        .await
        .map_err(|e| {
            UserError(format!(
                "error: cannot create the SSH control directory: {e}"
            ))
        })?;
    let head = &fresh.head().host;
    match transport.connect(head).await {
        Ok(conn) => Ok((transport, conn)),
        Err(e) => Err(UserError(e.to_string())),
    }
}

/// `seedcore lock status`.
pub async fn lock_status(loaded: &Loaded, fresh: &DesiredState) -> Result<u8> {
    let (transport, conn) = head_connection(loaded, fresh).await?;
    let found = crate::lock::status(&conn, &fresh.cluster.name).await;
    let head = conn.host.clone();
    conn.close().await;
    transport.cleanup();
    match found.map_err(|e| UserError(format!("error: cannot read the lock on `{head}`: {e}")))? {
        None => {
            write_stdout(&format!(
                "The cluster `{}` is not locked (on `{head}`).\n",
                fresh.cluster.name
            ))?;
            Ok(exit::OK)
        }
        Some(holder) if holder.alive == Some(true) => {
            write_stdout(&format!(
                "The cluster `{}` is locked on `{head}` by {}: its holder is running.\n",
                fresh.cluster.name,
                holder.describe()
            ))?;
            Ok(exit::ERROR)
        }
        Some(holder) => {
            write_stdout(&format!(
                "The cluster `{}` is not locked (on `{head}`). The last holder, {}, ended without releasing it (STALE): the next apply clears it, or `seedcore lock release`.\n",
                fresh.cluster.name,
                holder.describe()
            ))?;
            Ok(exit::OK)
        }
    }
}

/// `seedcore lock release`.
pub async fn lock_release(loaded: &Loaded, fresh: &DesiredState, force: bool) -> Result<u8> {
    let (transport, conn) = head_connection(loaded, fresh).await?;
    let done = crate::lock::release(&conn, &fresh.cluster.name, force).await;
    let head = conn.host.clone();
    conn.close().await;
    transport.cleanup();
    match done.map_err(|e| UserError(format!("error: on `{head}`: {e}")))? {
        crate::lock::Released::Released => {
            write_stdout(&format!("Released the lock of `{}` on `{head}`.\n", fresh.cluster.name))?;
            Ok(exit::OK)
        }
        crate::lock::Released::NoLock => {
            write_stdout(&format!("The cluster `{}` is not locked (on `{head}`).\n", fresh.cluster.name))?;
            Ok(exit::OK)
        }
        crate::lock::Released::StillHeld => Err(UserError(format!(
            "error: the lock on `{head}` is held by a running seedcore: nothing was released\nhint: `seedcore lock status` names it; let it finish, or stop it and pass `--force`"
        ))),
    }
}

/// `seedcore history`: the head's audit trail.
pub async fn history(loaded: &Loaded, fresh: &DesiredState, lines: usize) -> Result<u8> {
    let (transport, conn) = head_connection(loaded, fresh).await?;
    let found = crate::audit::read(&conn, &fresh.cluster.name, lines.clamp(1, 10_000)).await;
    let head = conn.host.clone();
    conn.close().await;
    transport.cleanup();
    let entries =
        found.map_err(|e| UserError(format!("error: cannot read the history on `{head}`: {e}")))?;
    write_stdout(&crate::audit::render(head.as_str(), &entries))?;
    Ok(exit::OK)
}

/// `seedcore env`: shell exports for client tools (the Ray token by where
/// to read it, never its value).
pub fn env(loaded: &Loaded, desired: &DesiredState) -> String {
    use crate::config::{Auth, SecretOrigin, TokenSource};
    let head = desired.head();
    let p = head.ports.head.as_ref().expect("the head has head ports");
    let mut out = format!(
        "# eval \"$(seedcore env)\"\nexport RAY_ADDRESS=ray://{ip}:{client}\nexport RAY_DASHBOARD_URL=http://{ip}:{dash}\n",
        ip = head.node_ip,
        client = p.client_server,
        dash = p.dashboard
    );
    let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    match &loaded.config.cluster.auth {
        Auth::None => out.push_str("# Ray token authentication is off (cluster.auth = \"none\")\nexport RAY_AUTH_MODE=disabled\n"),
        Auth::Token(source) => {
            out.push_str("export RAY_AUTH_MODE=token\n");
            match source {
                TokenSource::Given(t) => match &t.origin {
                    SecretOrigin::File(path) => out.push_str(&format!(
                        "export RAY_AUTH_TOKEN_PATH={}\n",
                        quote(&path.display().to_string())
                    )),
                    SecretOrigin::Env(name) => out.push_str(&format!(
                        "export RAY_AUTH_TOKEN=\"${{{name}}}\"\n"
                    )),
                    SecretOrigin::Inline => {}
                },
                TokenSource::Generated => {
                    match ops::apply::token_copy_path(&desired.cluster) {
                        Some(path) if path.exists() => out.push_str(&format!(
                            "export RAY_AUTH_TOKEN_PATH={}\n",
                            quote(&path.display().to_string())
                        )),
                        _ => out.push_str(&format!(
                            "# The token is generated by the first `seedcore apply`, which keeps a copy (0600) for clients; on the head's host, root reads it with: docker exec {} cat {}\n",
                            head.name,
                            crate::model::NODE_TOKEN_PATH
                        )),
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ansi_sequences_are_stripped() {
        assert_eq!(
            strip_ansi("\x1b[32mRay runtime started.\x1b[39m done \x1b[1m\x1b[22m"),
            "Ray runtime started. done "
        );
        assert_eq!(strip_ansi("plain"), "plain");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s"), Some(30));
        assert_eq!(parse_duration("10m"), Some(600));
        assert_eq!(parse_duration("2h"), Some(7200));
        assert_eq!(parse_duration("5"), Some(5));
        assert_eq!(parse_duration("x"), None);
    }
}
