//! Ray's own view of the cluster: its node list (from the dashboard's state
//! API, or `ray list nodes` as a fallback) and the one rule for "this node is
//! up" that apply, status and plan share: listed ALIVE under its name, at its
//! address, with its declared CPUs.

use crate::engine::DockerBackend;
use crate::model::{DesiredState, NodeName, NodeSpec};
use std::collections::{BTreeMap, BTreeSet};

pub use crate::model::RayNode;

/// The command that lists Ray's nodes, run inside the head container.
pub fn list_nodes_command() -> Vec<String> {
    [
        "ray", "list", "nodes", "--format", "json", "--limit", "10000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The same list straight from the dashboard's state API (what `ray list
/// nodes` calls), without importing Ray: 0.1 s instead of 2-3 s of Python.
pub fn state_api_command(dashboard_port: u16) -> Vec<String> {
    let script = format!(
        "import json, os, sys, urllib.request\n\
         r = urllib.request.Request('http://127.0.0.1:{dashboard_port}/api/v0/nodes?limit=10000&timeout=10&detail=1')\n\
         p = os.environ.get('RAY_AUTH_TOKEN_PATH')\n\
         if os.environ.get('RAY_AUTH_MODE') == 'token' and p:\n    r.add_header('Authorization', 'Bearer ' + open(p).read().strip())\n\
         d = json.load(urllib.request.urlopen(r, timeout=15))\n\
         if not d.get('result'):\n    sys.exit(d.get('msg') or 'the state API refused')\n\
         print(json.dumps(d['data']['result']['result']))\n"
    );
    vec!["python3".to_string(), "-c".to_string(), script]
}

/// What runs where, from the dashboard's state API (one request per kind:
/// nodes, jobs, live actors, placement groups), as JSON: `{"nodes": {ID:
/// work}, "all": work}`. A job counts on a node when its driver, one of its
/// actors or one of its placement group bundles is there.
pub fn work_command(dashboard_port: u16) -> Vec<String> {
    let script = format!(
        "import json, os, sys, urllib.request\n\
         def get(kind, extra=''):\n\
         \x20   r = urllib.request.Request('http://127.0.0.1:{dashboard_port}/api/v0/' + kind + '?limit=10000&timeout=10&detail=1' + extra)\n\
         \x20   p = os.environ.get('RAY_AUTH_TOKEN_PATH')\n\
         \x20   if os.environ.get('RAY_AUTH_MODE') == 'token' and p:\n\
         \x20       r.add_header('Authorization', 'Bearer ' + open(p).read().strip())\n\
         \x20   d = json.load(urllib.request.urlopen(r, timeout=15))\n\
         \x20   if not d.get('result'):\n\
         \x20       sys.exit(d.get('msg') or 'the state API refused')\n\
         \x20   return d['data']['result']['result']\n\
         nodes = get('nodes')\n\
         jobs = get('jobs')\n\
         actors = get('actors', '&filter_keys=state&filter_predicates=%3D&filter_values=ALIVE')\n\
         pgs = get('placement_groups')\n\
         by_ip = {{}}\n\
         for n in nodes:\n\
         \x20   if n.get('state') == 'ALIVE':\n\
         \x20       by_ip.setdefault(n.get('node_ip'), []).append(n.get('node_id'))\n\
         work = {{}}\n\
         total = {{'jobs': [], 'actors': 0, 'placement_groups': 0}}\n\
         def w(nid):\n\
         \x20   return work.setdefault(nid, {{'jobs': [], 'actors': 0, 'placement_groups': 0}})\n\
         def job(nid, name):\n\
         \x20   if nid and name and name not in w(nid)['jobs']:\n\
         \x20       w(nid)['jobs'].append(name)\n\
         running = {{}}\n\
         for j in jobs:\n\
         \x20   if j.get('status') != 'RUNNING':\n\
         \x20       continue\n\
         \x20   name = str(j.get('submission_id') or j.get('job_id') or '?')\n\
         \x20   running[j.get('job_id')] = name\n\
         \x20   total['jobs'].append(name)\n\
         \x20   nid = j.get('driver_node_id')\n\
         \x20   if not nid:\n\
         \x20       ids = by_ip.get((j.get('driver_info') or {{}}).get('node_ip_address'), [])\n\
         \x20       nid = ids[0] if len(ids) == 1 else None\n\
         \x20   job(nid, name)\n\
         for a in actors:\n\
         \x20   total['actors'] += 1\n\
         \x20   nid = a.get('node_id')\n\
         \x20   if nid:\n\
         \x20       w(nid)['actors'] += 1\n\
         \x20       job(nid, running.get(a.get('job_id')))\n\
         for p in pgs:\n\
         \x20   if p.get('state') == 'REMOVED':\n\
         \x20       continue\n\
         \x20   total['placement_groups'] += 1\n\
         \x20   for nid in set(b.get('node_id') for b in (p.get('bundles') or []) if b.get('node_id')):\n\
         \x20       w(nid)['placement_groups'] += 1\n\
         \x20       job(nid, running.get(p.get('creator_job_id')))\n\
         print(json.dumps({{'nodes': work, 'all': total}}))\n"
    );
    vec!["python3".to_string(), "-c".to_string(), script]
}

/// Reads [`work_command`]'s output; job names are kept to a safe alphabet
/// and length (they come from whoever submitted the job).
pub fn parse_work(stdout: &str) -> Result<crate::model::ClusterWork, String> {
    let start = stdout
        .find('{')
        .ok_or_else(|| format!("no JSON in the state API's answer: {}", tail(stdout, 2)))?;
    let mut work: crate::model::ClusterWork = serde_json::from_str(stdout[start..].trim())
        .map_err(|e| format!("cannot read the state API's answer: {e}"))?;
    clean_work(&mut work);
    Ok(work)
}

/// Keeps job names to a safe alphabet and length: they come from whoever
/// submitted the job, and reach terminals and pull requests.
fn clean_work(work: &mut crate::model::ClusterWork) {
    let clean = |w: &mut crate::model::NodeWork| {
        for j in &mut w.jobs {
            let kept: String = j
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || "-_.:".contains(*c))
                .take(64)
                .collect();
            *j = if kept.is_empty() {
                "?".to_string()
            } else {
                kept
            };
        }
    };
    clean(&mut work.all);
    work.nodes.values_mut().for_each(clean);
}

/// Asks the head what runs on the cluster: the dashboard's state API through
/// the host's loopback, else the same questions from inside the container.
pub async fn work<B: DockerBackend>(
    head: &B,
    container: &str,
    spec: &NodeSpec,
    token: Option<&str>,
) -> Result<crate::model::ClusterWork, String> {
    let port = spec
        .ports
        .head
        .as_ref()
        .map(|h| h.dashboard)
        .ok_or_else(|| "the head has no dashboard port".to_string())?;
    match state_lists(head, port, token).await {
        Ok(lists) => Ok(work_from(&lists)),
        Err(e) if !head.fallback_due(e.answered) => Err(e.message),
        Err(_) => work_by_exec(head, container, port).await,
    }
}

/// The four lists of Ray's state API that say what runs where.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateLists {
    pub nodes: Vec<serde_json::Value>,
    pub jobs: Vec<serde_json::Value>,
    /// Live actors only.
    pub actors: Vec<serde_json::Value>,
    pub placement_groups: Vec<serde_json::Value>,
}

/// A state API path: at most 10,000 entries, Ray's own 10 s deadline.
fn state_path(kind: &str, filter: &str) -> String {
    format!("/api/v0/{kind}?limit=10000&timeout=10&detail=1{filter}")
}

/// Why the state API gave no list through the loopback.
#[derive(Debug, Clone, PartialEq)]
pub struct StateFailure {
    /// The dashboard answered (with an error): it runs, and asking from
    /// inside the head may do better (another token, another Ray).
    pub answered: bool,
    pub message: String,
}

impl std::fmt::Display for StateFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// One state API list through the head host's loopback.
async fn state_list<B: DockerBackend>(
    head: &B,
    port: u16,
    kind: &str,
    filter: &str,
    token: Option<&str>,
) -> Result<Vec<serde_json::Value>, StateFailure> {
    let (status, body) = head
        .loopback_get(port, &state_path(kind, filter), token)
        .await
        .map_err(|e| StateFailure {
            answered: false,
            message: e.to_string(),
        })?;
    parse_state(status, &body).map_err(|message| StateFailure {
        answered: true,
        message,
    })
}

/// Nodes, jobs, live actors and placement groups, asked at once.
pub async fn state_lists<B: DockerBackend>(
    head: &B,
    port: u16,
    token: Option<&str>,
) -> Result<StateLists, StateFailure> {
    let alive = "&filter_keys=state&filter_predicates=%3D&filter_values=ALIVE";
    let (nodes, jobs, actors, placement_groups) = tokio::join!(
        state_list(head, port, "nodes", "", token),
        state_list(head, port, "jobs", "", token),
        state_list(head, port, "actors", alive, token),
        state_list(head, port, "placement_groups", "", token),
    );
    Ok(StateLists {
        nodes: nodes?,
        jobs: jobs?,
        actors: actors?,
        placement_groups: placement_groups?,
    })
}

/// Reads one state API answer: its entries, or what the API said instead.
pub fn parse_state(status: u16, body: &[u8]) -> Result<Vec<serde_json::Value>, String> {
    let text = String::from_utf8_lossy(body);
    if status != 200 {
        return Err(format!(
            "the state API answered HTTP {status}: {}",
            crate::model::excerpt(text.trim(), 200)
        ));
    }
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("cannot read the state API's answer: {e}"))?;
    if value.get("result").and_then(serde_json::Value::as_bool) != Some(true) {
        let msg = value
            .get("msg")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("the state API refused");
        return Err(crate::model::excerpt(msg, 200));
    }
    match value.pointer("/data/result/result") {
        Some(serde_json::Value::Array(items)) => Ok(items.clone()),
        _ => Err("the state API's answer holds no list".to_string()),
    }
}

/// What runs where: a job counts on a node when its driver, one of its
/// actors or one of its placement group bundles is there (named by its
/// submission ID, else its job ID); actors and placement groups count on the
/// nodes they occupy. Removed placement groups and finished jobs do not count.
pub fn work_from(lists: &StateLists) -> crate::model::ClusterWork {
    use crate::model::{ClusterWork, NodeWork};
    use serde_json::Value;
    let text = |v: Option<&Value>| -> Option<String> {
        match v? {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Null | Value::String(_) | Value::Bool(false) => None,
            other => Some(other.to_string()),
        }
    };
    let mut by_ip: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for n in &lists.nodes {
        if n.get("state").and_then(Value::as_str) == Some("ALIVE") {
            if let (Some(ip), Some(id)) = (text(n.get("node_ip")), text(n.get("node_id"))) {
                by_ip.entry(ip).or_default().push(id);
            }
        }
    }
    let mut work = ClusterWork::default();
    fn job(work: &mut ClusterWork, node: Option<String>, name: Option<&String>) {
        if let (Some(node), Some(name)) = (node, name) {
            let w: &mut NodeWork = work.nodes.entry(node).or_default();
            if !w.jobs.contains(name) {
                w.jobs.push(name.clone());
            }
        }
    }
    let mut running: BTreeMap<String, String> = BTreeMap::new();
    for j in &lists.jobs {
        if j.get("status").and_then(Value::as_str) != Some("RUNNING") {
            continue;
        }
        let name = text(j.get("submission_id"))
            .or_else(|| text(j.get("job_id")))
            .unwrap_or_else(|| "?".to_string());
        if let Some(id) = text(j.get("job_id")) {
            running.insert(id, name.clone());
        }
        work.all.jobs.push(name.clone());
        let node = text(j.get("driver_node_id")).or_else(|| {
            let ip = text(j.pointer("/driver_info/node_ip_address"))?;
            match by_ip.get(&ip).map(Vec::as_slice) {
                Some([only]) => Some(only.clone()),
                _ => None,
            }
        });
        job(&mut work, node, Some(&name));
    }
    for a in &lists.actors {
        work.all.actors += 1;
        if let Some(node) = text(a.get("node_id")) {
            work.nodes.entry(node.clone()).or_default().actors += 1;
            let name = text(a.get("job_id")).and_then(|id| running.get(&id).cloned());
            job(&mut work, Some(node), name.as_ref());
        }
    }
    for p in &lists.placement_groups {
        if p.get("state").and_then(Value::as_str) == Some("REMOVED") {
            continue;
        }
        work.all.placement_groups += 1;
        let mut nodes: BTreeSet<String> = BTreeSet::new();
        for b in p
            .get("bundles")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(node) = text(b.get("node_id")) {
                nodes.insert(node);
            }
        }
        let name = text(p.get("creator_job_id")).and_then(|id| running.get(&id).cloned());
        for node in nodes {
            work.nodes.entry(node.clone()).or_default().placement_groups += 1;
            job(&mut work, Some(node), name.as_ref());
        }
    }
    clean_work(&mut work);
    work
}

/// [`work`] from inside the head's container (a Python process there).
async fn work_by_exec<B: DockerBackend>(
    head: &B,
    container: &str,
    port: u16,
) -> Result<crate::model::ClusterWork, String> {
    let out = head
        .exec(container, &work_command(port))
        .await
        .map_err(|e| e.to_string())?;
    if out.exit_code != 0 {
        return Err(format!(
            "the state API did not answer: {}",
            tail(&format!("{}{}", out.stdout, out.stderr), 2)
        ));
    }
    parse_work(&out.stdout)
}

/// Parses `ray list nodes --format json` output (tolerating banners).
pub fn parse_ray_nodes(stdout: &str) -> Result<Vec<RayNode>, String> {
    let start = stdout.find('[').ok_or_else(|| {
        format!(
            "no JSON list in `ray list nodes` output: {}",
            tail(stdout, 3)
        )
    })?;
    serde_json::from_str(&stdout[start..])
        .map_err(|e| format!("cannot read `ray list nodes` output: {e}"))
}

/// Asks the head's Ray for its nodes: the dashboard's state API through the
/// host's loopback (no process started anywhere), else the same API from
/// inside the container, else `ray list nodes` there.
pub async fn nodes<B: DockerBackend>(
    head: &B,
    container: &str,
    spec: &NodeSpec,
    token: Option<&str>,
) -> Result<Vec<RayNode>, String> {
    if let Some(port) = spec.ports.head.as_ref().map(|h| h.dashboard) {
        let asked = state_list(head, port, "nodes", "", token)
            .await
            .and_then(|list| {
                list.into_iter()
                    .map(serde_json::from_value::<RayNode>)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| StateFailure {
                        answered: true,
                        message: format!("cannot read the state API's node list: {e}"),
                    })
            });
        match asked {
            Ok(nodes) => return Ok(nodes),
            // Not now: the dashboard does not answer although the loopback
            // did before (it is not up yet), or the head was asked from
            // inside a moment ago; that costs the head's CPU.
            Err(e) if !head.fallback_due(e.answered) => return Err(e.message),
            Err(_) => {}
        }
    }
    nodes_by_exec(head, container, spec).await
}

/// [`nodes`] from inside the head's container.
async fn nodes_by_exec<B: DockerBackend>(
    head: &B,
    container: &str,
    spec: &NodeSpec,
) -> Result<Vec<RayNode>, String> {
    if let Some(port) = spec.ports.head.as_ref().map(|h| h.dashboard) {
        if let Ok(out) = head.exec(container, &state_api_command(port)).await {
            if out.exit_code == 0 {
                if let Ok(nodes) = parse_ray_nodes(&out.stdout) {
                    return Ok(nodes);
                }
            }
            // Nothing listens on the dashboard's port: `ray list nodes`
            // asks the same dashboard (and starts Ray's whole client).
            if refused(&format!("{}{}", out.stdout, out.stderr)) {
                return Err(format!("the dashboard does not answer on port {port} yet"));
            }
        }
    }
    let out = head
        .exec(container, &list_nodes_command())
        .await
        .map_err(|e| e.to_string())?;
    if out.exit_code != 0 {
        return Err(format!(
            "`ray list nodes` exited {}: {}",
            out.exit_code,
            tail(&format!("{}{}", out.stdout, out.stderr), 3)
        ));
    }
    parse_ray_nodes(&out.stdout)
}

/// Whether Python's output says the connection was refused.
fn refused(output: &str) -> bool {
    output.contains("Connection refused") || output.contains("[Errno 111]")
}

pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// A known Ray failure, recognized in a node's log: the cause in one
/// sentence and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnosis {
    pub cause: &'static str,
    pub fix: &'static str,
}

/// Recognizes the failures Ray prints that no wait should sit out.
pub fn diagnose(log: &str) -> Option<Diagnosis> {
    const KNOWN: &[(&[&str], Diagnosis)] = &[
        (
            &["Address already in use", "is already in use", "Failed to bind", "address already in use"],
            Diagnosis {
                cause: "a port this node needs is held by another process on its host",
                fix: "`seedcore check` names the holder; free the port, or write another one in the configuration",
            },
        ),
        (
            &["WrongClusterID", "wrong cluster ID", "cluster ID mismatch"],
            Diagnosis {
                cause: "the node reached a GCS of another Ray cluster at the head's address",
                fix: "another cluster listens on the head's GCS port; `seedcore check` names it; give this cluster other ports or stop the other one",
            },
        ),
        (
            &["No node info found for head node"],
            Diagnosis {
                cause: "the GCS at the head's address does not know this cluster's head (another cluster, or a head that restarted)",
                fix: "`seedcore status` shows the head; `seedcore restart head` brings the cluster up again",
            },
        ),
        (
            &["UNAUTHENTICATED", "Unauthenticated", "authentication token", "Invalid auth token"],
            Diagnosis {
                cause: "Ray refused the node's authentication token",
                fix: "every node must carry the same token (`RAY_AUTH_MODE` and the token file); `seedcore plan` shows nodes whose token differs",
            },
        ),
    ];
    KNOWN
        .iter()
        .find(|(needles, _)| needles.iter().any(|n| log.contains(n)))
        .map(|(_, d)| d.clone())
}

/// Whether Ray's entry `n` is `spec` up: ALIVE under its name, at its
/// address, with its declared CPUs.
pub fn is_up(n: &RayNode, spec: &NodeSpec) -> bool {
    n.node_name == spec.name.0
        && n.node_ip == spec.node_ip
        && n.is_alive()
        && (n.cpus() - f64::from(spec.cpus)).abs() < 0.01
}

/// Declared nodes Ray does not list ALIVE with their CPUs, with why.
pub fn missing_nodes(desired: &DesiredState, nodes: &[RayNode]) -> Vec<(NodeName, String)> {
    desired
        .nodes
        .iter()
        .filter_map(|spec| {
            if nodes.iter().any(|n| is_up(n, spec)) {
                return None;
            }
            let alive = nodes
                .iter()
                .find(|n| n.node_name == spec.name.0 && n.node_ip == spec.node_ip && n.is_alive());
            match alive {
                Some(n) if (n.cpus() - f64::from(spec.cpus)).abs() < 0.01 => None,
                Some(n) => Some((
                    spec.name.clone(),
                    format!("ALIVE with {} CPUs, {} declared", n.cpus(), spec.cpus),
                )),
                None => Some((
                    spec.name.clone(),
                    match nodes.iter().find(|n| n.node_name == spec.name.0) {
                        Some(n) => format!("listed {}", n.state),
                        None => "not in Ray's node list".to_string(),
                    },
                )),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_failures_are_named() {
        let d = diagnose("[2026] raylet: bind: Address already in use (port 8076)").unwrap();
        assert!(d.cause.contains("port"));
        assert!(diagnose("ray.exceptions.RpcError: WrongClusterID").is_some());
        assert!(diagnose("Ray runtime started.").is_none());
    }

    #[test]
    fn ray_nodes_parse_past_banners() {
        let out = "2026-01-01 WARNING something\n[{\"node_id\":\"a\",\"node_ip\":\"10.0.0.1\",\"node_name\":\"x\",\"state\":\"ALIVE\",\"resources_total\":{\"CPU\":2.0,\"memory\":\"7.036 GiB\"}}]";
        let nodes = parse_ray_nodes(out).unwrap();
        assert_eq!(nodes[0].cpus(), 2.0);
        assert!(nodes[0].is_alive());
        assert!(parse_ray_nodes("nothing").is_err());
    }

    fn lists() -> StateLists {
        let v = |s: &str| -> Vec<serde_json::Value> { serde_json::from_str(s).unwrap() };
        StateLists {
            nodes: v(r#"[{"node_id":"H","node_ip":"10.0.0.1","state":"ALIVE"},
                         {"node_id":"W","node_ip":"10.0.0.2","state":"ALIVE"},
                         {"node_id":"W2","node_ip":"10.0.0.2","state":"ALIVE"},
                         {"node_id":"D","node_ip":"10.0.0.3","state":"DEAD"}]"#),
            jobs: v(
                r#"[{"job_id":"01000000","submission_id":"train-42","status":"RUNNING","driver_node_id":"H"},
                        {"job_id":"02000000","submission_id":null,"status":"RUNNING","driver_info":{"node_ip_address":"10.0.0.1"}},
                        {"job_id":"03000000","submission_id":"old","status":"SUCCEEDED","driver_node_id":"W"},
                        {"job_id":"04000000","submission_id":"evil\u001b[31m$(rm)","status":"RUNNING","driver_info":{"node_ip_address":"10.0.0.2"}}]"#,
            ),
            actors: v(
                r#"[{"actor_id":"a1","node_id":"W","job_id":"01000000","state":"ALIVE"},
                          {"actor_id":"a2","node_id":"W","job_id":"01000000","state":"ALIVE"},
                          {"actor_id":"a3","node_id":null,"job_id":"02000000","state":"ALIVE"}]"#,
            ),
            placement_groups: v(
                r#"[{"placement_group_id":"p1","creator_job_id":"02000000","state":"CREATED",
                                     "bundles":[{"node_id":"W2"},{"node_id":"W2"},{"node_id":"W"}]},
                                    {"placement_group_id":"p2","creator_job_id":"01000000","state":"REMOVED",
                                     "bundles":[{"node_id":"H"}]}]"#,
            ),
        }
    }

    #[test]
    fn work_counts_jobs_actors_and_placement_groups_where_they_run() {
        let work = work_from(&lists());
        let json = serde_json::to_value(&work).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "nodes": {
                    "H": {"jobs": ["train-42", "02000000"], "actors": 0, "placement_groups": 0},
                    // Two actors of train-42, a bundle of job 02.
                    "W": {"jobs": ["train-42", "02000000"], "actors": 2, "placement_groups": 1},
                    // Both of p1's bundles count once.
                    "W2": {"jobs": ["02000000"], "actors": 0, "placement_groups": 1}
                },
                // The driver on 10.0.0.2 is not pinned: two ALIVE nodes share that address.
                "all": {"jobs": ["train-42", "02000000", "evil31mrm"], "actors": 3, "placement_groups": 1}
            })
        );
    }

    #[test]
    fn a_refused_dashboard_is_recognized_in_pythons_words() {
        assert!(refused(
            "urllib.error.URLError: <urlopen error [Errno 111] Connection refused>"
        ));
        assert!(!refused(
            "urllib.error.HTTPError: HTTP Error 401: Unauthorized"
        ));
    }

    #[test]
    fn state_answers_are_read_or_refused_with_what_the_api_said() {
        let ok = br#"{"result": true, "msg": "", "data": {"result": {"total": 1, "result": [{"node_id": "a"}]}}}"#;
        assert_eq!(parse_state(200, ok).unwrap().len(), 1);
        let refused = br#"{"result": false, "msg": "Failed to retrieve nodes", "data": {}}"#;
        assert_eq!(
            parse_state(200, refused).unwrap_err(),
            "Failed to retrieve nodes"
        );
        let unauthorized = parse_state(401, b"Unauthorized: missing token").unwrap_err();
        assert_eq!(
            unauthorized,
            "the state API answered HTTP 401: Unauthorized: missing token"
        );
        assert!(parse_state(200, b"<html>").is_err());
        assert!(parse_state(200, br#"{"result": true, "data": {}}"#).is_err());
    }
}
