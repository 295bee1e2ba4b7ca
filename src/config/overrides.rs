//! Overrides: `--set KEY=VALUE` and `HEAD_IP_OVERRIDE`, typed by the schema.

use super::*;

// ---------------------------------------------------------------------------
// Overrides

/// Where an override came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverrideSource {
    /// `--set key=value`
    Flag,
    /// An environment variable honoured for compatibility (`HEAD_IP_OVERRIDE`).
    Env(&'static str),
}

/// One `--set key=value` (or its environment equivalent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    pub key: String,
    pub value: String,
    pub source: OverrideSource,
    /// It sets a secret (`[cluster.env]` entry that is one): its value is
    /// never shown.
    pub sensitive: bool,
}

impl Override {
    /// Parses `key=value` as given to `--set`.
    pub fn parse_flag(text: &str) -> Result<Override, String> {
        let (key, value) = text.split_once('=').ok_or_else(|| {
            format!("`{text}` is not of the form KEY=VALUE (e.g. `head.host=10.0.0.5`)")
        })?;
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("`{text}` has an empty key"));
        }
        Ok(Override {
            key: key.to_string(),
            value: value.to_string(),
            source: OverrideSource::Flag,
            sensitive: false,
        })
    }

    /// How the plan header names this override.
    pub fn describe(&self) -> String {
        let value = self.shown_value();
        match self.source {
            OverrideSource::Flag => format!("{} = {value} (--set)", self.key),
            OverrideSource::Env(var) => format!("{} = {value} (from ${var})", self.key),
        }
    }

    /// The value as messages show it: `(sensitive)` for a secret, bounded
    /// and escaped otherwise.
    pub fn shown_value(&self) -> String {
        if self.sensitive {
            crate::model::SENSITIVE.to_string()
        } else {
            crate::model::excerpt(&self.value, 200)
        }
    }

    /// How an error locates this override (an env value is never echoed:
    /// whether it is a secret is not known yet).
    pub fn location(&self) -> String {
        let value = if self.sensitive || self.key.starts_with("cluster.env.") {
            crate::model::SENSITIVE.to_string()
        } else {
            crate::model::excerpt(&self.value, 200)
        };
        match self.source {
            OverrideSource::Flag => format!("--set {}={value}", self.key),
            OverrideSource::Env(var) => format!("${var}={value}"),
        }
    }
}

/// Overrides taken from the environment: `HEAD_IP_OVERRIDE` acts like
/// `--set head.host=...`, for users coming from the shell scripts.
pub fn env_overrides(lookup: impl Fn(&str) -> Option<String>) -> Vec<Override> {
    match lookup("HEAD_IP_OVERRIDE") {
        Some(v) if !v.trim().is_empty() => vec![Override {
            key: "head.host".to_string(),
            value: v.trim().to_string(),
            source: OverrideSource::Env("HEAD_IP_OVERRIDE"),
            sensitive: false,
        }],
        _ => Vec::new(),
    }
}

pub(crate) fn apply_override(
    table: &mut toml::Table,
    o: &Override,
) -> Result<(), (String, String)> {
    let parts: Vec<&str> = o.key.split('.').collect();
    if parts[0] == "env" {
        return Err((
            format!("`--set {}`: an environment's overlay cannot be overridden", o.key),
            "select the environment with `--env NAME`: `--set` applies on top of it, e.g. `--env staging --set head.host=10.0.0.9`".to_string(),
        ));
    }
    let mut schema = ROOT_KEYS;
    let mut kind = None;
    for (i, part) in parts.iter().enumerate() {
        let Some((_, k)) = schema.iter().find(|(n, _)| n == part) else {
            let hint = match did_you_mean(part, schema.iter().map(|(n, _)| *n)) {
                Some(s) => format!("did you mean `{}`?", replace_at(&parts, i, s)),
                None => format!(
                    "keys here: {}",
                    schema
                        .iter()
                        .map(|(n, _)| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            return Err((format!("`--set {}`: unknown key `{part}`", o.key), hint));
        };
        match k {
            Kind::Table(inner) => schema = inner,
            Kind::Named(inner) => {
                // Skip the group name.
                if parts.len() < i + 3 {
                    return Err((
                        format!("`--set {}` does not name a key", o.key),
                        "write `workers.<group>.<key>=value`, e.g. `workers.local.count=3`"
                            .to_string(),
                    ));
                }
                schema = inner;
                let rest = &parts[i + 2..];
                let Some((_, k)) = schema.iter().find(|(n, _)| *n == rest[0]) else {
                    let hint = match did_you_mean(rest[0], schema.iter().map(|(n, _)| *n)) {
                        Some(s) => format!("did you mean `{}.{}.{s}`?", parts[i], parts[i + 1]),
                        None => "see `examples/seedcore.toml` for a group's keys".to_string(),
                    };
                    return Err((
                        format!("`--set {}`: unknown key `{}`", o.key, rest[0]),
                        hint,
                    ));
                };
                kind = match (k, rest.len()) {
                    (_, 1) => Some(*k),
                    // One entry of a group's table (`resources.NAME`, `labels.NAME`).
                    (Kind::StrMap, 2) => Some(Kind::Str),
                    _ => {
                        return Err((
                            format!("`--set {}` does not name a scalar", o.key),
                            "only single values can be overridden".to_string(),
                        ))
                    }
                };
                break;
            }
            Kind::StrMap if i + 2 == parts.len() => {
                kind = Some(Kind::Str);
                break;
            }
            other => {
                if i + 1 != parts.len() {
                    return Err((
                        format!("`--set {}`: `{part}` is not a table", o.key),
                        "only single values can be overridden".to_string(),
                    ));
                }
                kind = Some(*other);
            }
        }
    }
    let value = match kind {
        Some(Kind::Int) => toml::Value::Integer(o.value.trim().parse().map_err(|_| {
            (
                format!("`--set {}`: `{}` is not an integer", o.key, o.value),
                format!("write a number, e.g. `--set {}=2`", o.key),
            )
        })?),
        Some(Kind::Bool) => toml::Value::Boolean(match o.value.trim() {
            "true" => true,
            "false" => false,
            _ => {
                return Err((
                    format!("`--set {}`: `{}` is not true or false", o.key, o.value),
                    format!("write `--set {}=true` or `--set {}=false`", o.key, o.key),
                ))
            }
        }),
        Some(Kind::Str) => toml::Value::String(o.value.clone()),
        Some(Kind::StrList) if o.value.trim_start().starts_with('[') => {
            // TOML's own list syntax: `["10.0.0.7", "10.0.0.8"]`.
            let parsed: std::result::Result<toml::Table, _> =
                toml::from_str(&format!("v = {}", o.value.trim()));
            match parsed.ok().and_then(|mut t| t.remove("v")) {
                Some(v @ toml::Value::Array(_)) => v,
                _ => {
                    return Err((
                        format!("`--set {}`: `{}` is not a list of strings", o.key, o.value),
                        format!(
                            "write `--set {}=10.0.0.7,10.0.0.8` or `--set '{}=[\"10.0.0.7\", \"10.0.0.8\"]'`",
                            o.key, o.key
                        ),
                    ))
                }
            }
        }
        Some(Kind::StrList) => toml::Value::Array(
            o.value
                .split(',')
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_string()))
                .collect(),
        ),
        _ => {
            return Err((
                format!("`--set {}` does not name a single value", o.key),
                "override a key such as `head.host` or `workers.local.count`".to_string(),
            ))
        }
    };
    let mut cursor = table;
    for part in &parts[..parts.len() - 1] {
        let entry = cursor
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cursor = entry.as_table_mut().ok_or_else(|| {
            (
                format!("`--set {}`: `{part}` is not a table in the file", o.key),
                "fix the file first".to_string(),
            )
        })?;
    }
    let last = parts[parts.len() - 1];
    // An env entry written as a table (a secret) stays one.
    let value = match (cursor.get(last), value) {
        (Some(toml::Value::Table(t)), toml::Value::String(v))
            if o.key.starts_with("cluster.env.") =>
        {
            let mut t2 = toml::Table::new();
            t2.insert("value".to_string(), toml::Value::String(v));
            let secret = !matches!(t.get("secret"), Some(toml::Value::Boolean(false)));
            t2.insert("secret".to_string(), toml::Value::Boolean(secret));
            toml::Value::Table(t2)
        }
        (_, v) => v,
    };
    cursor.insert(last.to_string(), value);
    Ok(())
}

pub(crate) fn replace_at(parts: &[&str], i: usize, with: &str) -> String {
    let mut v: Vec<&str> = parts.to_vec();
    v[i] = with;
    v.join(".")
}

/// The kind of value a dotted key takes, from the schema.
pub(crate) fn kind_of(key: &str) -> Option<Kind> {
    let parts: Vec<&str> = key.split('.').collect();
    let mut schema = ROOT_KEYS;
    let mut i = 0;
    while i < parts.len() {
        let (_, k) = schema.iter().find(|(n, _)| *n == parts[i])?;
        match k {
            Kind::Table(inner) => schema = inner,
            Kind::Named(inner) => {
                if i + 1 == parts.len() {
                    return Some(*k);
                }
                schema = inner;
                i += 1;
            }
            other => return Some(*other),
        }
        i += 1;
    }
    Some(Kind::Table(schema))
}

pub(crate) fn type_hint(key: &str) -> String {
    let name = key.rsplit('.').next().unwrap_or(key);
    match kind_of(key) {
        Some(Kind::Int) => format!("`{name}` takes a whole number, e.g. `{name} = 2`"),
        Some(Kind::Bool) => format!("`{name}` takes `true` or `false`"),
        Some(Kind::Str) => format!("`{name}` takes a quoted string, e.g. `{name} = \"...\"`"),
        Some(Kind::StrList) => {
            format!("`{name}` takes a list of strings, e.g. `{name} = [\"10.0.0.7\"]`")
        }
        Some(Kind::StrMap) => format!("`[{key}]` holds `NAME = \"value\"` lines"),
        Some(Kind::Table(_)) | Some(Kind::Named(_)) => {
            format!("`{key}` is a table: write it as `[{key}]` with its keys below")
        }
        None => "see `examples/seedcore.toml` for each key's type".to_string(),
    }
}
