//! What each host remembers of the clusters it ran: for every cluster
//! identity, the hosts that ran its nodes, so a host dropped from the
//! configuration (or a moved head) is still visited to remove its nodes.
//!
//! Stored in the SSH user's home, `~/.seedcore/NAME/ID.hosts`, one host per
//! line. `local` is never remembered: a remote host's file must not make
//! seedcore act on the operator's own engine. Every command is an argument
//! vector; nothing from the configuration is pasted into a shell script.

use crate::model::{ClusterIdentity, HostName};
use crate::transport::Connection;
use std::collections::BTreeMap;

/// The directory of a cluster name's lists, relative to the home directory.
fn dir(name: &str) -> String {
    format!(".seedcore/{name}")
}

/// Reads one list: host names, one per line; invalid lines and `local` dropped.
pub fn parse(text: &str) -> Vec<HostName> {
    let mut out: Vec<HostName> = Vec::new();
    for line in text.lines().map(str::trim).take(10_000) {
        if line.is_empty() || line == "local" || crate::config::check_host(line).is_err() {
            continue;
        }
        let h = HostName(line.to_string());
        if !out.contains(&h) {
            out.push(h);
        }
    }
    out
}

/// Prints every list of the cluster name's directory (`$1`, relative to the
/// home directory), each after a line `== ID`, then [`READ_END`].
pub const READ_SCRIPT: &str = "( cd \"$HOME\" 2>/dev/null || exit 0; for f in \"$1\"/*.hosts; do [ -f \"$f\" ] || continue; b=${f##*/}; printf '== %s\\n' \"${b%.hosts}\"; head -c 65536 \"$f\"; echo; done ); echo ==seedcore-lists-end";

/// The last line of [`READ_SCRIPT`]'s output: without it, the lists were
/// not read whole.
pub const READ_END: &str = "==seedcore-lists-end";

/// The argument [`READ_SCRIPT`] takes for a cluster name.
pub fn read_argument(name: &str) -> String {
    dir(name)
}

/// Every list one host keeps for a cluster name, by identity; `None` when
/// they could not be read whole.
pub async fn read(conn: &Connection, name: &str) -> Option<BTreeMap<String, Vec<HostName>>> {
    if conn.host.is_local() {
        let name = name.to_string();
        let text = tokio::task::spawn_blocking(move || read_local(&name))
            .await
            .ok()?;
        return Some(parse_lists(&text));
    }
    let out = conn
        .run_on_host(&["sh", "-c", READ_SCRIPT, "sh", &dir(name)], None)
        .await?;
    parse_read(&String::from_utf8_lossy(&out.stdout))
}

/// Reads [`READ_SCRIPT`]'s whole output; `None` unless it ends with [`READ_END`].
pub fn parse_read(text: &str) -> Option<BTreeMap<String, Vec<HostName>>> {
    let body = text.trim_end().strip_suffix(READ_END)?;
    Some(parse_lists(body))
}

/// Reads [`READ_SCRIPT`]'s output: each identity's list.
pub fn parse_lists(text: &str) -> BTreeMap<String, Vec<HostName>> {
    let mut out: BTreeMap<String, Vec<HostName>> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut body = String::new();
    for line in text.lines().chain(std::iter::once("== ")) {
        if let Some(id) = line.strip_prefix("== ") {
            if let Some(prev) = current.take() {
                out.insert(prev, parse(&body));
            }
            body.clear();
            current = Some(id.trim().to_string()).filter(|s| !s.is_empty());
        } else {
            body.push_str(line);
            body.push('\n');
        }
    }
    out
}

/// [`READ_SCRIPT`]'s output for this machine's own lists.
pub fn read_local(name: &str) -> String {
    let Some(home) = std::env::var_os("HOME") else {
        return String::new();
    };
    let dir = std::path::Path::new(&home).join(dir(name));
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return String::new();
    };
    let mut files: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    files.sort();
    let mut out = String::new();
    for f in files {
        let Some(id) = f
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".hosts"))
        else {
            continue;
        };
        out.push_str(&format!("== {id}\n"));
        out.push_str(&std::fs::read_to_string(&f).unwrap_or_default());
        out.push('\n');
    }
    out
}

/// What a host's list holds for `hosts`: every host but `local`, in order.
pub fn listed(hosts: &[HostName]) -> Vec<HostName> {
    let mut out: Vec<HostName> = Vec::new();
    for h in hosts.iter().filter(|h| !h.is_local()) {
        if !out.contains(h) {
            out.push(h.clone());
        }
    }
    out
}

/// Whether a list read back holds exactly the hosts it should (in any order).
pub fn holds(read: &[HostName], hosts: &[HostName]) -> bool {
    let mut a = listed(read);
    let mut b = listed(hosts);
    a.sort();
    b.sort();
    a == b
}

/// Writes this cluster's list on one host, tried twice; says why not.
pub async fn write(
    conn: &Connection,
    cluster: &ClusterIdentity,
    hosts: &[HostName],
) -> Result<(), String> {
    let mut outcome = write_once(conn, cluster, hosts).await;
    if outcome.is_err() {
        outcome = write_once(conn, cluster, hosts).await;
    }
    outcome
}

async fn write_once(
    conn: &Connection,
    cluster: &ClusterIdentity,
    hosts: &[HostName],
) -> Result<(), String> {
    let body: String = listed(hosts).iter().map(|h| format!("{h}\n")).collect();
    let file = format!("{}/{}.hosts", dir(&cluster.name), cluster.id);
    if conn.host.is_local() {
        let home = std::env::var_os("HOME").ok_or("HOME is not set")?;
        let p = std::path::Path::new(&home).join(&file);
        if let Some(d) = p.parent() {
            tokio::fs::create_dir_all(d)
                .await
                .map_err(|e| format!("{}: {e}", d.display()))?;
        }
        return tokio::fs::write(&p, body)
            .await
            .map_err(|e| format!("{}: {e}", p.display()));
    }
    const SCRIPT: &str =
        "cd \"$HOME\" && mkdir -p \"$1\" && cat > \"$2.new\" && mv -f \"$2.new\" \"$2\"";
    let out = conn
        .run_on_host(
            &["sh", "-c", SCRIPT, "sh", &dir(&cluster.name), &file],
            Some(body.as_bytes()),
        )
        .await
        .ok_or("the command could not be run there")?;
    if out.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&out.stderr);
    Err(match said.trim() {
        "" => format!("`~/{file}` could not be written ({})", out.status),
        text => format!(
            "`~/{file}` could not be written: {}",
            crate::model::excerpt(text, 200)
        ),
    })
}

/// Forgets this cluster on one host (after a whole cluster was destroyed).
pub async fn forget(conn: &Connection, cluster: &ClusterIdentity) {
    let file = format!("{}/{}.hosts", dir(&cluster.name), cluster.id);
    if conn.host.is_local() {
        if let Some(home) = std::env::var_os("HOME") {
            let _ = std::fs::remove_file(std::path::Path::new(&home).join(&file));
        }
    } else {
        const SCRIPT: &str = "cd \"$HOME\" && rm -f \"$1\" && rmdir \"$2\" 2>/dev/null; true";
        let _ = conn
            .run_on_host(
                &["sh", "-c", SCRIPT, "sh", &file, &dir(&cluster.name)],
                None,
            )
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_count_only_when_read_to_their_last_line() {
        let whole = format!("== abc\n10.0.0.5\n\n{READ_END}\n");
        let lists = parse_read(&whole).expect("whole");
        assert_eq!(lists["abc"], vec![HostName("10.0.0.5".to_string())]);
        assert_eq!(parse_read("== abc\n10.0.0.5\n"), None);
        assert_eq!(parse_read(""), None);
        // A list that forges the last line is still one list among others.
        let forged = format!("== abc\n{READ_END}\n10.0.0.6\n\n{READ_END}\n");
        assert_eq!(
            parse_read(&forged).expect("whole")["abc"],
            vec![HostName("10.0.0.6".to_string())]
        );
    }

    #[test]
    fn a_list_holds_its_hosts_in_any_order_never_local() {
        let h = |s: &str| HostName(s.to_string());
        assert_eq!(
            listed(&[h("b"), h("local"), h("a"), h("b")]),
            vec![h("b"), h("a")]
        );
        assert!(holds(&[h("a"), h("b")], &[h("b"), h("local"), h("a")]));
        assert!(!holds(&[h("a")], &[h("a"), h("b")]));
        assert!(!holds(&[h("a"), h("b"), h("c")], &[h("a"), h("b")]));
    }

    #[test]
    fn local_and_invalid_lines_are_never_remembered() {
        let hosts = parse("10.0.0.5\nlocal\n;rm -rf /\n10.0.0.5\nnode-2.example\n");
        assert_eq!(
            hosts,
            vec![
                HostName("10.0.0.5".to_string()),
                HostName("node-2.example".to_string())
            ]
        );
    }
}
