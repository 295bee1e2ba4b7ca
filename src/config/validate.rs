//! Validation: raw values into a [`Config`], every problem reported with its key.

use super::*;

// ---------------------------------------------------------------------------
// Validation

pub(crate) struct Checker {
    errors: Vec<KeyError>,
}

impl Checker {
    fn err(&mut self, key: &str, message: String, hint: impl Into<String>) {
        self.errors.push(KeyError {
            key: key.to_string(),
            message,
            hint: Some(hint.into()),
        });
    }

    fn port(&mut self, key: &str, value: Option<i64>, default: u16) -> u16 {
        match value {
            None => default,
            Some(v) if (1..=65535).contains(&v) => v as u16,
            Some(v) => {
                self.err(
                    key,
                    format!("`{key}` is {v}, which is not a port number"),
                    format!("ports are between 1 and 65535; the default is {default}"),
                );
                default
            }
        }
    }

    fn positive(&mut self, key: &str, value: Option<i64>, default: u32, what: &str) -> u32 {
        match value {
            None => default,
            Some(v) if key.ends_with(".cpus") && v > 1024 => {
                self.err(
                    key,
                    format!("`{key}` is {v}; seedcore allows at most 1024 CPUs per node"),
                    format!("set `{key}` to {what}"),
                );
                default
            }
            Some(v) if v >= 1 && v <= i64::from(u32::MAX) => v as u32,
            Some(v) => {
                self.err(
                    key,
                    format!("`{key}` is {v}; it must be at least 1"),
                    format!("set `{key}` to {what}"),
                );
                default
            }
        }
    }

    fn range(&mut self, key: &str, value: Option<&str>, default: &str) -> PortRange {
        let text = value.unwrap_or(default);
        match parse_range(text) {
            Ok(r) => r,
            Err(why) => {
                self.err(
                    key,
                    format!("`{key}` is `{text}`: {why}"),
                    format!("write an inclusive range such as `\"{default}\"`"),
                );
                parse_range(default).expect("defaults are valid")
            }
        }
    }

    fn host(&mut self, key: &str, text: &str) -> HostName {
        if let Err(why) = check_host(text) {
            self.err(
                key,
                format!("`{text}` is not a valid host: {why}"),
                "write an IP address (`10.0.0.5`), a host name (`node-1.example`), or `local` for this machine",
            );
        }
        HostName(text.to_string())
    }

    fn shm(&mut self, key: &str, value: Option<&str>, default: &str) -> u64 {
        let text = value.unwrap_or(default);
        match parse_size(text) {
            Some(n) if n >= 1024 * 1024 => n,
            _ => {
                self.err(
                    key,
                    format!("`{key}` is `{text}`, which is not a size of at least 1m"),
                    "write a size such as `\"512m\"` or `\"2g\"`",
                );
                parse_size(default).expect("defaults are valid")
            }
        }
    }

    /// A size such as `8g`, at least `min` bytes.
    fn size(&mut self, key: &str, text: &str, min: u64) -> Option<u64> {
        match parse_size(text) {
            Some(n) if n >= min => Some(n),
            _ => {
                self.err(
                    key,
                    format!(
                        "`{key}` is `{}`, which is not a size of at least {}",
                        crate::model::excerpt(text, 40),
                        crate::model::human_bytes(min)
                    ),
                    "write a size such as `\"512m\"` or `\"8g\"`",
                );
                None
            }
        }
    }

    /// `gpus = 2`, `"all"` or `["0", "GPU-3f2a..."]`.
    fn gpus(&mut self, key: &str, value: toml::Value) -> Option<Gpus> {
        let hint =
            "write a count (`gpus = 1`), `gpus = \"all\"`, or device IDs (`gpus = [\"0\", \"1\"]`)";
        let device = |d: &str| {
            !d.is_empty()
                && d.len() <= 64
                && d.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
        };
        let count = |c: &mut Checker, n: i64| {
            if (1..=64).contains(&n) {
                Some(Gpus::Count(n as u32))
            } else {
                c.err(key, format!("`{key}` is {n}; it takes 1 to 64 GPUs"), hint);
                None
            }
        };
        match value {
            toml::Value::Integer(n) => count(self, n),
            toml::Value::String(t) if t == "all" => Some(Gpus::All),
            toml::Value::String(t) if t.trim().parse::<i64>().is_ok() => {
                count(self, t.trim().parse().expect("checked"))
            }
            toml::Value::Array(items) => {
                let ids: Vec<String> = items
                    .iter()
                    .filter_map(|i| i.as_str().map(str::to_string))
                    .collect();
                if ids.is_empty()
                    || ids.len() != items.len()
                    || ids.len() > 64
                    || !ids.iter().all(|d| device(d))
                {
                    self.err(
                        key,
                        format!(
                            "`{key}` must list device IDs as strings of letters, digits and `-`"
                        ),
                        hint,
                    );
                    return None;
                }
                Some(Gpus::Devices(ids))
            }
            other => {
                self.err(
                    key,
                    format!(
                        "`{key}` is `{}`",
                        crate::model::excerpt(&other.to_string(), 40)
                    ),
                    hint,
                );
                None
            }
        }
    }

    /// Ray custom resources: names Ray accepts, positive finite amounts.
    fn resources(
        &mut self,
        key: &str,
        raw: BTreeMap<String, toml::Value>,
    ) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (name, v) in raw {
            let k = format!("{key}.{name}");
            let named = !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "_-.:/".contains(ch));
            if !named {
                self.err(
                    &k,
                    format!(
                        "resource name `{}` has characters Ray resource names do not take",
                        crate::model::excerpt(&name, 40)
                    ),
                    "use letters, digits and `_-.:/`, at most 64",
                );
                continue;
            }
            if ["CPU", "GPU", "memory", "object_store_memory"].contains(&name.as_str()) {
                self.err(
                    &k,
                    format!("`{name}` is Ray's own resource"),
                    "set it with `cpus`, `gpus`, `memory` or `object_store_memory` instead",
                );
                continue;
            }
            let amount = match &v {
                toml::Value::Integer(n) => Some(*n as f64),
                toml::Value::Float(f) => Some(*f),
                toml::Value::String(t) => t.trim().parse::<f64>().ok(),
                _ => None,
            };
            match amount {
                Some(a) if a.is_finite() && a > 0.0 && a <= 1e9 => {
                    out.insert(name, a);
                }
                _ => self.err(
                    &k,
                    format!(
                        "`{k}` is `{}`, not an amount",
                        crate::model::excerpt(&v.to_string(), 40)
                    ),
                    "write a positive number, e.g. `accelerator_x = 1` or `ssd = 0.5`",
                ),
            }
        }
        out
    }

    /// Ray node labels (Kubernetes label syntax; `ray.io/` is Ray's own).
    fn labels(&mut self, key: &str, raw: BTreeMap<String, String>) -> BTreeMap<String, String> {
        let part = |t: &str| {
            t.len() <= 63
                && t.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
                && t.chars().next().is_none_or(|ch| ch.is_ascii_alphanumeric())
                && t.chars().last().is_none_or(|ch| ch.is_ascii_alphanumeric())
        };
        let mut out = BTreeMap::new();
        for (name, value) in raw {
            let k = format!("{key}.{name}");
            let (prefix, bare) = match name.rsplit_once('/') {
                Some((p, n)) => (Some(p), n),
                None => (None, name.as_str()),
            };
            let good_key = !bare.is_empty()
                && part(bare)
                && prefix.is_none_or(|p| {
                    !p.is_empty()
                        && p.len() <= 253
                        && p.chars().all(|ch| {
                            ch.is_ascii_lowercase() || ch.is_ascii_digit() || "-.".contains(ch)
                        })
                });
            if !good_key {
                self.err(
                    &k,
                    format!(
                        "label `{}` is not a valid label key",
                        crate::model::excerpt(&name, 40)
                    ),
                    "use `[prefix/]name`: a name of at most 63 letters, digits and `-_.`, starting and ending with a letter or digit",
                );
                continue;
            }
            if prefix.is_some_and(|p| p == "ray.io" || p.ends_with(".ray.io")) {
                self.err(
                    &k,
                    format!("`{name}`: the `ray.io/` prefix is Ray's own"),
                    "choose another prefix, or none",
                );
                continue;
            }
            if !part(&value) {
                self.err(
                    &k,
                    format!(
                        "the value of label `{name}` is `{}`",
                        crate::model::excerpt(&value, 40)
                    ),
                    "label values are at most 63 letters, digits and `-_.`, starting and ending with a letter or digit",
                );
                continue;
            }
            out.insert(name, value);
        }
        out
    }

    /// `pull` or `push`; `None` when absent (or wrong, after reporting it).
    fn image_source(&mut self, key: &str, value: Option<&str>) -> Option<ImageSource> {
        match value {
            None => None,
            Some("pull") => Some(ImageSource::Pull),
            Some("push") => Some(ImageSource::Push),
            Some(other) => {
                self.err(
                    key,
                    format!(
                        "`{key}` is `{}`; it takes `pull` or `push`",
                        crate::model::excerpt(other, 40)
                    ),
                    "`pull`: each host pulls from a registry; `push`: seedcore moves the image from this machine's Docker, only the layers a host lacks",
                );
                None
            }
        }
    }

    fn image(&mut self, key: &str, value: Option<String>) -> Option<String> {
        match value {
            Some(v) => match check_image(&v) {
                Ok(()) => Some(v),
                Err(why) => {
                    self.err(
                        key,
                        if v.trim().is_empty() {
                            format!("`{key}` is empty")
                        } else {
                            format!(
                                "`{key}` is `{}`, which is not an image reference: {why}",
                                crate::model::excerpt(&v, 120)
                            )
                        },
                        "write an image such as `\"rayproject/ray:2.60.0\"` or `\"registry.example:5000/team/ray@sha256:...\"`",
                    );
                    None
                }
            },
            None => None,
        }
    }

    fn secs(&mut self, key: &str, value: Option<i64>, default: u64) -> u64 {
        match value {
            None => default,
            Some(v) if (1..=MAX_TIMEOUT_SECS).contains(&v) => v as u64,
            Some(v) if v > MAX_TIMEOUT_SECS => {
                self.err(
                    key,
                    format!(
                        "`{key}` is {v} seconds; timeouts are at most {MAX_TIMEOUT_SECS} (a day)"
                    ),
                    format!(
                        "set it to a number of seconds, e.g. `{} = {default}` (the default)",
                        key.rsplit('.').next().unwrap_or(key)
                    ),
                );
                default
            }
            Some(v) => {
                self.err(
                    key,
                    format!("`{key}` is {v}; a timeout is a number of seconds of at least 1"),
                    format!(
                        "set it to a number of seconds, e.g. `{} = {default}` (the default)",
                        key.rsplit('.').next().unwrap_or(key)
                    ),
                );
                default
            }
        }
    }
}

/// The longest timeout seedcore accepts, in seconds (a day).
pub(crate) const MAX_TIMEOUT_SECS: i64 = 86_400;
/// The longest an idle SSH connection is kept for the next command (an hour).
pub(crate) const MAX_PERSIST_SECS: i64 = 3_600;

pub(crate) fn check_name(c: &mut Checker, key: &str, name: &str, what: &str) {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name
            .chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-' || ch == '_')
        && name
            .chars()
            .next()
            .is_some_and(|ch| ch.is_ascii_alphanumeric());
    if !ok {
        c.err(
            key,
            format!("{what} `{name}` cannot be part of a container name"),
            "use lower-case letters, digits, `-` and `_`, starting with a letter or digit (at most 40)",
        );
    }
}

pub(crate) fn validate(raw: RawConfig) -> Result<Config, Vec<KeyError>> {
    validate_with(raw, &secrets::Operator)
}

/// Validates, reading secrets through `reader`.
pub(crate) fn validate_with(
    raw: RawConfig,
    reader: &dyn secrets::SecretReader,
) -> Result<Config, Vec<KeyError>> {
    let mut c = Checker { errors: Vec::new() };

    let name = raw
        .cluster
        .name
        .unwrap_or_else(|| defaults::CLUSTER_NAME.to_string());
    check_name(&mut c, "cluster.name", &name, "cluster name");
    let image = c
        .image("cluster.image", raw.cluster.image)
        .unwrap_or_else(|| defaults::IMAGE.to_string());
    let agent_ports = c.range(
        "cluster.agent_ports",
        raw.cluster.agent_ports.as_deref(),
        defaults::AGENT_PORTS,
    );
    let mut env = BTreeMap::new();
    for (k, v) in &raw.cluster.env {
        let key = format!("cluster.env.{k}");
        if !secrets::is_env_name(k) {
            c.err(
                &key,
                format!(
                    "`{}` is not an environment variable name",
                    crate::model::excerpt(k, 80)
                ),
                "use letters, digits and `_`, starting with a letter or `_`",
            );
            continue;
        }
        if k.starts_with("RAY_AUTH_") {
            c.err(
                &key,
                format!("`{k}` is set by seedcore from `cluster.auth`"),
                "set `cluster.auth` (and `token_file` or `token_env`) instead",
            );
            continue;
        }
        match secrets::env_value(reader, v) {
            Ok(value) => {
                env.insert(k.clone(), value);
            }
            Err((message, hint)) => c.err(&key, format!("`{key}`: {message}"), hint),
        }
    }
    let auth = match (
        raw.cluster.auth.as_deref(),
        raw.cluster.token_file.as_deref(),
        raw.cluster.token_env.as_deref(),
    ) {
        (Some("none"), None, None) => Auth::None,
        (Some("none"), _, _) => {
            c.err(
                "cluster.auth",
                "`cluster.auth` is `none`, but a token is given".to_string(),
                "remove `token_file` and `token_env`, or set `auth = \"token\"`",
            );
            Auth::None
        }
        (None | Some("token"), None, None) => Auth::Token(TokenSource::Generated),
        (None | Some("token"), file, env) => match secrets::read_secret(reader, env, file) {
            Ok(token)
                if token.expose().len() < 16
                    || token
                        .expose()
                        .chars()
                        .any(|ch| ch.is_whitespace() || ch.is_control()) =>
            {
                c.err(
                    if file.is_some() { "cluster.token_file" } else { "cluster.token_env" },
                    "the Ray token is shorter than 16 characters or holds spaces or control characters".to_string(),
                    "use a long random token, e.g. `openssl rand -hex 32`",
                );
                Auth::None
            }
            Ok(token) => Auth::Token(TokenSource::Given(token)),
            Err((message, hint)) => {
                let key = if file.is_some() && env.is_some() {
                    "cluster.token_env"
                } else if file.is_some() {
                    "cluster.token_file"
                } else {
                    "cluster.token_env"
                };
                let message = if file.is_some() && env.is_some() {
                    "give one of `token_file` and `token_env`, not both".to_string()
                } else {
                    format!("the Ray token: {message}")
                };
                c.err(key, message, hint);
                Auth::None
            }
        },
        (Some(other), _, _) => {
            c.err(
                "cluster.auth",
                format!(
                    "`cluster.auth` is `{}`; it takes `token` or `none`",
                    crate::model::excerpt(other, 40)
                ),
                "`token` (the default) turns on Ray's token authentication; `none` leaves the cluster open",
            );
            Auth::None
        }
    };
    let id = raw.cluster.id.filter(|id| {
        let ok = !id.is_empty()
            && id.len() <= 64
            && id
                .chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-');
        if !ok {
            c.err(
                "cluster.id",
                format!("`cluster.id` is `{}`, which is not a cluster identity", crate::model::excerpt(id, 80)),
                "use the id a plan names (lower-case letters, digits and `-`, at most 64), or remove the key",
            );
        }
        ok
    });
    let build = raw.cluster.build.map(|b| {
        for k in b.args.keys() {
            if !secrets::is_env_name(k) {
                c.err(
                    &format!("cluster.build.args.{k}"),
                    format!(
                        "`{}` is not a build argument name",
                        crate::model::excerpt(k, 80)
                    ),
                    "use letters, digits and `_`, starting with a letter or `_`",
                );
            }
        }
        let dockerfile = b.dockerfile.unwrap_or_else(|| "Dockerfile".to_string());
        if dockerfile.is_empty() || dockerfile.contains("..") || dockerfile.starts_with('/') {
            c.err(
                "cluster.build.dockerfile",
                format!(
                    "`{}` is not a path inside the context",
                    crate::model::excerpt(&dockerfile, 80)
                ),
                "name the Dockerfile relative to the context, e.g. `Dockerfile`",
            );
        }
        let context = match b.context {
            Some(ctx) if !ctx.is_empty() => expand_home(&ctx),
            _ => {
                c.err(
                    "cluster.build",
                    "`[cluster.build]` needs `context`".to_string(),
                    "write `build = { context = \"docker/\" }` (relative to this file)",
                );
                PathBuf::new()
            }
        };
        BuildConfig {
            context,
            dockerfile,
            args: b.args,
            digest: String::new(),
        }
    });
    let image_source = match raw.cluster.image_source.as_deref() {
        None if build.is_some() => ImageSource::Push,
        Some("pull") if build.is_some() => {
            c.err(
                "cluster.image_source",
                "`image_source = \"pull\"` cannot take an image built on this machine".to_string(),
                "remove `image_source` (a built image is pushed), or remove `[cluster.build]`",
            );
            ImageSource::Pull
        }
        other => c
            .image_source("cluster.image_source", other)
            .unwrap_or_default(),
    };
    let cluster = ClusterConfig {
        name,
        id,
        image,
        agent_ports,
        image_source,
        build,
        usage_stats: raw.cluster.usage_stats.unwrap_or(false),
        oversubscribe_cpus: raw.cluster.oversubscribe_cpus.unwrap_or(false),
        auth,
        env,
    };

    let known_hosts = match raw.ssh.known_hosts.as_deref() {
        None | Some("strict") => KnownHostsPolicy::Strict,
        Some("accept-new") => KnownHostsPolicy::AcceptNew,
        Some(other) => {
            c.err(
                "ssh.known_hosts",
                format!("`ssh.known_hosts` is `{other}`; it must be `strict` or `accept-new`"),
                if matches!(other, "off" | "no" | "false" | "ignore" | "none") {
                    "host-key checking cannot be turned off; use `accept-new` to trust a host's key on first contact, or add the key with `ssh-keyscan -H HOST >> ~/.ssh/known_hosts`"
                } else {
                    "use `strict` (the default) or `accept-new`"
                },
            );
            KnownHostsPolicy::Strict
        }
    };
    let max_parallel = c.positive(
        "ssh.max_parallel",
        raw.ssh.max_parallel,
        defaults::MAX_PARALLEL as u32,
        "how many hosts seedcore may work on at once, e.g. 32",
    ) as usize;
    let ssh = SshConfig {
        user: raw.ssh.user.filter(|u| !u.is_empty()),
        port: raw
            .ssh
            .port
            .map(|p| c.port("ssh.port", Some(p), defaults::SSH_PORT)),
        identity_file: raw.ssh.identity_file.map(|p| expand_home(&p)),
        known_hosts,
        known_hosts_file: raw.ssh.known_hosts_file.map(|p| {
            let path = expand_home(&p);
            // A file that forgets every key would turn host-key checking off.
            let device = std::fs::metadata(&path).is_ok_and(|m| !m.is_file() && !m.is_dir());
            if p == "/dev/null" || device {
                c.err(
                    "ssh.known_hosts_file",
                    format!(
                        "`ssh.known_hosts_file` is `{}`, which keeps no keys: host-key checking cannot be turned off",
                        crate::model::excerpt(&p, 120)
                    ),
                    "point it at a real file (default `~/.ssh/known_hosts`); add keys with `ssh-keyscan -H HOST >> FILE` after checking them, or use `known_hosts = \"accept-new\"`",
                );
            }
            path
        }),
        max_parallel,
        connect_timeout_secs: c.secs(
            "ssh.connect_timeout",
            raw.ssh.connect_timeout,
            defaults::CONNECT_TIMEOUT_SECS,
        ),
        persist_secs: match raw.ssh.persist {
            None => 0,
            Some(v) if (0..=MAX_PERSIST_SECS).contains(&v) => v as u64,
            Some(v) => {
                c.err(
                    "ssh.persist",
                    format!("`ssh.persist` is {v}; it is a number of seconds from 0 (off) to {MAX_PERSIST_SECS}"),
                    "set it to how long an idle connection may wait for the next seedcore command, e.g. `persist = 60`, or 0 to close connections at exit",
                );
                0
            }
        },
    };

    let raw_head = match raw.head {
        Some(h) => Some(h),
        None => {
            c.err(
                "head",
                "there is no `[head]` table".to_string(),
                "add `[head]` with `host = \"ADDRESS\"`: the host that runs the Ray head",
            );
            None
        }
    };
    let head_known = raw_head.as_ref().is_some_and(|h| h.host.is_some());
    let raw_head = raw_head.unwrap_or_default();
    let head_host = match raw_head.host.as_deref() {
        Some(h) => c.host("head.host", h),
        None => {
            if c.errors.iter().all(|e| e.key != "head") {
                c.err(
                    "head.host",
                    "`head.host` is missing".to_string(),
                    "set `host = \"ADDRESS\"` in `[head]`: workers join the head at this address",
                );
            }
            HostName("local".to_string())
        }
    };
    let head = HeadConfig {
        host: head_host,
        image: c.image("head.image", raw_head.image),
        image_source: c.image_source("head.image_source", raw_head.image_source.as_deref()),
        cpus: c.positive(
            "head.cpus",
            raw_head.cpus,
            1,
            "the number of CPUs Ray may use on the head, e.g. `cpus = 2`",
        ),
        gcs_port: c.port("head.gcs_port", raw_head.gcs_port, defaults::GCS_PORT),
        client_server_port: c.port(
            "head.client_server_port",
            raw_head.client_server_port,
            defaults::CLIENT_SERVER_PORT,
        ),
        dashboard_port: c.port(
            "head.dashboard_port",
            raw_head.dashboard_port,
            defaults::DASHBOARD_PORT,
        ),
        serve: raw_head.serve.unwrap_or(true),
        serve_port: c.port("head.serve_port", raw_head.serve_port, defaults::SERVE_PORT),
        public: raw_head.public.unwrap_or(false),
        shm_size_bytes: c.shm(
            "head.shm_size",
            raw_head.shm_size.as_deref(),
            defaults::SHM_SIZE,
        ),
        object_manager_port: c.port(
            "head.object_manager_port",
            raw_head.object_manager_port,
            defaults::OBJECT_MANAGER_PORT,
        ),
        node_manager_port: c.port(
            "head.node_manager_port",
            raw_head.node_manager_port,
            defaults::NODE_MANAGER_PORT,
        ),
        worker_ports: c.range(
            "head.worker_ports",
            raw_head.worker_ports.as_deref(),
            defaults::HEAD_WORKER_PORTS,
        ),
    };

    let mut workers = BTreeMap::new();
    for (gname, g) in raw.workers {
        let p = format!("workers.{gname}");
        check_name(&mut c, &p, &gname, "worker group name");
        let hosts_key = format!("{p}.hosts");
        let hosts: Vec<HostName> = match g.hosts {
            None => {
                c.err(
                    &hosts_key,
                    format!("`[{p}]` has no `hosts`"),
                    format!("list where this group runs, e.g. `hosts = [\"10.0.0.7\"]` in `[{p}]`"),
                );
                Vec::new()
            }
            Some(list) => {
                let mut seen: std::collections::BTreeSet<String> = Default::default();
                let mut twice: BTreeMap<String, usize> = BTreeMap::new();
                let mut hosts = Vec::new();
                for h in list {
                    if !seen.insert(h.clone()) {
                        *twice.entry(h).or_default() += 1;
                        continue;
                    }
                    hosts.push(c.host(&hosts_key, &h));
                }
                // One error per host listed more than once, with the count.
                for (h, extra) in twice {
                    c.err(
                        &hosts_key,
                        format!(
                            "`{}` is listed {} in `{hosts_key}`",
                            crate::model::excerpt(&h, 80),
                            if extra == 1 {
                                "twice".to_string()
                            } else {
                                format!("{} times", extra + 1)
                            }
                        ),
                        format!(
                            "list each host once; to run more workers on it, raise `{p}.count`"
                        ),
                    );
                }
                if hosts.is_empty() && seen.is_empty() {
                    c.err(
                        &hosts_key,
                        format!("`{hosts_key}` is empty"),
                        format!("list at least one host, or remove `[{p}]`"),
                    );
                }
                hosts
            }
        };
        let count = match g.count {
            None => 1,
            Some(v) if (0..=256).contains(&v) => v as u32,
            Some(v) => {
                c.err(
                    &format!("{p}.count"),
                    format!("`{p}.count` is {v}; it must be between 0 and 256"),
                    "count is the number of workers on each of the group's hosts",
                );
                1
            }
        };
        let group = WorkerGroup {
            hosts,
            count,
            cpus: c.positive(
                &format!("{p}.cpus"),
                g.cpus,
                1,
                "the number of CPUs Ray may use on each worker, e.g. `cpus = 1`",
            ),
            image: c.image(&format!("{p}.image"), g.image),
            image_source: c.image_source(&format!("{p}.image_source"), g.image_source.as_deref()),
            shm_size_bytes: c.shm(
                &format!("{p}.shm_size"),
                g.shm_size.as_deref(),
                defaults::SHM_SIZE,
            ),
            object_manager_port: g.object_manager_port.map(|v| {
                c.port(
                    &format!("{p}.object_manager_port"),
                    Some(v),
                    defaults::OBJECT_MANAGER_PORT,
                )
            }),
            node_manager_port: g.node_manager_port.map(|v| {
                c.port(
                    &format!("{p}.node_manager_port"),
                    Some(v),
                    defaults::NODE_MANAGER_PORT,
                )
            }),
            worker_ports: g.worker_ports.as_deref().map(|v| {
                c.range(
                    &format!("{p}.worker_ports"),
                    Some(v),
                    defaults::WORKER_PORTS,
                )
            }),
            worker_ports_per_node: g.worker_ports_per_node.map(|v| {
                let v = if v > 65535 {
                    c.err(
                        &format!("{p}.worker_ports_per_node"),
                        format!("`{p}.worker_ports_per_node` is {v}, more ports than exist"),
                        "each node needs a few ports per CPU, e.g. `worker_ports_per_node = 8`",
                    );
                    4
                } else {
                    v
                };
                c.positive(
                    &format!("{p}.worker_ports_per_node"),
                    Some(v),
                    4,
                    "the number of worker ports each node gets, e.g. 8",
                )
            }),
            gpus: g.gpus.and_then(|v| c.gpus(&format!("{p}.gpus"), v)),
            resources: c.resources(&format!("{p}.resources"), g.resources),
            labels: c.labels(&format!("{p}.labels"), g.labels),
            memory_bytes: g
                .memory
                .and_then(|m| c.size(&format!("{p}.memory"), &m, 64 * 1024 * 1024)),
            object_store_memory_bytes: g
                .object_store_memory
                .and_then(|m| c.size(&format!("{p}.object_store_memory"), &m, 64 * 1024 * 1024)),
        };
        if let Some(store) = group.object_store_memory_bytes {
            if store > group.shm_size_bytes {
                c.err(
                    &format!("{p}.object_store_memory"),
                    format!(
                        "`{p}.object_store_memory` ({}) is larger than the worker's `/dev/shm` ({}): Ray would fall back to a slow on-disk object store",
                        crate::model::human_bytes(store),
                        crate::model::human_bytes(group.shm_size_bytes)
                    ),
                    "raise `shm_size` to at least `object_store_memory`, or lower it",
                );
            } else if group.memory_bytes.is_some_and(|m| store >= m) {
                c.err(
                    &format!("{p}.object_store_memory"),
                    format!("`{p}.object_store_memory` leaves no room under `{p}.memory`"),
                    "keep the object store well under the container's memory limit",
                );
            }
        }
        if head_known && head.host.is_local() && group.hosts.iter().any(|h| !h.is_local()) {
            c.err(
                &hosts_key,
                format!(
                    "`[{p}]` runs on other hosts, but the head is `local`, which they cannot reach"
                ),
                "write the head's address in `head.host` so remote workers can join it",
            );
        }
        workers.insert(gname, group);
    }

    if cluster.build.is_some() {
        // A built image exists only on this machine: nodes that run it cannot pull it.
        let pulled = std::iter::once((
            "head.image_source".to_string(),
            head.image_source,
            head.image.is_none(),
        ))
        .chain(workers.iter().map(|(g, w)| {
            (
                format!("workers.{g}.image_source"),
                w.image_source,
                w.image.is_none(),
            )
        }));
        for (key, source, built) in pulled.collect::<Vec<_>>() {
            if built && source == Some(ImageSource::Pull) {
                c.err(
                    &key,
                    format!("`{key} = \"pull\"`, but these nodes run the image built on this machine (`[cluster.build]`), which no registry has"),
                    "remove it (a built image is pushed), or give these nodes their own `image`",
                );
            }
        }
    }

    let timeouts = Timeouts {
        head_ready_secs: c.secs(
            "timeouts.head_ready",
            raw.timeouts.head_ready,
            defaults::HEAD_READY_SECS,
        ),
        nodes_alive_secs: c.secs(
            "timeouts.nodes_alive",
            raw.timeouts.nodes_alive,
            defaults::NODES_ALIVE_SECS,
        ),
        drain_secs: c.secs("timeouts.drain", raw.timeouts.drain, defaults::DRAIN_SECS),
        stop_secs: c.secs("timeouts.stop", raw.timeouts.stop, defaults::STOP_SECS),
    };
    if timeouts.stop_secs <= defaults::RAY_GRACE_SECS {
        c.err(
            "timeouts.stop",
            format!(
                "`timeouts.stop` is {} s: Docker would kill Ray before its own {} s shutdown grace period ends, cutting a drain short",
                timeouts.stop_secs,
                defaults::RAY_GRACE_SECS
            ),
            "use more than 16 seconds (default 20); stops are quick when Ray leaves sooner",
        );
    }

    let max_unavailable = match raw.rollout.max_unavailable {
        None => MaxUnavailable::default(),
        Some(v) => {
            let text = match &v {
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::String(t) => t.clone(),
                other => other.to_string(),
            };
            MaxUnavailable::parse(&text).unwrap_or_else(|| {
                c.err(
                    "rollout.max_unavailable",
                    format!(
                        "`rollout.max_unavailable` is `{}`",
                        crate::model::excerpt(&text, 40)
                    ),
                    "write a count of at least 1 (`max_unavailable = 1`) or a percentage of each group (`max_unavailable = \"25%\"`)",
                );
                MaxUnavailable::default()
            })
        }
    };

    if c.errors.is_empty() {
        Ok(Config {
            cluster,
            ssh,
            head,
            workers,
            timeouts,
            max_unavailable,
        })
    } else {
        Err(c.errors)
    }
}

pub(crate) fn expand_home(p: &str) -> PathBuf {
    match (p.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(p),
    }
}
