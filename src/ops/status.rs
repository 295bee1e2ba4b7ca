//! `status`: every declared node's container as its host reports it, and
//! Ray's own view of it, judged by the one rule apply waits on
//! ([`crate::ray::is_up`]).

use super::session;
use super::Result;
use crate::config::Loaded;
use crate::engine::DockerBackend;
use crate::model::{DesiredState, HostName, Role};
use crate::ownership::{self, Owner};
use crate::ray::{self, RayNode};
use futures_util::stream::{self, StreamExt};
use serde::Serialize;

/// One declared node as status reports it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub node: String,
    pub host: String,
    pub role: Role,
    /// `running`, `exited (137)`, `missing`, `host unreachable`...
    pub container: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    pub restarts: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Ray's state for this node (`ALIVE`, `DEAD`, or `not listed`).
    pub ray: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ray_cpus: Option<f64>,
    pub ok: bool,
}

/// The whole cluster as status reports it.
#[derive(Debug, Clone)]
pub struct Report {
    pub desired: DesiredState,
    pub nodes: Vec<NodeStatus>,
    /// Ray's node list, or why it could not be had.
    pub ray: std::result::Result<Vec<RayNode>, String>,
    /// Warnings about hosts that could not be reached.
    pub warnings: Vec<String>,
}

impl Report {
    /// Every declared node runs and Ray lists it up.
    pub fn whole(&self) -> bool {
        self.nodes.iter().all(|s| s.ok)
    }
}

/// Connects, observes (hosts that cannot be reached are reported as such)
/// and asks Ray.
pub async fn gather(
    loaded: &Loaded,
    fresh: &DesiredState,
    parallel: Option<usize>,
) -> Result<Report> {
    let (hosts, observed, desired) = session::open(loaded, fresh, parallel, true).await?;
    let head = desired.head();
    let ours = |host: &HostName, name: &str| {
        observed.hosts.get(host).and_then(|o| {
            o.containers
                .iter()
                .find(|c| c.name == name && ownership::owner(&desired.cluster, c) == Owner::Ours)
        })
    };
    let ray: std::result::Result<Vec<RayNode>, String> = match (
        hosts.connections.get(&head.host),
        ours(&head.host, head.name.as_str()),
    ) {
        // Asked moments ago, when the hosts were observed.
        (Some(_), Some(_)) if observed.ray.is_some() => {
            Ok(observed.ray.clone().unwrap_or_default())
        }
        (Some(c), Some(h)) => {
            let token = observed.head_secrets.ray_token(&loaded.config);
            ray::nodes(&c.backend, &h.id, head, token.map(|t| t.expose())).await
        }
        (Some(_), None) => Err(format!("`{}` has no container", head.name)),
        (None, _) => Err(format!("head host `{}` unreachable", head.host)),
    };
    let parallel = parallel.unwrap_or(loaded.config.ssh.max_parallel).max(1);
    let nodes: Vec<NodeStatus> = stream::iter(desired.nodes.iter())
        .map(|spec| {
            let conn = hosts.connections.get(&spec.host);
            let failure = hosts.failures.get(&spec.host);
            let ray = &ray;
            let listed = observed
                .hosts
                .get(&spec.host)
                .and_then(|o| o.containers.iter().find(|c| c.name == spec.name.0));
            let ours = ours(&spec.host, spec.name.as_str()).is_some();
            async move {
                let (container, started_at, restarts, image) = match (conn, failure) {
                    (Some(c), _) => {
                        let details = match listed {
                            Some(l) => c.backend.inspect_container(&l.id).await.ok().flatten(),
                            None => None,
                        };
                        match (listed, details) {
                            (Some(l), Some(d)) => {
                                let state = match (l.state.as_str(), l.exit_code) {
                                    ("exited", Some(code)) => format!("exited ({code})"),
                                    (s, _) => s.to_string(),
                                };
                                (
                                    if ours {
                                        state
                                    } else {
                                        format!("{state}, NOT seedcore's")
                                    },
                                    d.started_at,
                                    d.restart_count,
                                    Some(l.image.clone()),
                                )
                            }
                            _ => ("missing".to_string(), None, 0, None),
                        }
                    }
                    (None, Some(e)) => (
                        if e.kind == crate::transport::TransportErrorKind::Unreachable {
                            format!("host unreachable: {}", e.summary())
                        } else {
                            format!("engine not answering: {}", e.summary())
                        },
                        None,
                        0,
                        None,
                    ),
                    (None, None) => ("host unreachable".to_string(), None, 0, None),
                };
                let (ray_state, ray_cpus, up) = match ray {
                    Ok(nodes) => {
                        let up = nodes.iter().find(|n| ray::is_up(n, spec));
                        let seen = up.or_else(|| {
                            nodes
                                .iter()
                                .filter(|n| n.node_name == spec.name.0)
                                .max_by_key(|n| n.is_alive())
                        });
                        match seen {
                            Some(n) => (n.state.clone(), Some(n.cpus()), up.is_some()),
                            None => ("not listed".to_string(), None, false),
                        }
                    }
                    Err(_) => ("unknown".to_string(), None, false),
                };
                NodeStatus {
                    node: spec.name.0.clone(),
                    host: spec.host.0.clone(),
                    role: spec.role,
                    ok: container == "running" && up,
                    container,
                    started_at,
                    restarts,
                    image,
                    ray: ray_state,
                    ray_cpus,
                }
            }
        })
        .buffered(parallel)
        .collect()
        .await;
    let warnings = hosts.warnings();
    hosts.close().await;
    Ok(Report {
        desired,
        nodes,
        ray,
        warnings,
    })
}
