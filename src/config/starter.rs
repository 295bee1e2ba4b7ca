//! `seedcore init`'s file: a commented `seedcore.toml` with Ray's port table
//! written out as defaults and token authentication on. Pure: the text from
//! the options; the command line writes it (and refuses to overwrite).

use super::*;

/// What `seedcore init` was told.
#[derive(Debug, Clone, Default)]
pub struct Starter {
    /// The head's host (`--head`); `local` when not given.
    pub head: Option<String>,
    /// The worker hosts (`--workers`), one worker each.
    pub workers: Vec<String>,
    /// CPUs of every node (`--cpus`); 1 when not given.
    pub cpus: Option<i64>,
}

/// The most CPUs a node may declare (the loader's limit too).
const MAX_CPUS: i64 = 1024;

/// The starter file's text, its hosts checked by the loader's own rules.
/// The text is then loaded like any configuration, so what `init` writes
/// always passes `seedcore validate`.
pub fn starter(options: &Starter) -> Result<String, ConfigErrors> {
    let mut errors = Vec::new();
    let bad_host = |flag: &str, host: &str| {
        ConfigError {
        message: format!("`{host}` is not a valid host"),
        location: Some(Location::Override(format!("{flag} {host}"))),
        hint: Some(
            "write an IP address (`10.0.0.5`), a host name (`node-1.example`), or `local` for this machine"
                .to_string(),
        ),
    }
    };
    let head = options.head.clone().unwrap_or_else(|| "local".to_string());
    if let Err(why) = check_host(&head) {
        let mut e = bad_host("--head", &head);
        e.message = format!("{}: {why}", e.message);
        errors.push(e);
    }
    let mut seen = std::collections::BTreeSet::new();
    for w in &options.workers {
        if let Err(why) = check_host(w) {
            let mut e = bad_host("--workers", w);
            e.message = format!("{}: {why}", e.message);
            errors.push(e);
        } else if !seen.insert(w.as_str()) {
            errors.push(ConfigError {
                message: format!("`{w}` is listed twice in `--workers`"),
                location: Some(Location::Override(format!("--workers {w}"))),
                hint: Some("name each host once: one worker runs on each".to_string()),
            });
        }
    }
    let cpus = options.cpus.unwrap_or(1);
    if !(1..=MAX_CPUS).contains(&cpus) {
        errors.push(ConfigError {
            message: format!("`--cpus` is {cpus}; a node has 1 to {MAX_CPUS} CPUs"),
            location: Some(Location::Override(format!("--cpus {cpus}"))),
            hint: Some(
                "pass the number of CPUs Ray may use on each node, e.g. `--cpus 4`".to_string(),
            ),
        });
    }
    if head == "local" && options.workers.iter().any(|w| w != "local") {
        errors.push(ConfigError {
            message:
                "the workers run on other hosts, but the head is `local` (this machine), which they cannot reach"
                    .to_string(),
            location: None,
            hint: Some("pass the head's address, e.g. `--head 10.0.0.5`".to_string()),
        });
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }

    let text = render(&head, &options.workers, cpus);
    // What init writes must load: a failure here is seedcore's own bug.
    parse("seedcore.toml", &text, &[])?;
    Ok(text)
}

/// `KEY = VALUE` padded so that comments line up.
fn line(out: &mut String, key: &str, value: &str, comment: &str) {
    let assignment = format!("{key} = {value}");
    if comment.is_empty() {
        out.push_str(&assignment);
    } else {
        out.push_str(&format!("{assignment:<34} # {comment}"));
    }
    out.push('\n');
}

fn quoted(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

fn render(head: &str, workers: &[String], cpus: i64) -> String {
    use defaults::*;
    let mut out = String::new();
    out.push_str(
        "# seedcore.toml: a Ray cluster of Docker containers across hosts (written by `seedcore init`).\n\
         # `seedcore validate` checks it, `seedcore plan` shows what would change, `seedcore apply` makes it so.\n\
         # Every key is in the README (\"The configuration\"); `seedcore schema` prints the file's JSON Schema.\n\
         # Ports below are Ray's defaults, written out so that firewalls can be opened for them.\n\n",
    );
    out.push_str("[cluster]\n");
    line(
        &mut out,
        "name",
        &quoted(CLUSTER_NAME),
        "container-name prefix and `io.seedcore.cluster` label",
    );
    line(
        &mut out,
        "image",
        &quoted(IMAGE),
        "the image of every node; hosts pull it",
    );
    line(
        &mut out,
        "auth",
        &quoted("token"),
        "Ray token authentication: generated on the first apply, kept by the head",
    );
    out.push_str("# token_file = \"~/.ray/team.token\" # or bring your own token (or `token_env = \"NAME\"`)\n\n");

    out.push_str("[ssh]\n");
    out.push_str(
        "# user = \"ubuntu\"                  # default: your ssh config, else the current user\n",
    );
    out.push_str("# identity_file = \"~/.ssh/id_ed25519\"\n");
    line(
        &mut out,
        "known_hosts",
        &quoted("strict"),
        "or \"accept-new\"; checking cannot be turned off",
    );
    out.push('\n');

    out.push_str("[head]\n");
    line(
        &mut out,
        "host",
        &quoted(head),
        "SSH address of the head; workers join <host>:<gcs_port>",
    );
    line(
        &mut out,
        "cpus",
        &cpus.to_string(),
        "Ray's --num-cpus and the container's CPU limit",
    );
    line(
        &mut out,
        "gcs_port",
        &GCS_PORT.to_string(),
        "the GCS: workers join here",
    );
    line(
        &mut out,
        "client_server_port",
        &CLIENT_SERVER_PORT.to_string(),
        "ray://<head>:10001 for client-mode scripts",
    );
    line(
        &mut out,
        "dashboard_port",
        &DASHBOARD_PORT.to_string(),
        "the dashboard (token-protected)",
    );
    line(
        &mut out,
        "serve_port",
        &SERVE_PORT.to_string(),
        "Ray Serve's HTTP proxy; `serve = false` turns it off",
    );
    line(
        &mut out,
        "object_manager_port",
        &OBJECT_MANAGER_PORT.to_string(),
        "",
    );
    line(
        &mut out,
        "node_manager_port",
        &NODE_MANAGER_PORT.to_string(),
        "",
    );
    line(
        &mut out,
        "worker_ports",
        &quoted(HEAD_WORKER_PORTS),
        "the head's own worker processes",
    );
    out.push('\n');

    if workers.is_empty() {
        out.push_str("# No workers yet: only the head runs. Add a group, e.g.\n");
        out.push_str("# [workers.remote]\n");
        out.push_str("# hosts = [\"10.0.0.6\", \"10.0.0.7\"]\n");
        out.push_str(&format!("# cpus = {cpus}\n"));
        return out;
    }
    let hosts: Vec<String> = workers.iter().map(|w| quoted(w)).collect();
    out.push_str("[workers.remote]                   # a worker group; its name is part of container names\n");
    line(&mut out, "hosts", &format!("[{}]", hosts.join(", ")), "");
    line(&mut out, "count", "1", "workers per host");
    line(&mut out, "cpus", &cpus.to_string(), "per worker");
    // A slice wide enough for 2 worker processes per CPU (the default rule).
    let width = (2 * cpus).max(21) as u16;
    let worker_ports = format!("{}-{}", 11000, 11000 + width - 1);
    if workers.iter().any(|w| w == head) {
        // The head's own ports are taken there: let seedcore choose free ones.
        out.push_str("# ports are chosen by seedcore: this group shares the head's host\n");
        out.push_str(&format!("# worker_ports = \"{worker_ports}\"\n"));
    } else {
        line(
            &mut out,
            "object_manager_port",
            &OBJECT_MANAGER_PORT.to_string(),
            "",
        );
        line(
            &mut out,
            "node_manager_port",
            &NODE_MANAGER_PORT.to_string(),
            "",
        );
        line(
            &mut out,
            "worker_ports",
            &quoted(&worker_ports),
            "worker processes",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(head: &str, workers: &[&str], cpus: Option<i64>) -> Starter {
        Starter {
            head: Some(head.to_string()),
            workers: workers.iter().map(|w| w.to_string()).collect(),
            cpus,
        }
    }

    #[test]
    fn every_starter_loads_with_the_documented_ports() {
        for o in [
            Starter::default(),
            options("10.0.0.5", &["10.0.0.6", "10.0.0.7"], None),
            options("10.0.0.5", &["10.0.0.5", "10.0.0.6"], Some(4)),
            options("head.example", &["w1.example"], Some(64)),
            options("local", &["local"], None),
        ] {
            let text = starter(&o).unwrap_or_else(|e| panic!("{o:?}: {e}"));
            let loaded = parse("seedcore.toml", &text, &[]).unwrap();
            let head = loaded.config.head;
            assert_eq!(
                (head.gcs_port, head.client_server_port, head.dashboard_port),
                (6380, 10001, 8265)
            );
            assert!(
                matches!(loaded.config.cluster.auth, Auth::Token(_)),
                "{text}"
            );
        }
    }

    #[test]
    fn bad_hosts_are_refused_like_the_loader_refuses_them() {
        let e = starter(&options(
            "10.0.0.5:22",
            &["http://x", "10.0.0.6", "10.0.0.6"],
            Some(0),
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("`10.0.0.5:22` is not a valid host: it has a port"),
            "{e}"
        );
        assert!(e.contains("`http://x` is not a valid host"), "{e}");
        assert!(e.contains("listed twice"), "{e}");
        assert!(e.contains("`--cpus` is 0"), "{e}");
    }
}
