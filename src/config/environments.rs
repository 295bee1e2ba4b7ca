//! Environments: `[env.NAME]` tables of the same file, selected with
//! `--env NAME` (or `SEEDCORE_ENV`), deep-merged over the base. Tables merge
//! key by key; values, lists and inline tables replace. A value an overlay
//! set is located at the overlay's line in errors. An environment without
//! its own `cluster.name` is named `BASE-NAME`, so that each environment is
//! a cluster of its own (containers, labels, lock, audit trail, token copy).

use super::*;
use std::collections::BTreeSet;

/// The environment variable that selects an environment, like `--env`.
pub const ENV_VAR: &str = "SEEDCORE_ENV";
/// The longest environment name.
pub const MAX_ENV_NAME: usize = 32;

/// The environment a run selects, and where it was selected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub name: String,
    /// `--env NAME`, or the environment variable.
    pub source: OverrideSource,
}

impl Selection {
    /// `--env NAME`.
    pub fn flag(name: &str) -> Selection {
        Selection {
            name: name.to_string(),
            source: OverrideSource::Flag,
        }
    }

    /// `SEEDCORE_ENV=NAME`.
    pub fn var(name: &str) -> Selection {
        Selection {
            name: name.to_string(),
            source: OverrideSource::Env(ENV_VAR),
        }
    }

    /// How errors point at the selection.
    pub fn location(&self) -> String {
        let name = crate::model::excerpt(&self.name, 60);
        match self.source {
            OverrideSource::Flag => format!("--env {name}"),
            OverrideSource::Env(var) => format!("${var}={name}"),
        }
    }
}

/// Lower-case letters, digits and `-`, at most [`MAX_ENV_NAME`].
pub fn valid_env_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_ENV_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

const NAME_HINT: &str =
    "an environment's name takes lower-case letters, digits and `-`, at most 32, e.g. `staging`";

/// The names of the `[env.*]` tables must be environment names.
pub(crate) fn check_names(
    doc: &toml::de::DeTable<'_>,
    source: &Source,
    errors: &mut Vec<ConfigError>,
) {
    let Some(envs) = doc.get("env").and_then(|v| v.get_ref().as_table()) else {
        return;
    };
    for (name, _) in envs.iter() {
        if !valid_env_name(name.get_ref()) {
            errors.push(ConfigError {
                message: format!(
                    "`{}` is not an environment name",
                    crate::model::excerpt(name.get_ref(), 60)
                ),
                location: Some(source.at_span(name.span())),
                hint: Some(NAME_HINT.to_string()),
            });
        }
    }
}

/// Merges the selected environment's overlay over the base (and drops every
/// `[env.*]` table), moving the spans of what it set to the overlay's lines.
pub(crate) fn select(
    table: &mut toml::Table,
    selected: Option<&Selection>,
    source: &mut Source,
) -> Result<(), ConfigErrors> {
    let envs = match table.remove("env") {
        Some(toml::Value::Table(t)) => t,
        _ => toml::Table::new(),
    };
    let Some(selected) = selected else {
        return Ok(());
    };
    let name = &selected.name;
    let located = |message: String, hint: String| {
        ConfigErrors(vec![ConfigError {
            message,
            location: Some(Location::Override(selected.location())),
            hint: Some(hint),
        }])
    };
    if !valid_env_name(name) {
        return Err(located(
            format!(
                "`{}` is not an environment name",
                crate::model::excerpt(name, 60)
            ),
            NAME_HINT.to_string(),
        ));
    }
    let Some(overlay) = envs.get(name) else {
        let known: Vec<&str> = envs.keys().map(String::as_str).collect();
        let hint = if known.is_empty() {
            format!(
                "`{}` declares no environments: add an `[env.{name}]` table with what differs from the rest of the file (see the README's \"Environments\")",
                source.path
            )
        } else {
            let list = known
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ");
            match did_you_mean(name, known.iter().copied()) {
                Some(s) => format!("did you mean `{s}`? The environments of this file: {list}"),
                None => format!("the environments of this file: {list}"),
            }
        };
        return Err(located(
            format!("there is no environment `{name}` in `{}`", source.path),
            hint,
        ));
    };
    let overlay = overlay.as_table().cloned().unwrap_or_default();
    let prefix = format!("env.{name}");
    // Inline tables replace: they are the overlay's values written `{ ... }`.
    let inline: BTreeSet<String> = source
        .spans
        .iter()
        .filter_map(|(path, (_, value))| {
            let rel = path.strip_prefix(&format!("{prefix}."))?;
            source.text[value.start.min(source.text.len())..]
                .starts_with('{')
                .then(|| rel.to_string())
        })
        .collect();
    let own_name = overlay
        .get("cluster")
        .and_then(toml::Value::as_table)
        .is_some_and(|c| c.contains_key("name"));
    merge(table, overlay, "", &prefix, &inline, &mut source.spans);
    if !own_name {
        let base = table
            .get("cluster")
            .and_then(toml::Value::as_table)
            .and_then(|c| c.get("name"))
            .and_then(toml::Value::as_str)
            .unwrap_or(defaults::CLUSTER_NAME)
            .to_string();
        let derived = format!("{base}-{name}");
        if derived.len() > 40 && base.len() <= 40 {
            let location = source
                .spans
                .get(&prefix)
                .map(|(k, _)| source.at_span(k.clone()));
            return Err(ConfigErrors(vec![ConfigError {
                message: format!(
                    "the cluster of environment `{name}` would be named `{}` ({} characters), and a cluster name takes at most 40",
                    crate::model::excerpt(&derived, 80),
                    derived.len()
                ),
                location,
                hint: Some(format!(
                    "give the environment a name of its own: `name = \"...\"` in `[env.{name}.cluster]`"
                )),
            }]));
        }
        let cluster = table
            .entry("cluster")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let Some(c) = cluster.as_table_mut() {
            c.insert("name".to_string(), toml::Value::String(derived));
        }
    }
    Ok(())
}

/// A key's span and its value's.
type Span = (Range<usize>, Range<usize>);
type Spans = BTreeMap<String, Span>;

/// Deep-merges `over` into `base`: tables key by key, everything else (and
/// inline tables) replaces. The spans of a replaced value become the
/// overlay's (`env.NAME.KEY` -> `KEY`).
fn merge(
    base: &mut toml::Table,
    over: toml::Table,
    at: &str,
    prefix: &str,
    inline: &BTreeSet<String>,
    spans: &mut Spans,
) {
    for (key, value) in over {
        let path = if at.is_empty() {
            key.clone()
        } else {
            format!("{at}.{key}")
        };
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) if !inline.contains(&path) => {
                merge(b, o, &path, prefix, inline, spans);
            }
            (_, value) => {
                base.insert(key, value);
                let below = format!("{path}.");
                spans.retain(|p, _| *p != path && !p.starts_with(&below));
                let from = format!("{prefix}.{path}");
                let from_below = format!("{from}.");
                let moved: Vec<(String, Span)> = spans
                    .iter()
                    .filter(|(p, _)| **p == from || p.starts_with(&from_below))
                    .map(|(p, s)| (format!("{path}{}", &p[from.len()..]), s.clone()))
                    .collect();
                spans.extend(moved);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_keys_are_the_roots_but_env() {
        let root: Vec<&str> = ROOT_KEYS.iter().map(|(k, _)| *k).collect();
        let overlay: Vec<&str> = OVERLAY_KEYS.iter().map(|(k, _)| *k).collect();
        let mut expected = overlay.clone();
        expected.push("env");
        assert_eq!(root, expected);
    }

    #[test]
    fn names_are_bounded() {
        for ok in ["staging", "prod", "eu-1", "a"] {
            assert!(valid_env_name(ok), "{ok}");
        }
        for bad in ["", "Prod", "a_b", "a.b", &"x".repeat(33)] {
            assert!(!valid_env_name(bad), "{bad}");
        }
    }

    #[test]
    fn tables_merge_and_inline_tables_replace() {
        let text = r#"
[cluster]
name = "base"
build = { context = ".", dockerfile = "A" }
[head]
host = "10.0.0.1"
cpus = 2
[workers.w]
hosts = ["10.0.0.2"]
labels = { zone = "a", rack = "1" }
[env.s.head]
cpus = 4
[env.s.workers.w]
labels = { zone = "b" }
[env.s.cluster]
build = { context = "." }
"#;
        let doc = toml::de::DeTable::parse(text).unwrap();
        let mut source = Source {
            path: "t.toml".into(),
            text: text.into(),
            spans: BTreeMap::new(),
            overrides: Vec::new(),
        };
        collect_spans(doc.get_ref(), "", &mut source.spans);
        let mut table: toml::Table = toml::from_str(text).unwrap();
        select(&mut table, Some(&Selection::flag("s")), &mut source).unwrap();
        assert!(table.get("env").is_none());
        assert_eq!(table["head"]["cpus"].as_integer(), Some(4));
        assert_eq!(table["head"]["host"].as_str(), Some("10.0.0.1"));
        // An inline table replaces: `rack` is gone, `dockerfile` too.
        assert!(table["workers"]["w"]["labels"].get("rack").is_none());
        assert!(table["cluster"]["build"].get("dockerfile").is_none());
        // The overlay names no cluster: `BASE-ENV`.
        assert_eq!(table["cluster"]["name"].as_str(), Some("base-s"));
        let Some(Location::File { line, .. }) = source.locate("head.cpus") else {
            panic!()
        };
        assert_eq!(line, 12);
        let Some(Location::File { line, .. }) = source.locate("head.host") else {
            panic!()
        };
        assert_eq!(line, 6);
        assert!(!source.spans.contains_key("cluster.build.dockerfile"));
    }
}
