//! The cluster lock: `apply`, `destroy` and `restart` hold it on the head's
//! host while they change anything, so that two operators never act at once.
//!
//! The lock is an `flock` on `/var/lib/seedcore/locks/CLUSTER.lock`, held by
//! a small keeper process on the head's host for as long as seedcore keeps
//! the keeper's stdin open; `CLUSTER.info` beside it says who took it, from
//! where, when, for what. However seedcore ends (done, failed, interrupted,
//! killed, its laptop gone), the keeper's channel closes and the kernel drops
//! the lock: it never outlives its holder, and no two runs hold it. The info
//! a holder could not remove (the host rebooted) is reported and replaced by
//! the next holder.

use crate::model::HostName;
use crate::transport::Connection;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Where locks live on the head's host.
pub const LOCK_ROOT: &str = "/var/lib/seedcore/locks";

/// Takes the lock, or reports its holder: prints `locked`, `broke` + the
/// info a holder that ended without releasing left + `.` then `locked`, or
/// `held` + the holder's info. The lock itself is an `flock` on `$d.lock`
/// that the keeper (and its `cat`) hold open: the kernel drops it when they
/// end, however they end, so a lock never outlives its holder and two
/// runs never both take it. `$d.info` says who holds it. Values come as
/// arguments, never pasted into the script.
const ACQUIRE: &str = r#"d=$1; info=$2
mkdir -p "$(dirname "$d")" 2>/dev/null || { echo "cannot-create $(dirname "$d")"; exit 4; }
command -v flock >/dev/null 2>&1 || { echo "no-flock"; exit 4; }
exec 9>>"$d.lock" || { echo "cannot-create $d.lock"; exit 4; }
if ! flock -n 9; then echo held; cat "$d.info" 2>/dev/null; exit 3; fi
if [ -s "$d.info" ]; then echo broke; cat "$d.info"; echo .; fi
printf '%s\nkeeper=%s\n' "$info" "$$" > "$d.info"
echo locked
cat >/dev/null
rm -f "$d.info"
exit 0"#;

/// Prints the holder's info and `alive=yes` while the lock is held; the
/// info a holder left behind and `alive=no`; nothing when there is neither.
const STATUS: &str = r#"d=$1
[ -e "$d.lock" ] || exit 0
exec 9>>"$d.lock" || exit 0
if flock -n -s 9; then
  [ -s "$d.info" ] || exit 0
  cat "$d.info"; echo alive=no
else
  cat "$d.info" 2>/dev/null; echo alive=yes
fi"#;

/// Removes what a gone holder left; with `force`, first stops a live one's
/// keeper (and its `cat`, which holds the lock too).
const RELEASE: &str = r#"d=$1; force=$2
[ -e "$d.lock" ] || { echo none; exit 0; }
exec 9>>"$d.lock"
if ! flock -n 9; then
  [ "$force" = force ] || { echo alive; exit 3; }
  k=$(sed -n 's/^keeper=//p' "$d.info" 2>/dev/null)
  [ -n "$k" ] && { pkill -P "$k" 2>/dev/null; kill "$k" 2>/dev/null; }
  flock -w 10 9 || { echo alive; exit 3; }
fi
if [ -s "$d.info" ]; then rm -f "$d.info"; echo released; else echo none; fi"#;

/// The lock's path prefix for a cluster (`PREFIX.lock`, `PREFIX.info`; the
/// name was validated: letters, digits, `-`, `_`, `.`).
pub fn lock_dir(cluster: &str) -> String {
    format!("{LOCK_ROOT}/{cluster}")
}

/// Who asks for the lock, and for what.
#[derive(Debug, Clone)]
pub struct Request {
    /// `apply`, `destroy`, `restart`.
    pub command: String,
    /// How long to wait for another holder (`--lock-timeout`).
    pub timeout: Duration,
}

/// A lock's holder, as its info file tells.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holder {
    pub fields: Vec<(String, String)>,
    /// Whether its keeper still runs (`None`: unknown).
    pub alive: Option<bool>,
}

impl Holder {
    fn parse(text: &str) -> Holder {
        let mut h = Holder::default();
        for line in text.lines() {
            if let Some((k, v)) = line.split_once('=') {
                match k {
                    "alive" => h.alive = Some(v == "yes"),
                    _ => h.fields.push((k.to_string(), v.to_string())),
                }
            }
        }
        h
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `root@laptop (pid 4242) running `apply` since 2026-11-27T18:01:53Z`.
    pub fn describe(&self) -> String {
        let field = |k: &str| crate::model::excerpt(self.get(k).unwrap_or("?"), 120);
        let mut out = format!(
            "{} (pid {}) running `{}` since {}",
            field("by"),
            field("pid"),
            field("command"),
            field("since")
        );
        if let Some(plan) = self.get("plan") {
            out.push_str(&format!(", plan {}", crate::model::excerpt(plan, 24)));
        }
        out
    }
}

/// Why the lock could not be taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockError {
    /// Someone else holds it (after waiting `waited`).
    Held {
        host: HostName,
        holder: Holder,
        waited: Duration,
    },
    /// The head's host could not run the keeper.
    Unavailable { host: HostName, why: String },
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockError::Held {
                host,
                holder,
                waited,
            } => {
                let waited = if waited.as_secs() == 0 {
                    String::new()
                } else {
                    format!(" (waited {}s)", waited.as_secs())
                };
                write!(
                    f,
                    "error: the cluster is locked by {}{waited}: nothing was changed\nhint: wait for it to finish (or pass `--lock-timeout 10m` to wait); `seedcore lock status` shows the lock on `{host}`, and `seedcore lock release` removes it once its holder is gone",
                    holder.describe()
                )
            }
            LockError::Unavailable { host, why } => write!(
                f,
                "error: cannot take the cluster lock on `{host}`: {}: nothing was changed\nhint: seedcore keeps its lock in `{LOCK_ROOT}` on the head's host; the SSH user must be able to create it (root, or a user owning `/var/lib/seedcore`)",
                crate::model::excerpt(why, 300)
            ),
        }
    }
}

/// A held lock: released when dropped (the keeper sees its stdin close) or
/// by [`Held::release`], which also waits for the keeper to remove it.
pub struct Held {
    pub host: HostName,
    pub dir: String,
    keeper: openssh::Child<std::sync::Arc<openssh::Session>>,
    /// What a holder that ended without releasing left, if any.
    pub broke: Option<Holder>,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Held({} on {})", self.dir, self.host)
    }
}

impl Held {
    /// Adds a line to the lock's info (the plan's digest once it is known).
    pub async fn note(&self, conn: &Connection, key: &str, value: &str) {
        let line = format!(
            "{}={}",
            crate::audit::sanitize(key, 40),
            crate::audit::sanitize(value, 200)
        );
        let _ = conn
            .run_on_host(
                &[
                    "sh",
                    "-c",
                    r#"[ -f "$1.info" ] && printf '%s\n' "$2" >> "$1.info""#,
                    "seedcore",
                    &self.dir,
                    &line,
                ],
                None,
            )
            .await;
    }

    /// Closes the keeper's stdin and waits (briefly) for it to remove the lock.
    pub async fn release(mut self) {
        if let Some(mut stdin) = self.keeper.stdin().take() {
            let _ = stdin.shutdown().await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.keeper.wait()).await;
    }
}

/// The info a lock holds: who, from where, when, for what.
pub fn info(command: &str) -> String {
    let cwd = std::env::current_dir()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    [
        ("by", crate::audit::operator()),
        ("pid", std::process::id().to_string()),
        ("command", command.to_string()),
        ("since", crate::audit::now_rfc3339()),
        ("cwd", cwd),
    ]
    .iter()
    .map(|(k, v)| format!("{k}={}", crate::audit::sanitize(v, 200)))
    .collect::<Vec<_>>()
    .join("\n")
}

/// Takes the cluster's lock on `conn`'s host, waiting up to the request's
/// timeout for another holder.
pub async fn acquire(
    conn: &Connection,
    cluster: &str,
    request: &Request,
) -> Result<Held, LockError> {
    let dir = lock_dir(cluster);
    let info = info(&request.command);
    let started = Instant::now();
    loop {
        let Some(mut keeper) = conn
            .spawn_owned(&["sh", "-c", ACQUIRE, "seedcore", &dir, &info])
            .await
        else {
            return Err(LockError::Unavailable {
                host: conn.host.clone(),
                why: "cannot start a command there".to_string(),
            });
        };
        let Some(stdout) = keeper.stdout().take() else {
            return Err(LockError::Unavailable {
                host: conn.host.clone(),
                why: "no output from the lock command".to_string(),
            });
        };
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .ok()
            .and_then(|l| l.ok().flatten())
            .unwrap_or_default();
        let mut broke = None;
        let next = Duration::from_secs(10);
        let verdict = if first == "broke" {
            let mut old = String::new();
            while let Ok(Ok(Some(l))) = tokio::time::timeout(next, lines.next_line()).await {
                if l == "." {
                    break;
                }
                old.push_str(&l);
                old.push('\n');
            }
            broke = Some(Holder::parse(&old));
            tokio::time::timeout(next, lines.next_line())
                .await
                .ok()
                .and_then(|l| l.ok().flatten())
                .unwrap_or_default()
        } else {
            first
        };
        match verdict.as_str() {
            "locked" => {
                // Keep the keeper's stdout open: it prints nothing more.
                let _ = lines;
                return Ok(Held {
                    host: conn.host.clone(),
                    dir,
                    keeper,
                    broke,
                });
            }
            "held" => {
                let mut text = String::new();
                while let Ok(Ok(Some(l))) = tokio::time::timeout(next, lines.next_line()).await {
                    text.push_str(&l);
                    text.push('\n');
                }
                drop(keeper.stdin().take());
                let _ = tokio::time::timeout(next, keeper.wait()).await;
                let mut holder = Holder::parse(&text);
                holder.alive = Some(true);
                let waited = started.elapsed();
                if waited >= request.timeout {
                    return Err(LockError::Held {
                        host: conn.host.clone(),
                        holder,
                        waited,
                    });
                }
                tokio::time::sleep(Duration::from_secs(1).min(request.timeout - waited)).await;
            }
            other => {
                // Close its stdin first: a keeper that did lock waits on it.
                drop(keeper.stdin().take());
                let _ = tokio::time::timeout(Duration::from_secs(10), keeper.wait()).await;
                return Err(LockError::Unavailable {
                    host: conn.host.clone(),
                    why: if other == "no-flock" {
                        "`flock` (util-linux) is not installed there".to_string()
                    } else if let Some(dir) = other.strip_prefix("cannot-create ") {
                        format!("cannot create `{}`", crate::model::excerpt(dir, 200))
                    } else {
                        format!(
                            "the lock command answered {:?}",
                            crate::model::excerpt(other, 200)
                        )
                    },
                });
            }
        }
    }
}

/// The lock's holder, if any.
pub async fn status(conn: &Connection, cluster: &str) -> Result<Option<Holder>, String> {
    let out = conn
        .run_on_host(&["sh", "-c", STATUS, "seedcore", &lock_dir(cluster)], None)
        .await
        .ok_or_else(|| "cannot run commands there".to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Ok(None);
    }
    Ok(Some(Holder::parse(&text)))
}

/// How `release` went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Released {
    Released,
    NoLock,
    /// Its keeper still runs and `force` was not given.
    StillHeld,
}

/// Removes the lock (with `force`, even a live one).
pub async fn release(conn: &Connection, cluster: &str, force: bool) -> Result<Released, String> {
    let out = conn
        .run_on_host(
            &[
                "sh",
                "-c",
                RELEASE,
                "seedcore",
                &lock_dir(cluster),
                if force { "force" } else { "" },
            ],
            None,
        )
        .await
        .ok_or_else(|| "cannot run commands there".to_string())?;
    match String::from_utf8_lossy(&out.stdout).trim() {
        "released" => Ok(Released::Released),
        "none" => Ok(Released::NoLock),
        "alive" => Ok(Released::StillHeld),
        other => Err(format!(
            "removing the lock failed: {}{}",
            crate::model::excerpt(other, 200),
            crate::model::excerpt(String::from_utf8_lossy(&out.stderr).trim(), 200)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_are_read_and_described() {
        let h = Holder::parse(
            "by=ops@laptop\npid=42\ncommand=apply\nsince=2026-11-27T18:00:00Z\nkeeper=7\nalive=no\n",
        );
        assert_eq!(h.alive, Some(false));
        assert_eq!(h.get("keeper"), Some("7"));
        assert_eq!(
            h.describe(),
            "ops@laptop (pid 42) running `apply` since 2026-11-27T18:00:00Z"
        );
        let forged = Holder::parse("by=\u{1b}[2Jx`y\n");
        assert!(!forged.describe().contains('\u{1b}'));
        assert!(!forged.describe().contains("x`y"));
    }
}
