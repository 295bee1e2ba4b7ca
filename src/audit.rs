//! Who changed the cluster, from where, when: container labels and the audit
//! trail each host keeps (`/var/log/seedcore/CLUSTER.log`).

/// `user@machine` of the operator running seedcore (bounded, printable).
pub fn operator() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(user_from_passwd)
        .unwrap_or_else(|| "unknown".to_string());
    let machine = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string());
    sanitize(&format!("{user}@{machine}"), 128)
}

/// The name of this process's user in `/etc/passwd`.
fn user_from_passwd() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .to_string();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 2 && f[2] == uid).then(|| f[0].to_string())
    })
}

/// Now, as `2026-11-27T18:01:53Z`.
pub fn now_rfc3339() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    rfc3339(ms)
}

/// Milliseconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339(ms: u64) -> String {
    crate::model::utc(ms)
        .trim_end_matches(" UTC")
        .replacen(' ', "T", 1)
        + "Z"
}

/// Printable ASCII without separators, at most `max` characters: what may
/// go into a label or a line of the audit trail.
pub fn sanitize(text: &str, max: usize) -> String {
    text.chars()
        .map(|c| {
            if (c.is_ascii_graphic() || c == ' ') && c != '|' {
                c
            } else {
                '_'
            }
        })
        .take(max)
        .collect()
}

/// Where each host keeps the cluster's audit trail.
pub const LOG_DIR: &str = "/var/log/seedcore";

/// The audit file of a cluster (its name was validated).
pub fn log_path(cluster: &str) -> String {
    format!("{LOG_DIR}/{cluster}.log")
}

/// One line of the audit trail: `key=value` fields separated by tabs, every
/// value sanitized (printable, no tabs or newlines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub fields: Vec<(String, String)>,
}

impl Entry {
    pub fn new(fields: &[(&str, String)]) -> Entry {
        Entry {
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), sanitize(v, 400)))
                .collect(),
        }
    }

    pub fn line(&self) -> String {
        self.fields
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("\t")
    }

    /// Reads a line written by [`Entry::line`] (what a host returns is
    /// untrusted: values are excerpted when shown).
    pub fn parse(line: &str) -> Entry {
        Entry {
            fields: line
                .split('\t')
                .filter_map(|f| f.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    pub fn get(&self, key: &str) -> &str {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or("-")
    }
}

/// The configuration's git commit (`abc1234`, `abc1234+dirty`), if it lives
/// in a git work tree.
pub fn config_commit(config_path: &std::path::Path) -> Option<String> {
    let dir = config_path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let run = |args: &[&str]| {
        // No hook or fsmonitor of the checkout runs (`core.fsmonitor=`).
        std::process::Command::new("git")
            .args(["-c", "core.fsmonitor=", "--no-optional-locks", "-C"])
            .arg(dir)
            .args(args)
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = run(&["rev-parse", "--short=12", "HEAD"])?;
    let dirty = run(&["status", "--porcelain", "--untracked-files=no"])
        .map(|s| !s.is_empty())
        .unwrap_or(false);
    Some(if dirty {
        format!("{commit}+dirty")
    } else {
        commit
    })
}

/// Appends a line to the cluster's audit trail on a host (argv, the line as
/// an argument). Returns why not, if it failed.
pub async fn append(
    conn: &crate::transport::Connection,
    cluster: &str,
    entry: &Entry,
) -> Result<(), String> {
    let out = conn
        .run_on_host(
            &[
                "sh",
                "-c",
                r#"mkdir -p "$(dirname "$1")" && printf '%s\n' "$2" >> "$1""#,
                "seedcore",
                &log_path(cluster),
                &entry.line(),
            ],
            None,
        )
        .await
        .ok_or_else(|| "cannot run commands there".to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(crate::model::excerpt(
            String::from_utf8_lossy(&out.stderr).trim(),
            200,
        ))
    }
}

/// The last `n` lines of the cluster's audit trail on a host.
pub async fn read(
    conn: &crate::transport::Connection,
    cluster: &str,
    n: usize,
) -> Result<Vec<Entry>, String> {
    let out = conn
        .run_on_host(
            &[
                "sh",
                "-c",
                r#"[ -f "$1" ] || exit 0; tail -n "$2" "$1""#,
                "seedcore",
                &log_path(cluster),
                &n.to_string(),
            ],
            None,
        )
        .await
        .ok_or_else(|| "cannot run commands there".to_string())?;
    if !out.status.success() {
        return Err(crate::model::excerpt(
            String::from_utf8_lossy(&out.stderr).trim(),
            200,
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(Entry::parse)
        .collect())
}

/// The history as a table for the terminal (values excerpted).
pub fn render(host: &str, entries: &[Entry]) -> String {
    if entries.is_empty() {
        return format!("No changes recorded on `{host}` yet.\n");
    }
    let cols = ["time", "by", "command", "commit", "changes", "outcome"];
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            cols.iter()
                .map(|c| crate::model::excerpt(e.get(c), 60))
                .collect()
        })
        .collect();
    let mut widths: Vec<usize> = cols.iter().map(|c| c.len()).collect();
    for r in &rows {
        for (i, v) in r.iter().enumerate() {
            widths[i] = widths[i].max(v.chars().count());
        }
    }
    let mut out = format!("Changes recorded on `{host}` (oldest first):\n");
    let fmt_row = |r: &[String]| -> String {
        r.iter()
            .enumerate()
            .map(|(i, v)| format!("{v:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    out.push_str(&fmt_row(
        &cols.iter().map(|c| c.to_uppercase()).collect::<Vec<_>>(),
    ));
    out.push('\n');
    for r in &rows {
        out.push_str(&fmt_row(r));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_cannot_forge_fields() {
        let e = Entry::new(&[
            ("time", "2026-11-27T18:00:00Z".to_string()),
            ("by", "ops@laptop\tcommand=forged\nnext".to_string()),
            ("outcome", "ok".to_string()),
        ]);
        let line = e.line();
        assert!(!line.contains('\n'));
        let back = Entry::parse(&line);
        assert_eq!(back.get("by"), "ops@laptop_command=forged_next");
        assert_eq!(back.get("command"), "-");
        assert_eq!(back, e);
    }

    #[test]
    fn rfc3339_is_utc() {
        assert_eq!(rfc3339(1_795_791_601_000), "2026-11-27T15:00:01Z");
    }
}
