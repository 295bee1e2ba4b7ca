//! The cluster's secrets as nodes get them: the Ray token and the secret
//! environment, handed to each container as files (never in its
//! configuration), and their keyed digests, which labels carry so that a
//! later plan sees a change without ever seeing a value.
//!
//! The digest key is random per cluster and kept by the head (a file in its
//! container, beside the token): whoever reads labels (`docker inspect`, a
//! metrics exporter) cannot test guesses against a digest without it.

use crate::config::{Auth, Config, EnvValue, Secret, SecretOrigin, TokenSource};
use crate::model::{hex, TOKEN_SECRET_NAME};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::BTreeMap;

/// What the head keeps: the digest key and the generated token.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct HeadSecrets {
    pub digest_key: Option<Vec<u8>>,
    pub token: Option<Secret>,
}

impl HeadSecrets {
    /// The Ray token to show the running head: the one it keeps in its
    /// container (what it runs with), else the operator's (`token_file`,
    /// `token_env`). `None` with authentication off or nothing known.
    pub fn ray_token<'a>(&'a self, config: &'a Config) -> Option<&'a Secret> {
        use crate::config::{Auth, TokenSource};
        match &config.cluster.auth {
            Auth::None => None,
            Auth::Token(source) => self.token.as_ref().or(match source {
                TokenSource::Given(t) => Some(t),
                TokenSource::Generated => None,
            }),
        }
    }
}

impl std::fmt::Debug for HeadSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadSecrets")
            .field(
                "digest_key",
                &self.digest_key.as_ref().map(|_| "(sensitive)"),
            )
            .field("token", &self.token)
            .finish()
    }
}

/// The digest of one named secret under the cluster's key: 24 hex digits of
/// HMAC-SHA256 over `name NUL value`.
pub fn digest(key: &[u8], name: &str, value: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(name.as_bytes());
    mac.update(&[0]);
    mac.update(value.as_bytes());
    let mut out = hex(&mac.finalize().into_bytes());
    out.truncate(24);
    out
}

/// Every secret a node gets, by name (the token as `RAY_AUTH_TOKEN`), from
/// the configuration and, for a generated token, what the head keeps.
pub fn values<'a>(config: &'a Config, head: &'a HeadSecrets) -> BTreeMap<&'a str, &'a Secret> {
    let mut out: BTreeMap<&str, &Secret> = config
        .cluster
        .env
        .iter()
        .filter_map(|(k, v)| match v {
            EnvValue::Secret(s) => Some((k.as_str(), s)),
            EnvValue::Plain(_) => None,
        })
        .collect();
    match &config.cluster.auth {
        Auth::Token(TokenSource::Given(t)) => {
            out.insert(TOKEN_SECRET_NAME, t);
        }
        Auth::Token(TokenSource::Generated) => {
            if let Some(t) = &head.token {
                out.insert(TOKEN_SECRET_NAME, t);
            }
        }
        Auth::None => {}
    }
    out
}

/// The digests every node should carry, when the head's key is known.
pub fn expected(config: &Config, head: &HeadSecrets) -> Option<BTreeMap<String, String>> {
    let key = head.digest_key.as_deref()?;
    Some(
        values(config, head)
            .into_iter()
            .map(|(name, s)| (name.to_string(), digest(key, name, s.expose())))
            .collect(),
    )
}

/// `NAME=digest,...`, sorted: the `io.seedcore.secrets` label.
pub fn label(digests: &BTreeMap<String, String>) -> String {
    digests
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Reads the `io.seedcore.secrets` label (absent: no secrets).
pub fn parse_label(text: Option<&str>) -> BTreeMap<String, String> {
    text.unwrap_or_default()
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Names whose digests differ (added, removed or changed), sorted.
pub fn changed(
    carried: &BTreeMap<String, String>,
    expected: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut names: Vec<String> = carried
        .keys()
        .chain(expected.keys())
        .filter(|k| carried.get(*k) != expected.get(*k))
        .cloned()
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The secret environment as a node reads it: NUL-separated `KEY=value`
/// records (values hold no NUL: validation refuses it).
pub fn env_file(config: &Config) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in &config.cluster.env {
        if let EnvValue::Secret(s) = v {
            out.extend_from_slice(k.as_bytes());
            out.push(b'=');
            out.extend_from_slice(s.expose().as_bytes());
            out.push(0);
        }
    }
    out
}

/// Random bytes from the operating system.
pub fn random(n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).expect("the operating system provides random bytes");
    bytes
}

/// A new Ray token: 64 hex digits, as Ray generates them.
pub fn new_token() -> Secret {
    Secret::new(SecretOrigin::Inline, hex(&random(32)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_keyed_and_name_bound() {
        let a = digest(b"k1", "HF_TOKEN", "hf_secret");
        assert_eq!(a.len(), 24);
        assert_ne!(a, digest(b"k2", "HF_TOKEN", "hf_secret"));
        assert_ne!(a, digest(b"k1", "OTHER", "hf_secret"));
        assert_ne!(a, digest(b"k1", "HF_TOKEN", "hf_secreT"));
        assert!(!a.contains("hf_secret"));
    }

    #[test]
    fn labels_round_trip_and_changes_are_named() {
        let mut m = BTreeMap::new();
        m.insert("A".to_string(), "1".to_string());
        m.insert("B".to_string(), "2".to_string());
        let text = label(&m);
        assert_eq!(text, "A=1,B=2");
        assert_eq!(parse_label(Some(&text)), m);
        let mut n = m.clone();
        n.insert("B".to_string(), "3".to_string());
        n.insert("C".to_string(), "4".to_string());
        n.remove("A");
        assert_eq!(changed(&m, &n), ["A", "B", "C"]);
        assert!(changed(&m, &m).is_empty());
        assert!(parse_label(None).is_empty());
    }
}
