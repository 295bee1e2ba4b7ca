//! Which containers belong to this cluster.
//!
//! A cluster is its name plus an identity (`io.seedcore.cluster-id`), so that
//! two configurations that keep the same name but have different heads never
//! touch each other's nodes. The identity is, in order:
//! 1. `cluster.id` when the configuration pins it;
//! 2. the identity of our head container found on the declared head host
//!    (the same machine reached under a new address, `HEAD_IP_OVERRIDE`);
//! 3. derived from the name and the declared head host.
//!
//! A container is ours when its labels carry our name and identity and its
//! name is the one its labels imply. Containers of our name with another
//! identity belong to another cluster: never removed, never changed, named in
//! the plan. Containers whose labels disagree with their name are not ours
//! either (a forged or copied label set).

use crate::config::Config;
use crate::model::{
    hex, ClusterIdentity, HostName, ObservedContainer, ObservedState, Role, LABEL_HEAD,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The identity a fresh cluster of this configuration gets.
pub fn derived_id(name: &str, head: &HostName) -> String {
    let digest = Sha256::digest(format!("{name}\0{head}").as_bytes());
    hex(&digest)[..12].to_string()
}

/// The identity from the configuration alone (no observation).
pub fn configured(config: &Config) -> ClusterIdentity {
    ClusterIdentity {
        name: config.cluster.name.clone(),
        id: config
            .cluster
            .id
            .clone()
            .unwrap_or_else(|| derived_id(&config.cluster.name, &config.head.host)),
        head: config.head.host.clone(),
    }
}

/// The identity, taking the observed head into account (rule 2 above).
pub fn resolve(config: &Config, observed: &ObservedState) -> ClusterIdentity {
    let mut identity = configured(config);
    if config.cluster.id.is_some() {
        return identity;
    }
    let head_name = crate::topology::head_name(&config.cluster.name);
    let head = observed
        .hosts
        .get(&config.head.host)
        .into_iter()
        .flat_map(|o| &o.containers)
        .find(|c| {
            c.name == head_name.0
                && c.cluster() == Some(identity.name.as_str())
                && c.node_label() == Some(head_name.as_str())
                && c.role() == Role::Head
        });
    if let Some(id) = head.and_then(|c| c.cluster_id()) {
        if valid_id(id) {
            identity.id = id.to_string();
        }
    }
    identity
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// How a container relates to this cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// Ours: seedcore may change or remove it.
    Ours,
    /// Another cluster of the same name (its identity).
    OtherCluster(String),
    /// Labelled with our name and identity, but its name is not the one its
    /// labels imply: never touched.
    Mislabelled,
    /// Labelled for another cluster name, or not by seedcore.
    Foreign,
}

/// Classifies a container against an identity.
pub fn owner(identity: &ClusterIdentity, c: &ObservedContainer) -> Owner {
    if c.cluster() != Some(identity.name.as_str()) {
        return Owner::Foreign;
    }
    match c.cluster_id() {
        // Containers of seedcore before identities: adopted by name.
        None => {}
        Some(id) if id == identity.id => {}
        Some(id) => return Owner::OtherCluster(id.to_string()),
    }
    if c.node_label() != Some(c.name.as_str()) {
        return Owner::Mislabelled;
    }
    Owner::Ours
}

/// Another cluster of our name seen on the hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OtherCluster {
    pub id: String,
    /// Where its head runs (its labels say), when known.
    pub head: Option<String>,
    pub nodes: usize,
    pub hosts: Vec<HostName>,
}

/// Every other cluster of our name on the observed hosts, by identity.
pub fn others(identity: &ClusterIdentity, observed: &ObservedState) -> Vec<OtherCluster> {
    let mut by_id: BTreeMap<String, OtherCluster> = BTreeMap::new();
    for (host, obs) in &observed.hosts {
        for c in &obs.containers {
            if let Owner::OtherCluster(id) = owner(identity, c) {
                let entry = by_id.entry(id.clone()).or_insert_with(|| OtherCluster {
                    id,
                    head: None,
                    nodes: 0,
                    hosts: Vec::new(),
                });
                entry.nodes += 1;
                if !entry.hosts.contains(host) {
                    entry.hosts.push(host.clone());
                }
                if entry.head.is_none() {
                    entry.head = c.labels.get(LABEL_HEAD).cloned();
                }
            }
        }
    }
    by_id.into_values().collect()
}

/// Our containers on a host.
pub fn ours<'a>(
    identity: &'a ClusterIdentity,
    containers: &'a [ObservedContainer],
) -> impl Iterator<Item = &'a ObservedContainer> + 'a {
    containers
        .iter()
        .filter(move |c| owner(identity, c) == Owner::Ours)
}

/// Ports our running nodes have (what lowering keeps).
pub fn kept_ports(
    identity: &ClusterIdentity,
    observed: &ObservedState,
) -> crate::topology::KeptPorts {
    let mut out = crate::topology::KeptPorts::default();
    for (host, obs) in &observed.hosts {
        for c in ours(identity, &obs.containers) {
            if let Some(ports) = c.recorded_ports() {
                out.nodes.insert(
                    (host.clone(), crate::model::NodeName(c.name.clone())),
                    ports,
                );
            }
        }
        if !obs.listening.is_empty() {
            out.busy
                .insert(host.clone(), obs.listening.iter().copied().collect());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        HostObservation, ObservedContainer, LABEL_CLUSTER, LABEL_CLUSTER_ID, LABEL_NODE, LABEL_ROLE,
    };

    fn config(head: &str) -> Config {
        let text = format!("[cluster]\nname = \"c\"\n[head]\nhost = \"{head}\"\n");
        crate::config::parse("c.toml", &text, &[]).unwrap().config
    }

    fn container(name: &str, labels: &[(&str, &str)]) -> ObservedContainer {
        ObservedContainer {
            name: name.to_string(),
            id: format!("id-{name}"),
            image: "ray".to_string(),
            state: "running".to_string(),
            exit_code: None,
            created: None,
            image_id: None,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn observed(host: &str, containers: Vec<ObservedContainer>) -> ObservedState {
        let mut o = ObservedState::new();
        o.hosts.insert(
            HostName(host.to_string()),
            HostObservation {
                reachable: true,
                error: None,
                engine: None,
                images: None,
                layers: None,
                containers,
                listening: Vec::new(),
            },
        );
        o
    }

    #[test]
    fn the_head_found_on_the_declared_host_keeps_its_identity() {
        // The same machine under a new address (HEAD_IP_OVERRIDE): its head
        // carries the identity derived from the old address.
        let old = derived_id("c", &HostName("10.0.0.1".to_string()));
        let head = container(
            "c-ray-head",
            &[
                (LABEL_CLUSTER, "c"),
                (LABEL_CLUSTER_ID, &old),
                (LABEL_NODE, "c-ray-head"),
                (LABEL_ROLE, "head"),
            ],
        );
        let identity = resolve(&config("10.0.0.9"), &observed("10.0.0.9", vec![head]));
        assert_eq!(identity.id, old);
        // Elsewhere, or without it, the identity is derived from the head host.
        let identity = resolve(&config("10.0.0.9"), &observed("10.0.0.9", vec![]));
        assert_eq!(
            identity.id,
            derived_id("c", &HostName("10.0.0.9".to_string()))
        );
        assert_ne!(identity.id, old);
    }

    #[test]
    fn owners_are_told_apart_by_name_identity_and_node_label() {
        let me = configured(&config("10.0.0.1"));
        let ours = [
            (LABEL_CLUSTER, "c"),
            (LABEL_CLUSTER_ID, me.id.as_str()),
            (LABEL_NODE, "c-ray-head"),
        ];
        assert_eq!(owner(&me, &container("c-ray-head", &ours)), Owner::Ours);
        // A copy of our labels on another container is not ours.
        assert_eq!(
            owner(&me, &container("impostor", &ours)),
            Owner::Mislabelled
        );
        let theirs = [
            (LABEL_CLUSTER, "c"),
            (LABEL_CLUSTER_ID, "other"),
            (LABEL_NODE, "c-ray-head"),
        ];
        assert_eq!(
            owner(&me, &container("c-ray-head", &theirs)),
            Owner::OtherCluster("other".to_string())
        );
        assert_eq!(
            owner(&me, &container("c-ray-head", &[(LABEL_CLUSTER, "d")])),
            Owner::Foreign
        );
        assert_eq!(owner(&me, &container("x", &[])), Owner::Foreign);
    }
}
