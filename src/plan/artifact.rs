//! The saved plan: `plan --out FILE` writes the typed [`Plan`] itself with
//! what it was made from; `apply FILE` re-observes, refuses naming each host
//! and what differs when anything it depended on changed, and otherwise
//! executes exactly the saved steps.
//!
//! Format versions are `MAJOR.MINOR`: a minor bump only adds fields (older
//! readers ignore them); a major bump means readers of another major refuse.

use super::{HostFingerprint, Plan};
use crate::model::{excerpt, HostName};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a saved plan file holds.
pub const KIND: &str = "seedcore-plan";
/// Major version of the saved-plan format this seedcore reads and writes.
pub const FORMAT_MAJOR: u32 = 1;
/// Minor version written (1: `config.environment`).
pub const FORMAT_MINOR: u32 = 1;

/// The configuration a plan was made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigDigest {
    pub path: String,
    /// sha256 of the file's text.
    pub sha256: String,
    /// `KEY=VALUE` of every override in force.
    pub overrides: Vec<String>,
    /// The environment (`--env NAME`) selected; none: the base alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
}

/// A saved plan, as written to disk (JSON, mode 0600).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedPlan {
    pub kind: String,
    pub format_version: String,
    pub seedcore_version: String,
    pub config: ConfigDigest,
    pub plan: Plan,
}

/// Why a saved plan cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SavedPlanError {
    #[error("it is not a saved seedcore plan: {0}")]
    NotAPlan(String),
    #[error("it has format {found}, and this seedcore ({ours}) reads format {FORMAT_MAJOR}.x")]
    Format { found: String, ours: String },
    #[error("the configuration or its overrides changed since it was saved")]
    ConfigChanged,
    #[error("it was made for {}, and this run selects {}: it plans another cluster", in_env(.saved), in_env(.now))]
    Environment {
        saved: Option<String>,
        now: Option<String>,
    },
    #[error("the values of {} changed since it was made (seen through their keyed digests)", .0.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", "))]
    SecretsChanged(Vec<String>),
    #[error("the hosts changed since it was made:\n{}", describe(.0))]
    Stale(Vec<(HostName, Vec<String>)>),
}

fn in_env(env: &Option<String>) -> String {
    match env {
        Some(e) => format!("environment `{}`", excerpt(e, 40)),
        None => "no environment (the file's base)".to_string(),
    }
}

fn describe(hosts: &[(HostName, Vec<String>)]) -> String {
    let mut out = Vec::new();
    for (host, diffs) in hosts {
        out.push(format!("  - `{host}`:"));
        for d in diffs.iter().take(20) {
            out.push(format!("      {d}"));
        }
        if diffs.len() > 20 {
            out.push(format!("      ... and {} more", diffs.len() - 20));
        }
    }
    out.join("\n")
}

impl SavedPlan {
    pub fn new(plan: Plan, config: ConfigDigest) -> Self {
        SavedPlan {
            kind: KIND.to_string(),
            format_version: format!("{FORMAT_MAJOR}.{FORMAT_MINOR}"),
            seedcore_version: env!("CARGO_PKG_VERSION").to_string(),
            config,
            plan,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a plan serializes") + "\n"
    }

    /// Reads a saved plan, refusing other kinds and other major versions.
    pub fn from_json(text: &str) -> Result<SavedPlan, SavedPlanError> {
        #[derive(Deserialize)]
        struct Head {
            kind: Option<String>,
            format_version: Option<String>,
            seedcore_version: Option<String>,
        }
        let head: Head = serde_json::from_str(text)
            .map_err(|e| SavedPlanError::NotAPlan(excerpt(&e.to_string(), 200)))?;
        if head.kind.as_deref() != Some(KIND) {
            return Err(SavedPlanError::NotAPlan(
                "its `kind` is not `seedcore-plan`".to_string(),
            ));
        }
        let found = head.format_version.unwrap_or_default();
        let major = found.split('.').next().and_then(|m| m.parse::<u32>().ok());
        if major != Some(FORMAT_MAJOR) {
            return Err(SavedPlanError::Format {
                found: format!(
                    "{} (written by seedcore {})",
                    excerpt(&found, 20),
                    excerpt(head.seedcore_version.as_deref().unwrap_or("unknown"), 20)
                ),
                ours: env!("CARGO_PKG_VERSION").to_string(),
            });
        }
        serde_json::from_str(text)
            .map_err(|e| SavedPlanError::NotAPlan(excerpt(&e.to_string(), 200)))
    }

    /// Checks that the plan was made from this configuration.
    pub fn check_config(&self, now: &ConfigDigest) -> Result<(), SavedPlanError> {
        if self.config.environment != now.environment {
            return Err(SavedPlanError::Environment {
                saved: self.config.environment.clone(),
                now: now.environment.clone(),
            });
        }
        if self.config.sha256 != now.sha256 || self.config.overrides != now.overrides {
            return Err(SavedPlanError::ConfigChanged);
        }
        Ok(())
    }

    /// Checks the hosts still look as they did; names each difference.
    pub fn check_hosts(
        &self,
        now: &BTreeMap<HostName, HostFingerprint>,
    ) -> Result<(), SavedPlanError> {
        let stale = differences(&self.plan.fingerprint, now);
        if stale.is_empty() {
            Ok(())
        } else {
            Err(SavedPlanError::Stale(stale))
        }
    }
}

/// Per host, what differs between two fingerprints, worded.
pub fn differences(
    then: &BTreeMap<HostName, HostFingerprint>,
    now: &BTreeMap<HostName, HostFingerprint>,
) -> Vec<(HostName, Vec<String>)> {
    let mut out = Vec::new();
    let empty = HostFingerprint { lines: Vec::new() };
    let hosts: std::collections::BTreeSet<&HostName> = then.keys().chain(now.keys()).collect();
    for host in hosts {
        let a = then.get(host).unwrap_or(&empty);
        let b = now.get(host).unwrap_or(&empty);
        if a == b {
            continue;
        }
        // Lines are keyed by their first two words (`container NAME`, `image REF`).
        let key = |l: &str| -> String { l.splitn(3, ' ').take(2).collect::<Vec<_>>().join(" ") };
        let index = |fp: &HostFingerprint| -> BTreeMap<String, String> {
            fp.lines.iter().map(|l| (key(l), l.clone())).collect()
        };
        let (ia, ib) = (index(a), index(b));
        let mut diffs = Vec::new();
        for (k, la) in &ia {
            match ib.get(k) {
                None => diffs.push(format!("{}: gone (was {})", excerpt(k, 160), fields(la))),
                Some(lb) if lb != la => {
                    diffs.push(format!("{}: {}", excerpt(k, 160), changed_fields(la, lb)))
                }
                Some(_) => {}
            }
        }
        for (k, lb) in &ib {
            if !ia.contains_key(k) {
                diffs.push(format!("{}: new ({})", excerpt(k, 160), fields(lb)));
            }
        }
        if diffs.is_empty() {
            diffs.push("changed".to_string());
        }
        out.push((host.clone(), diffs));
    }
    out
}

/// The `key=value` fields of a fingerprint line after its key.
fn pairs(line: &str) -> Vec<(String, String)> {
    line.split(' ')
        .skip(2)
        .map(|w| match w.split_once('=') {
            Some((k, v)) => (k.to_string(), short(v)),
            None => (String::new(), short(w)),
        })
        .collect()
}

/// IDs and digests shortened to 12 characters, as Docker shows them.
fn short(v: &str) -> String {
    let v = v.strip_prefix("sha256:").unwrap_or(v);
    if v.len() > 12 && v.chars().all(|c| c.is_ascii_hexdigit()) {
        v[..12].to_string()
    } else {
        excerpt(v, 120)
    }
}

fn fields(line: &str) -> String {
    pairs(line)
        .iter()
        .filter(|(k, _)| k != "spec" && k != "cluster")
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Only what changed: `state running -> exited`.
fn changed_fields(a: &str, b: &str) -> String {
    let (pa, pb) = (pairs(a), pairs(b));
    let mut out = Vec::new();
    for (k, va) in &pa {
        let vb = pb.iter().find(|(kb, _)| kb == k).map(|(_, v)| v.as_str());
        if vb != Some(va.as_str()) {
            out.push(format!("{k} {va} -> {}", vb.unwrap_or("(none)")));
        }
    }
    if out.is_empty() {
        "changed".to_string()
    } else {
        out.join(", ")
    }
}
