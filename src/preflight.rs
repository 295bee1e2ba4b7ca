//! Preflight: before anything changes, every host is asked, over the SSH
//! session already open and all hosts at once, what holds the ports its
//! nodes will bind, and every connection Ray needs between hosts is tried:
//! where nothing listens yet, a short-lived listener that seedcore starts
//! (and that ends when seedcore closes its stdin or after 20 s) answers for
//! it. The findings are judged in `checks` (pure).

use crate::checks::{self, Check, Kind, Listener, Report, Route};
use crate::engine::DockerBackend;
use crate::model::{human_bytes, DesiredState, HostName, ObservedState};
use crate::ops::session::Hosts;
use crate::plan::Plan;
use futures_util::stream::{self, StreamExt};
use std::collections::{BTreeMap, BTreeSet};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// Listens on every port given as an argument (those it cannot bind are
/// reported as `busy PORT`), says `ready`, accepts and closes connections,
/// and exits when its stdin closes or after 20 s.
const LISTENER: &str = r#"import socket, sys, select, time
socks = []
for p in sys.argv[1:]:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(('0.0.0.0', int(p))); s.listen(16); socks.append(s)
    except OSError:
        print('busy', p)
print('ready', flush=True)
end = time.time() + 20
while time.time() < end:
    r, _, _ = select.select(socks + [sys.stdin], [], [], 0.5)
    for s in r:
        if s is sys.stdin:
            if not sys.stdin.buffer.read1(1):
                sys.exit(0)
        else:
            c, _ = s.accept(); c.close()
"#;

/// Tries every `ADDRESS PORT` pair of its arguments at once, 2 s in all,
/// and prints `ADDRESS PORT ok` for each that accepted (a pair without its
/// line did not). One `timeout` and one `bash` whatever the number of
/// pairs: each try is a fork of that bash, and `timeout` ends them all with
/// its process group.
const CONNECT: &str = "exec timeout 2 bash -c 'while [ $# -ge 2 ]; do h=$1 p=$2; shift 2; { exec 3<>\"/dev/tcp/$h/$p\"; } 2>/dev/null && echo \"$h $p ok\" & done; wait' bash \"$@\"";

/// A test listener on one host: the process (while it runs), the ports it
/// does not answer for, and what went wrong.
struct ListenerStart<'a> {
    child: Option<openssh::Child<&'a openssh::Session>>,
    not_probed: Vec<(HostName, u16)>,
    warning: Option<String>,
}

/// Starts a test listener on `conn`'s host for `ports` and waits (5 s at
/// most) until it says `ready`.
async fn start_listener<'a>(
    conn: &'a crate::transport::Connection,
    ports: &BTreeSet<u16>,
) -> ListenerStart<'a> {
    let host = &conn.host;
    let args: Vec<String> = ports.iter().map(|p| p.to_string()).collect();
    let mut argv: Vec<&str> = vec!["python3", "-c", LISTENER];
    argv.extend(args.iter().map(String::as_str));
    let all = || ports.iter().map(|p| (host.clone(), *p)).collect::<Vec<_>>();
    let Some(mut child) = conn.spawn_on_host(&argv).await else {
        return ListenerStart {
            child: None,
            not_probed: all(),
            warning: Some(format!(
                "could not start a test listener on `{host}`: connections to its ports {} were not checked",
                args.join(", ")
            )),
        };
    };
    // Wait for `ready` (and note the ports it could not bind).
    let mut ready = false;
    let mut not_probed = Vec::new();
    if let Some(out) = child.stdout().take() {
        let mut lines = tokio::io::BufReader::new(out).lines();
        let deadline = tokio::time::sleep(std::time::Duration::from_secs(5));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                line = lines.next_line() => match line {
                    Ok(Some(l)) if l == "ready" => { ready = true; break; }
                    Ok(Some(l)) => {
                        if let Some(p) = l.strip_prefix("busy ").and_then(|p| p.parse().ok()) {
                            not_probed.push((host.clone(), p));
                        }
                    }
                    _ => break,
                },
                _ = &mut deadline => break,
            }
        }
    }
    let warning = (!ready).then(|| {
        not_probed = all();
        format!(
            "could not start a test listener on `{host}` (is python3 installed?): connections to its ports {} were not checked",
            args.join(", ")
        )
    });
    ListenerStart {
        child: Some(child),
        not_probed,
        warning,
    }
}

/// What one host answered.
struct HostFacts {
    listeners: Result<Vec<Listener>, String>,
    containers: Vec<crate::model::ObservedContainer>,
}

/// Runs every check for `plan` on the hosts of `desired`.
pub async fn run(
    hosts: &Hosts,
    observed: &ObservedState,
    desired: &DesiredState,
    plan: &Plan,
    parallel: usize,
    public: bool,
    all_routes: bool,
) -> Report {
    // Hosts that could not be reached (skipped with `--skip-unreachable`)
    // are not checked: the plan names them.
    let declared: Vec<HostName> = desired
        .hosts()
        .into_iter()
        .filter(|h| hosts.connections.contains_key(h))
        .collect();
    let mut report = Report {
        hosts: declared.clone(),
        ..Report::default()
    };
    let facts: BTreeMap<HostName, HostFacts> = stream::iter(declared.iter())
        .map(|h| async move {
            let conn = hosts.connections.get(h)?;
            // Listed once per session, when the hosts were observed.
            let listeners = hosts
                .listeners
                .get(h)
                .cloned()
                .unwrap_or_else(|| Err("its sockets were not listed".to_string()));
            // Listed when the hosts were observed, else asked now.
            let containers = match hosts.containers.get(h) {
                Some(all) => all.clone(),
                None => conn.backend.all_containers().await.unwrap_or_default(),
            };
            Some((
                h.clone(),
                HostFacts {
                    listeners,
                    containers,
                },
            ))
        })
        .buffer_unordered(parallel.max(1))
        .filter_map(|x| async move { x })
        .collect()
        .await;

    for h in &declared {
        let Some(conn) = hosts.connections.get(h) else {
            continue;
        };
        let obs = observed.hosts.get(h);
        report.checks.push(engine_check(
            h,
            conn.engine.api_version.as_str(),
            obs,
            desired,
            &mut report.warnings,
        ));
        report.checks.push(capacity_check(
            h,
            &conn.engine,
            desired,
            &mut report.warnings,
        ));
        match facts.get(h).map(|f| &f.listeners) {
            Some(Ok(listeners)) => report.checks.extend(checks::port_checks(
                h,
                desired,
                &plan.changes,
                listeners,
                &facts[h].containers,
            )),
            Some(Err(why)) => report
                .warnings
                .push(format!("ports on `{h}` were not checked: {why}")),
            None => {}
        }
    }
    let listening: BTreeMap<&HostName, BTreeSet<u16>> = facts
        .iter()
        .map(|(h, f)| {
            let ports = f
                .listeners
                .as_ref()
                .map(|l| l.iter().map(|l| l.port).collect())
                .unwrap_or_default();
            (h, ports)
        })
        .collect();
    let routes: Vec<Route> = checks::routes(desired)
        .into_iter()
        .filter(|r| declared.contains(&r.from) && declared.contains(&r.to))
        .collect();
    // What the plan changes needs its routes tried; what it keeps, Ray
    // lists ALIVE, shows them open (`seedcore check` tries them all).
    let unchanged = |n: &crate::model::NodeName| {
        plan.changes
            .iter()
            .any(|c| c.node == *n && c.action == crate::plan::Action::NoOp)
    };
    let up = |n: &crate::model::NodeName| {
        let (Some(nodes), Some(spec)) = (
            observed.ray.as_ref(),
            desired.nodes.iter().find(|s| s.name == *n),
        ) else {
            return false;
        };
        nodes.iter().any(|r| crate::ray::is_up(r, spec))
    };
    let head = &desired.head().name;
    let (routes, shown): (Vec<Route>, Vec<Route>) = routes
        .into_iter()
        .partition(|r| all_routes || checks::needs_probe(r, head, unchanged, up));
    report.alive_in_ray = shown.iter().map(checks::route_shown_by_ray).collect();
    report
        .checks
        .extend(reachability(hosts, &routes, &listening, parallel, &mut report.warnings).await);
    if !public {
        exposure(desired, &mut report.warnings);
    }
    report
}

fn engine_check(
    host: &HostName,
    api: &str,
    obs: Option<&crate::model::HostObservation>,
    desired: &DesiredState,
    warnings: &mut Vec<String>,
) -> Check {
    let version = obs
        .and_then(|o| o.engine.as_ref())
        .map(|e| format!("Docker {} (API {api})", e.version))
        .unwrap_or_else(|| format!("API {api}"));
    let too_old = api
        .split('.')
        .nth(1)
        .and_then(|m| m.parse::<u32>().ok())
        .is_some_and(|minor| api.starts_with("1.") && minor < 41);
    if too_old {
        warnings.push(format!(
            "`{host}` runs {version}; seedcore is tested with API 1.41 and later"
        ));
    }
    let missing: Vec<String> = desired
        .images_by_host()
        .get(host)
        .into_iter()
        .flatten()
        .filter(|image| {
            obs.and_then(|o| o.images.as_ref())
                .is_some_and(|known| !matches!(known.get(*image), Some(Some(_))))
        })
        .cloned()
        .collect();
    Check {
        host: host.clone(),
        kind: Kind::Engine,
        ok: true,
        detail: if missing.is_empty() {
            format!("{version} answers; images present")
        } else {
            format!("{version} answers; apply pulls {}", missing.join(", "))
        },
        fix: None,
    }
}

fn capacity_check(
    host: &HostName,
    engine: &crate::model::EngineInfo,
    desired: &DesiredState,
    warnings: &mut Vec<String>,
) -> Check {
    let nodes: Vec<_> = desired.nodes.iter().filter(|n| n.host == *host).collect();
    let cpus: u64 = nodes.iter().map(|n| u64::from(n.cpus)).sum();
    let shm: u64 = nodes.iter().map(|n| n.shm_size_bytes).sum();
    if engine.memory_bytes > 0 && shm > engine.memory_bytes / 2 {
        warnings.push(format!(
            "`{host}` has {} of memory and its nodes' /dev/shm add up to {}: Ray's object store may run out of memory (lower `shm_size`)",
            human_bytes(engine.memory_bytes),
            human_bytes(shm)
        ));
    }
    Check {
        host: host.clone(),
        kind: Kind::Capacity,
        ok: true,
        detail: format!(
            "{cpus} CPU(s) declared of {}; /dev/shm {} of {}",
            engine.cpus,
            human_bytes(shm),
            human_bytes(engine.memory_bytes)
        ),
        fix: None,
    }
}

/// The dashboard and the Ray client listen on every address of the head.
fn exposure(desired: &DesiredState, warnings: &mut Vec<String>) {
    let head = desired.head();
    if head.host.is_local() {
        return;
    }
    if let Some(p) = &head.ports.head {
        warnings.push(format!(
            "the dashboard ({}) and the Ray client server ({}) listen on every address of `{}`: whoever reaches them can run code on the cluster; allow them only from your own hosts in its firewall (or set `head.public = true` if that is intended)",
            p.dashboard, p.client_server, head.host
        ));
    }
}

/// Tries every route: listeners where nothing listens yet, then the
/// connections from each source host at once.
async fn reachability(
    hosts: &Hosts,
    routes: &[Route],
    listening: &BTreeMap<&HostName, BTreeSet<u16>>,
    parallel: usize,
    warnings: &mut Vec<String>,
) -> Vec<Check> {
    if routes.is_empty() {
        return Vec::new();
    }
    // Ports to answer for, by target host.
    let mut to_listen: BTreeMap<&HostName, BTreeSet<u16>> = BTreeMap::new();
    for r in routes {
        let held = listening.get(&r.to).is_some_and(|p| p.contains(&r.port));
        if !held {
            to_listen.entry(&r.to).or_default().insert(r.port);
        }
    }
    // Start every listener at once, then wait for each to say `ready`.
    let started: Vec<ListenerStart<'_>> = stream::iter(
        to_listen
            .iter()
            .filter_map(|(host, ports)| Some((hosts.connections.get(*host)?, ports))),
    )
    .map(|(conn, ports)| {
        crate::timings::span(
            conn.host.as_str(),
            "test listener started",
            start_listener(conn, ports),
        )
    })
    .buffer_unordered(parallel.max(1))
    .collect()
    .await;
    let mut children = Vec::new();
    let mut not_probed: BTreeSet<(HostName, u16)> = BTreeSet::new();
    for start in started {
        not_probed.extend(start.not_probed);
        warnings.extend(start.warning);
        children.extend(start.child);
    }
    // Connect from each source host, all at once: one command per host.
    let mut by_source: BTreeMap<&HostName, Vec<&Route>> = BTreeMap::new();
    for r in routes {
        if not_probed.contains(&(r.to.clone(), r.port)) {
            continue;
        }
        by_source.entry(&r.from).or_default().push(r);
    }
    let results: Vec<Vec<Check>> = stream::iter(by_source)
        .map(|(from, routes)| async move {
            let Some(conn) = hosts.connections.get(from) else {
                return Vec::new();
            };
            let mut pairs: Vec<(&str, String)> = routes
                .iter()
                .map(|r| (r.to_address.as_str(), r.port.to_string()))
                .collect();
            pairs.sort();
            pairs.dedup();
            let mut argv: Vec<&str> = vec!["sh", "-c", CONNECT, "sh"];
            for (address, port) in &pairs {
                argv.push(address);
                argv.push(port);
            }
            let out = crate::timings::span(
                from.as_str(),
                "connections probed",
                conn.run_on_host(&argv, None),
            )
            .await;
            let text = out
                .as_ref()
                .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                .unwrap_or_default();
            routes
                .iter()
                .map(|r| {
                    let line = format!("{} {} ok", r.to_address, r.port);
                    let result = if out.is_none() {
                        Err("the probe could not run".to_string())
                    } else if text.lines().any(|l| l == line) {
                        Ok(())
                    } else {
                        Err("no connection within 2 s (refused, dropped or filtered)".to_string())
                    };
                    checks::route_check(r, result)
                })
                .collect()
        })
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    // The listeners end when their stdin closes; wait for them all at once.
    futures_util::future::join_all(children.into_iter().map(|mut child| async move {
        if let Some(mut stdin) = child.stdin().take() {
            let _ = stdin.shutdown().await;
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(3), child.wait()).await;
    }))
    .await;
    results.into_iter().flatten().collect()
}
