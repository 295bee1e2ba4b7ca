//! The JSON Schema of `seedcore.toml` (`seedcore schema`, shipped as
//! `seedcore.schema.json` for editors), generated from the very `Raw*` types
//! the parser reads, so it cannot drift from them: their doc comments become
//! descriptions, `deny_unknown_fields` becomes `additionalProperties: false`,
//! and the keys that take one of a few words carry an `enum`.

use schemars::JsonSchema;
use serde_json::Value;

/// One `[cluster.env]` entry, as the loader accepts it (`config::secrets`):
/// a plain string, or a table naming where a secret comes from.
#[derive(JsonSchema)]
#[serde(untagged, deny_unknown_fields)]
#[allow(dead_code)] // a shape for the schema only; `toml::Value` is what is parsed
pub(crate) enum EnvValue {
    /// A plain value, shown in the plan.
    Plain(String),
    /// An inline value: secret unless `secret = false`.
    Inline {
        value: String,
        /// Default `true`: shown as `(sensitive)`, handed to nodes as a file.
        secret: Option<bool>,
    },
    /// A secret read from an environment variable of the machine seedcore runs on.
    Env {
        env: String,
        /// A value from `env` is always secret.
        secret: Option<bool>,
    },
    /// A secret read from a file of the machine seedcore runs on (one trailing newline dropped).
    File {
        file: String,
        /// A value from `file` is always secret.
        secret: Option<bool>,
    },
}

/// The schema as JSON (draft 7, which editors' TOML extensions read).
pub fn json_schema() -> Value {
    let generator = schemars::generate::SchemaSettings::draft07().into_generator();
    let mut schema = generator
        .into_root_schema_for::<super::RawConfig>()
        .to_value();
    // TOML has no null: an optional key is one that is left out.
    drop_null(&mut schema);
    // Every key of the `Raw*` tables is optional to serde (the loader names
    // a missing one itself), also those read through `#[schemars(with)]`.
    if let Some(map) = schema.as_object_mut() {
        map.remove("required");
    }
    if let Some(Value::Object(definitions)) = schema.get_mut("definitions") {
        for (name, definition) in definitions.iter_mut() {
            if let (true, Some(map)) = (name.starts_with("Raw"), definition.as_object_mut()) {
                map.remove("required");
            }
        }
    }
    schema["title"] = Value::from("seedcore.toml");
    schema
}

/// `seedcore schema`'s text: pretty JSON with a trailing newline.
pub fn json_schema_text() -> String {
    let mut text = serde_json::to_string_pretty(&json_schema()).expect("a schema serializes");
    text.push('\n');
    text
}

/// Removes `null` from every `type` list and every `anyOf` (what schemars
/// writes for `Option`), leaving the one remaining alternative in place.
fn drop_null(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Array(types)) = map.get_mut("type") {
                types.retain(|t| t != "null");
                if types.len() == 1 {
                    let only = types.remove(0);
                    map.insert("type".to_string(), only);
                }
            }
            if let Some(Value::Array(any)) = map.get_mut("anyOf") {
                any.retain(|s| s.get("type").is_none_or(|t| t != "null"));
                if any.len() == 1 {
                    let only = any.remove(0);
                    map.remove("anyOf");
                    match only {
                        // Draft 7 ignores the siblings of a `$ref`.
                        Value::Object(inner) if inner.contains_key("$ref") => {
                            map.insert("allOf".to_string(), Value::Array(vec![inner.into()]));
                        }
                        Value::Object(inner) => {
                            for (k, v) in inner {
                                map.entry(k).or_insert(v);
                            }
                        }
                        _ => {}
                    }
                }
            }
            // An `enum` listing `null` (from `extend` on an `Option`) has no use either.
            if let Some(Value::Array(words)) = map.get_mut("enum") {
                words.retain(|w| !w.is_null());
            }
            if map.get("default").is_some_and(Value::is_null) {
                map.remove("default");
            }
            for v in map.values_mut() {
                drop_null(v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(drop_null),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn unknown_keys_are_refused_by_the_schema_too() {
        let schema = super::json_schema();
        assert_eq!(schema["additionalProperties"], false);
        assert_eq!(
            schema["definitions"]["RawHead"]["additionalProperties"],
            false
        );
    }
}
