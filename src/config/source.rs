//! The file's text with the span of every key, and the unknown-key check
//! with its did-you-mean.

use super::*;

// ---------------------------------------------------------------------------
// Source and spans

/// The configuration text with the spans of its keys, to locate errors.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: String,
    pub text: String,
    /// Dotted key path -> (key span, value span).
    pub(crate) spans: BTreeMap<String, (Range<usize>, Range<usize>)>,
    pub(crate) overrides: Vec<Override>,
}

impl Source {
    fn line_col(&self, offset: usize) -> (usize, usize, String) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let line_end = self.text[line_start..]
            .find('\n')
            .map(|i| line_start + i)
            .unwrap_or(self.text.len());
        let column = self.text[line_start..offset].chars().count() + 1;
        (line, column, self.masked(line_start, line_end))
    }

    /// Whether a line may hold an env value when the file could not be
    /// parsed (no spans yet): under `[cluster.env]`, or an `env` key or
    /// inline table of `[cluster]`, or a dotted `cluster.env` key.
    fn may_hold_env(&self, start: usize) -> bool {
        let line = self.text[start..].lines().next().unwrap_or("").trim_start();
        let header = self.text[..start]
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| l.starts_with('['))
            .map(|l| {
                l.trim_matches(|c| c == '[' || c == ']')
                    .replace([' ', '"'], "")
            })
            .unwrap_or_default();
        // An environment's overlay (`[env.NAME.cluster.env]`) holds them too.
        let header = strip_overlay(&header).unwrap_or(&header);
        let bare = line.replace([' ', '"'], "");
        let bare = strip_overlay(&bare).unwrap_or(&bare);
        header.starts_with("cluster.env")
            || (header == "cluster" && line.starts_with("env"))
            || (header == "env" && bare.contains(".cluster.env"))
            || bare.starts_with("cluster.env")
            || bare.starts_with("[cluster.env")
    }

    /// A line of the file as errors quote it: the values of `[cluster.env]`
    /// (which may be secrets) replaced by `(sensitive)`.
    fn masked(&self, start: usize, end: usize) -> String {
        if self.spans.is_empty() && self.may_hold_env(start) {
            return format!(
                "{} (this line is not shown: it may hold a secret)",
                crate::model::SENSITIVE
            );
        }
        let mut hidden: Vec<Range<usize>> = self
            .spans
            .iter()
            .filter(|(path, _)| holds_env_value(path))
            .map(|(_, (_, v))| v.start.max(start)..v.end.min(end))
            .filter(|r| r.start < r.end)
            .collect();
        hidden.sort_by_key(|r| r.start);
        let mut out = String::new();
        let mut at = start;
        for r in hidden {
            if r.start < at {
                continue;
            }
            out.push_str(&self.text[at..r.start]);
            out.push_str(crate::model::SENSITIVE);
            at = r.end;
        }
        out.push_str(&self.text[at..end]);
        out.trim_end().to_string()
    }

    pub(crate) fn at_span(&self, span: Range<usize>) -> Location {
        let (line, column, line_text) = self.line_col(span.start);
        let width = self.text[span.start..span.end.min(self.text.len())]
            .lines()
            .next()
            .map(|l| l.chars().count())
            .unwrap_or(1);
        Location::File {
            path: self.path.clone(),
            line,
            column,
            line_text,
            width,
        }
    }

    /// Locates a key path: the override that set it, else its value in the
    /// file, else the nearest enclosing table written in the file.
    pub fn locate(&self, key: &str) -> Option<Location> {
        if let Some(o) = self.overrides.iter().rev().find(|o| o.key == key) {
            return Some(Location::Override(o.location()));
        }
        if let Some((_, value)) = self.spans.get(key) {
            return Some(self.at_span(value.clone()));
        }
        let mut parts: Vec<&str> = key.split('.').collect();
        while parts.len() > 1 {
            parts.pop();
            let parent = parts.join(".");
            // A table that only an override brought in: point at the override.
            if !self.spans.contains_key(&parent) {
                if let Some(o) = self
                    .overrides
                    .iter()
                    .rev()
                    .find(|o| o.key.starts_with(&format!("{parent}.")))
                {
                    return Some(Location::Override(o.location()));
                }
            }
            if let Some((k, _)) = self.spans.get(&parent) {
                return Some(self.at_span(k.clone()));
            }
        }
        Some(Location::Default(format!(
            "{}: `{key}` is not set in the file",
            self.path
        )))
    }

    /// Turns key-located errors into located configuration errors.
    pub fn errors(&self, errors: Vec<KeyError>) -> ConfigErrors {
        ConfigErrors(
            errors
                .into_iter()
                .map(|e| ConfigError {
                    location: self.locate(&e.key),
                    message: e.message,
                    hint: e.hint,
                })
                .collect(),
        )
    }

    /// The deepest key whose value holds this byte offset.
    pub(crate) fn key_at(&self, offset: usize) -> Option<String> {
        self.spans
            .iter()
            .filter(|(_, (k, v))| v.contains(&offset) || k.contains(&offset))
            .max_by_key(|(path, _)| path.matches('.').count())
            .map(|(path, _)| path.clone())
    }

    /// The overrides in force, in the order given.
    pub fn overrides(&self) -> &[Override] {
        &self.overrides
    }
}

/// `env.NAME.REST` -> `REST` (`[env.NAME.REST]` -> `[REST]` too).
fn strip_overlay(path: &str) -> Option<&str> {
    let rest = path
        .strip_prefix("env.")
        .or_else(|| path.strip_prefix("[env."))?;
    rest.split_once('.').map(|(_, r)| r)
}

/// Whether a key path holds a `[cluster.env]` value (maybe a secret), in
/// the base or in an environment's overlay.
pub(crate) fn holds_env_value(path: &str) -> bool {
    path.starts_with("cluster.env.")
        || strip_overlay(path).is_some_and(|p| p.starts_with("cluster.env."))
}

pub(crate) fn collect_spans(
    table: &toml::de::DeTable<'_>,
    prefix: &str,
    out: &mut BTreeMap<String, (Range<usize>, Range<usize>)>,
) {
    for (k, v) in table.iter() {
        let path = if prefix.is_empty() {
            k.get_ref().to_string()
        } else {
            format!("{prefix}.{}", k.get_ref())
        };
        out.insert(path.clone(), (k.span(), v.span()));
        if let Some(t) = v.get_ref().as_table() {
            collect_spans(t, &path, out);
        }
    }
}

/// Levenshtein distance, for did-you-mean hints.
pub(crate) fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

pub(crate) fn did_you_mean<'a>(
    word: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .map(|c| (distance(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min()
        .map(|(_, c)| c)
}

pub(crate) fn check_keys(
    table: &toml::de::DeTable<'_>,
    prefix: &str,
    schema: &[(&str, Kind)],
    source: &Source,
    errors: &mut Vec<ConfigError>,
) {
    for (k, v) in table.iter() {
        let key = k.get_ref().as_ref();
        let path = if prefix.is_empty() {
            key.to_string()
        } else {
            format!("{prefix}.{key}")
        };
        let Some((_, kind)) = schema.iter().find(|(name, _)| *name == key) else {
            let place = if prefix.is_empty() {
                "at the top level".to_string()
            } else {
                format!("in `[{prefix}]`")
            };
            let hint = match did_you_mean(key, schema.iter().map(|(n, _)| *n)) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!(
                    "known keys here: {}",
                    schema
                        .iter()
                        .map(|(n, _)| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            errors.push(ConfigError {
                message: format!("unknown key `{key}` {place}"),
                location: Some(source.at_span(k.span())),
                hint: Some(hint),
            });
            continue;
        };
        match (kind, v.get_ref().as_table()) {
            (Kind::Table(inner), Some(t)) => check_keys(t, &path, inner, source, errors),
            (Kind::Named(inner), Some(t)) => {
                for (name, group) in t.iter() {
                    let gpath = format!("{path}.{}", name.get_ref());
                    match group.get_ref().as_table() {
                        Some(g) => check_keys(g, &gpath, inner, source, errors),
                        None => errors.push(ConfigError {
                            message: format!("`{gpath}` must be a table"),
                            location: Some(source.at_span(group.span())),
                            hint: Some(if path == "env" {
                                format!("declare an environment as `[{gpath}]` with the tables it changes below, e.g. `[{gpath}.head]`")
                            } else {
                                format!("declare a worker group as `[{gpath}]` with `hosts = [...]`")
                            }),
                        }),
                    }
                }
            }
            _ => {}
        }
    }
}
