//! The operations behind the commands, as library functions: each takes the
//! loaded configuration and one options struct, talks to the hosts through a
//! [`session::Hosts`], emits progress to a [`crate::apply::Reporter`] and
//! returns typed results or an [`Error`]. The CLI turns arguments into these
//! calls, prompts and prints; nothing here reads stdin or writes stdout.

pub mod apply;
pub mod session;
pub mod status;

use crate::config::{ConfigErrors, Loaded};
use crate::model::{DesiredState, ObservedState};
use crate::plan::artifact::ConfigDigest;
use crate::plan::PlanError;

/// Why an operation could not do its work. Each message is whole: what
/// happened, and a `hint:` with the fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration (or its lowering against the hosts) is invalid.
    #[error("{0}")]
    Config(ConfigErrors),
    /// No plan can be made from what was observed.
    #[error("{0}")]
    Plan(PlanError),
    /// Hosts could not be reached or observed as needed.
    #[error("{0}")]
    Hosts(String),
    /// A saved plan cannot be applied.
    #[error("{0}")]
    SavedPlan(String),
    /// Steps failed, or the cluster did not come whole.
    #[error("{0}")]
    Failed(String),
    /// Another operator holds the cluster lock, or it cannot be taken.
    #[error("{0}")]
    Locked(String),
    /// A signal stopped the apply: what was done, and the signal.
    #[error("{text}")]
    Interrupted { text: String, signal: i32 },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Lowers the configuration for what was observed: the cluster's identity
/// and the ports running nodes keep. Pure.
pub fn settle(loaded: &Loaded, observed: &ObservedState) -> Result<DesiredState> {
    let identity = crate::ownership::resolve(&loaded.config, observed);
    let kept = crate::ownership::kept_ports(&identity, observed);
    crate::topology::lower(&loaded.config, &identity, &kept)
        .map_err(|e| Error::Config(loaded.source.errors(e)))
}

/// What a saved plan was made from: the configuration's text and overrides.
pub fn config_digest(loaded: &Loaded) -> ConfigDigest {
    use sha2::Digest;
    ConfigDigest {
        path: loaded.source.path.clone(),
        sha256: crate::model::hex(&sha2::Sha256::digest(loaded.source.text.as_bytes())),
        overrides: loaded
            .source
            .overrides()
            .iter()
            // A secret's value is never kept: its change is seen through
            // the plan's keyed digests instead.
            .map(|o| {
                if o.sensitive {
                    format!("{}={}", o.key, crate::model::SENSITIVE)
                } else {
                    format!("{}={}", o.key, o.value)
                }
            })
            .collect(),
        environment: loaded.environment.clone(),
    }
}
