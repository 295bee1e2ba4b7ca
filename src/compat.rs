//! Which Ray versions seedcore drives, and what an image's Ray version
//! allows: the support window, token authentication (Ray 2.52 and later) and
//! node labels (`--labels k=v`, Ray 2.49 and later).
//!
//! An image's Ray version is learnt once per image ID (content-addressed, so
//! the answer never goes stale) by a throwaway container on an engine that has
//! the image, and cached on this machine.

use crate::model::DesiredState;
use std::collections::BTreeMap;
use std::fmt;

/// A Ray release, `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RayVersion(pub u32, pub u32, pub u32);

impl fmt::Display for RayVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

impl RayVersion {
    /// `2.60.0`, `2.10.0rc1` (pre-release suffixes are read as their release).
    pub fn parse(text: &str) -> Option<RayVersion> {
        let t = text.trim();
        let mut parts = t.split('.');
        let num = |p: Option<&str>| -> Option<u32> {
            let digits: String = p?.chars().take_while(|c| c.is_ascii_digit()).collect();
            digits.parse().ok()
        };
        let v = RayVersion(
            num(parts.next())?,
            num(parts.next())?,
            num(parts.next()).unwrap_or(0),
        );
        Some(v)
    }
}

/// The oldest Ray whose `ray start` flags, state API and `ray drain-node`
/// seedcore uses (`--runtime-env-agent-port` arrived in 2.7.1, `ray
/// drain-node` in 2.10.0).
pub const OLDEST: RayVersion = RayVersion(2, 10, 0);
/// The newest Ray seedcore is tested with (the lab's).
pub const NEWEST_TESTED: RayVersion = RayVersion(2, 60, 0);
/// Token authentication (`RAY_AUTH_MODE`): older Rays ignore it.
pub const TOKEN_AUTH: RayVersion = RayVersion(2, 52, 0);
/// `--labels key=value,...` (older Rays took JSON or nothing).
pub const LABELS: RayVersion = RayVersion(2, 49, 0);

/// What the plan says of the Ray versions, and what refuses it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub errors: Vec<String>,
    pub notes: Vec<String>,
}

/// Checks every node's image's Ray version (`versions`: image -> version;
/// images missing from it are unknown and pass).
pub fn check(
    desired: &DesiredState,
    versions: &BTreeMap<String, String>,
    token_auth: bool,
) -> Verdict {
    let mut v = Verdict::default();
    let mut images: Vec<&str> = desired.nodes.iter().map(|n| n.image.as_str()).collect();
    images.sort();
    images.dedup();
    for image in images {
        let Some(text) = versions.get(image) else {
            continue;
        };
        let shown = crate::model::excerpt(image, 120);
        let Some(ray) = RayVersion::parse(text) else {
            v.errors.push(format!(
                "error: `{shown}` reports Ray version `{}`, which seedcore cannot read\nhint: use an image with Ray {OLDEST} through {}.x",
                crate::model::excerpt(text, 40),
                minor(NEWEST_TESTED)
            ));
            continue;
        };
        v.notes.push(format!("`{shown}` runs Ray {ray}."));
        if ray < OLDEST {
            v.errors.push(format!(
                "error: `{shown}` runs Ray {ray}; seedcore supports Ray {OLDEST} through {}.x (older Rays lack `ray start` port flags or `ray drain-node` it needs)\nhint: use an image with Ray {OLDEST} or newer, e.g. `rayproject/ray:{NEWEST_TESTED}`",
                minor(NEWEST_TESTED)
            ));
            continue;
        }
        if ray > RayVersion(NEWEST_TESTED.0, NEWEST_TESTED.1, u32::MAX) {
            v.notes.push(format!(
                "`{shown}` runs Ray {ray}, newer than seedcore is tested with ({}.x): it should work; report what does not.",
                minor(NEWEST_TESTED)
            ));
        }
        if token_auth && ray < TOKEN_AUTH {
            v.errors.push(format!(
                "error: `{shown}` runs Ray {ray}, which has no token authentication (Ray {TOKEN_AUTH} and later): its nodes would accept anyone who reaches them\nhint: use Ray {TOKEN_AUTH} or newer, or set `cluster.auth = \"none\"` to run without it knowingly"
            ));
        }
        let labelled: Vec<&str> = desired
            .nodes
            .iter()
            .filter(|n| n.image == image && n.ray_start.iter().any(|a| a.starts_with("--labels=")))
            .filter_map(|n| n.group.as_deref())
            .collect();
        if ray < LABELS {
            if let Some(group) = labelled.first() {
                v.errors.push(format!(
                    "error: `[workers.{group}] labels` needs Ray {LABELS} or newer (`--labels key=value`); `{shown}` runs Ray {ray}\nhint: remove `labels`, or use a newer Ray image for that group"
                ));
            }
        }
    }
    v
}

fn minor(v: RayVersion) -> String {
    format!("{}.{}", v.0, v.1)
}

/// Prints the Ray version installed in an image without importing Ray.
pub const VERSION_SCRIPT: &str = "import importlib.metadata as m\nprint(m.version('ray'))\n";

/// The cache of image ID -> Ray version, in `~/.cache/seedcore/ray-versions.json`.
fn cache_path() -> Option<std::path::PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))?;
    Some(base.join("seedcore").join("ray-versions.json"))
}

pub fn cached() -> BTreeMap<String, String> {
    cache_path()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// Adds what was learnt; a cache that cannot be written is only slower.
pub fn remember(found: &BTreeMap<String, String>) {
    if found.is_empty() {
        return;
    }
    let Some(path) = cache_path() else { return };
    let mut all = cached();
    all.extend(found.iter().map(|(k, v)| (k.clone(), v.clone())));
    // Bounded: the newest entries win once it grows past a few hundred images.
    while all.len() > 500 {
        let first = all.keys().next().cloned();
        if let Some(k) = first {
            all.remove(&k);
        }
    }
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let tmp = path.with_extension("json.tmp");
    if std::fs::write(&tmp, serde_json::to_string_pretty(&all).unwrap_or_default()).is_ok() {
        let _ = std::fs::rename(&tmp, &path);
    }
}

/// Runs [`VERSION_SCRIPT`] in a throwaway container of `image_id` (no
/// network, removed afterwards) and returns what it printed.
pub async fn probe(docker: &bollard::Docker, image_id: &str) -> Result<String, String> {
    use bollard::models::{ContainerCreateBody, HostConfig};
    use bollard::query_parameters::{LogsOptions, RemoveContainerOptions};
    use futures_util::StreamExt;
    let body = ContainerCreateBody {
        image: Some(image_id.to_string()),
        entrypoint: Some(vec!["python3".to_string()]),
        cmd: Some(vec!["-c".to_string(), VERSION_SCRIPT.to_string()]),
        labels: Some(
            [("io.seedcore.probe".to_string(), "ray-version".to_string())]
                .into_iter()
                .collect(),
        ),
        network_disabled: Some(true),
        host_config: Some(HostConfig {
            network_mode: Some("none".to_string()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = docker
        .create_container(
            None::<bollard::query_parameters::CreateContainerOptions>,
            body,
        )
        .await
        .map_err(|e| e.to_string())?;
    let id = created.id;
    let run = async {
        docker
            .start_container(
                &id,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .map_err(|e| e.to_string())?;
        let mut wait =
            docker.wait_container(&id, None::<bollard::query_parameters::WaitContainerOptions>);
        let mut failed = None;
        while let Some(r) = wait.next().await {
            if let Err(e) = r {
                failed = Some(e.to_string());
            }
        }
        let mut out = String::new();
        let mut logs = docker.logs(
            &id,
            Some(LogsOptions {
                stdout: true,
                stderr: true,
                ..Default::default()
            }),
        );
        while let Some(chunk) = logs.next().await {
            if let Ok(c) = chunk {
                out.push_str(&c.to_string());
            }
            if out.len() > 4096 {
                break;
            }
        }
        match failed {
            Some(e) => Err(format!("{e}: {}", crate::ray::tail(&out, 2))),
            None => Ok(out.trim().to_string()),
        }
    };
    let result = tokio::time::timeout(std::time::Duration::from_secs(60), run)
        .await
        .unwrap_or_else(|_| Err("no answer in 60 s".to_string()));
    let _ = docker
        .remove_container(
            &id,
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_order() {
        assert_eq!(RayVersion::parse("2.60.0"), Some(RayVersion(2, 60, 0)));
        assert_eq!(RayVersion::parse("2.10.0rc1\n"), Some(RayVersion(2, 10, 0)));
        assert_eq!(RayVersion::parse("3.0"), Some(RayVersion(3, 0, 0)));
        assert_eq!(RayVersion::parse("banana"), None);
        assert!(RayVersion(2, 9, 3) < OLDEST);
        assert!(RayVersion(2, 60, 7) <= RayVersion(2, 60, u32::MAX));
    }
}
