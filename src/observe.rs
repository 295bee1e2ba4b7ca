//! Observing the hosts: what each engine runs that concerns this cluster
//! (containers carrying our labels, and any container holding a name we need),
//! which images it has, and its engine's size. All hosts at once, bounded;
//! a host that cannot be observed is recorded as such, not fatal to the rest.

use crate::engine::DockerBackend;
use crate::model::{
    DesiredState, EngineInfo, HostName, HostObservation, ObservedContainer, ObservedState,
};
use futures_util::stream::{self, StreamExt};
use std::collections::BTreeMap;

/// Observes one host through its backend.
pub async fn observe_host<B: DockerBackend>(
    backend: &B,
    desired: &DesiredState,
    host: &HostName,
) -> HostObservation {
    let names: Vec<String> = desired.nodes.iter().map(|n| n.name.0.clone()).collect();
    let result = async {
        let engine = backend.describe().await?;
        let containers = backend
            .list_containers(&desired.cluster.name, &names)
            .await?;
        let mut images = BTreeMap::new();
        if let Some(needed) = desired.images_by_host().get(host) {
            for image in needed {
                images.insert(image.clone(), backend.image_id(image).await?);
            }
        }
        Ok::<_, crate::engine::BackendError>(HostObservation {
            reachable: true,
            error: None,
            engine: Some(engine),
            images: Some(images),
            layers: None,
            containers,
            listening: Vec::new(),
        })
    }
    .await;
    result.unwrap_or_else(|e| unreachable_host(e.to_string()))
}

/// Whether a container concerns this cluster: labelled with its name, or
/// holding the name of one of its nodes.
pub fn concerns(c: &ObservedContainer, cluster: &str, names: &[String]) -> bool {
    c.labels
        .get(crate::model::LABEL_CLUSTER)
        .map(String::as_str)
        == Some(cluster)
        || names.contains(&c.name)
}

/// Observes one host whose engine was described when connecting: every
/// container is listed once (those that concern the cluster are kept in the
/// observation; all are returned, for preflight to name port holders), and
/// the images its nodes need are looked up at the same time.
pub async fn observe_described<B: DockerBackend>(
    backend: &B,
    engine: EngineInfo,
    desired: &DesiredState,
    host: &HostName,
) -> (HostObservation, Vec<ObservedContainer>) {
    let names: Vec<String> = desired.nodes.iter().map(|n| n.name.0.clone()).collect();
    let needed: Vec<String> = desired
        .images_by_host()
        .get(host)
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let images = futures_util::future::try_join_all(needed.iter().map(|image| async move {
        Ok::<_, crate::engine::BackendError>((image.clone(), backend.image_id(image).await?))
    }));
    let (all, images) = tokio::join!(backend.all_containers(), images);
    match (all, images) {
        (Ok(all), Ok(images)) => {
            let containers = all
                .iter()
                .filter(|c| concerns(c, &desired.cluster.name, &names))
                .cloned()
                .collect();
            let observation = HostObservation {
                reachable: true,
                error: None,
                engine: Some(engine),
                images: Some(images.into_iter().collect()),
                layers: None,
                containers,
                listening: Vec::new(),
            };
            (observation, all)
        }
        (Err(e), _) | (_, Err(e)) => (unreachable_host(e.to_string()), Vec::new()),
    }
}

/// A host that could not be observed, and why.
pub fn unreachable_host(error: String) -> HostObservation {
    HostObservation {
        reachable: false,
        error: Some(error),
        engine: None,
        images: None,
        layers: None,
        containers: Vec::new(),
        listening: Vec::new(),
    }
}

/// Observes every host: `backends` holds a backend per reachable host, or why
/// it could not be reached.
pub async fn observe<B: DockerBackend>(
    backends: &BTreeMap<HostName, Result<&B, String>>,
    desired: &DesiredState,
    parallel: usize,
) -> ObservedState {
    let hosts: Vec<(HostName, HostObservation)> = stream::iter(backends.iter())
        .map(|(host, backend)| async move {
            let obs = match backend {
                Ok(b) => {
                    crate::timings::span(host.as_str(), "observed", observe_host(*b, desired, host))
                        .await
                }
                Err(why) => unreachable_host(why.clone()),
            };
            (host.clone(), obs)
        })
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    let mut observed = ObservedState::new();
    observed.hosts = hosts.into_iter().collect();
    observed.observed_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs() as i64);
    observed
}
