//! `[[node]]` tables of a team spec: what each kind of node needs, checked
//! at load so that a bad node fails before any model is called, with an
//! error naming the node and the field.

use std::path::Path;
use std::sync::Arc;

use super::openai::{OpenAiBackend, OpenAiConfig};
use super::router::NodeHandle;
use super::sim::{SimBackend, SimConfig};
use super::Backend;

/// A node whose configuration is wrong, naming the node and the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("node {node:?}: `{field}`: {reason}")]
pub struct NodeError {
    pub node: String,
    pub field: String,
    pub reason: String,
}

impl NodeError {
    /// An error about `field` of `node`.
    pub fn new(node: &str, field: &str, reason: impl Into<String>) -> Self {
        NodeError {
            node: node.into(),
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// The kinds of node.
pub const BACKENDS: [&str; 3] = ["openai", "embedded", "sim"];

/// Keys every node may have, whatever its backend.
pub const COMMON_KEYS: [&str; 7] = [
    "name",
    "backend",
    "tags",
    "max_concurrency",
    "tokens_per_minute",
    "price_in",
    "price_out",
];

/// The backend-specific part of a node.
#[derive(Clone, Debug, PartialEq)]
pub enum BackendSpec {
    OpenAi(OpenAiConfig),
    Embedded(toml::Table),
    Sim(SimConfig),
}

/// One `[[node]]` table, parsed and checked.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeSpec {
    pub name: String,
    pub tags: Vec<String>,
    pub max_concurrency: Option<u32>,
    pub tokens_per_minute: Option<u32>,
    /// Price per million prompt tokens.
    pub price_in: f64,
    /// Price per million completion tokens.
    pub price_out: f64,
    pub backend: BackendSpec,
}

/// The closest of `options` to `word`, if it is close enough to be a typo.
pub fn suggest<'a>(word: &str, options: &[&'a str]) -> Option<&'a str> {
    options
        .iter()
        .map(|o| (strsim::jaro_winkler(word, o), *o))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, o)| o)
}

/// The field named by a serde "unknown field `x`", "missing field `x`" or
/// "duplicate field `x`" message.
fn named_field(message: &str) -> Option<String> {
    let rest = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("missing field `"))
        .or_else(|| message.strip_prefix("duplicate field `"))?;
    Some(rest[..rest.find('`')?].to_string())
}

/// The field a deserialisation error of `table` into `T` is about. A type
/// error does not name its field ("invalid type: string \"x\", expected
/// f64"), so each key is tried alone (with the fields `T` requires filled
/// in from the table, or as strings) until one fails.
pub fn field_of_error<T: serde::de::DeserializeOwned>(
    table: &toml::Table,
    message: &str,
) -> Option<String> {
    if let Some(f) = named_field(message) {
        return Some(f);
    }
    table.iter().find_map(|(key, value)| {
        let mut alone = toml::Table::new();
        alone.insert(key.clone(), value.clone());
        for _ in 0..8 {
            match alone.clone().try_into::<T>() {
                Ok(_) => return None,
                Err(e) => match e
                    .message()
                    .strip_prefix("missing field `")
                    .and_then(|r| r.split('`').next())
                {
                    Some(missing) if !alone.contains_key(missing) => {
                        let v = table
                            .get(missing)
                            .cloned()
                            .unwrap_or_else(|| toml::Value::String("x".into()));
                        alone.insert(missing.to_string(), v);
                    }
                    _ => return Some(key.clone()),
                },
            }
        }
        None
    })
}

impl NodeSpec {
    /// Parses one `[[node]]` table (`index` names it when it has no name).
    pub fn from_table(table: &toml::Table, index: usize) -> Result<Self, NodeError> {
        let name = match table.get("name") {
            Some(toml::Value::String(s)) if !s.trim().is_empty() => s.clone(),
            Some(_) => {
                return Err(NodeError::new(
                    &format!("#{}", index + 1),
                    "name",
                    "must be a non-empty string",
                ))
            }
            None => {
                return Err(NodeError::new(
                    &format!("#{}", index + 1),
                    "name",
                    "is missing",
                ))
            }
        };
        let e = |field: &str, reason: String| NodeError::new(&name, field, reason);
        let backend = match table.get("backend") {
            Some(toml::Value::String(s)) => s.clone(),
            Some(_) => return Err(e("backend", "must be a string".into())),
            None => {
                return Err(e(
                    "backend",
                    format!("is missing; one of {}", BACKENDS.join(", ")),
                ))
            }
        };
        let get_u32 = |key: &str| -> Result<Option<u32>, NodeError> {
            match table.get(key) {
                None => Ok(None),
                Some(toml::Value::Integer(n)) if *n > 0 && *n <= u32::MAX as i64 => {
                    Ok(Some(*n as u32))
                }
                Some(_) => Err(e(key, "must be a positive whole number".into())),
            }
        };
        let get_price = |key: &str| -> Result<f64, NodeError> {
            match table.get(key) {
                None => Ok(0.0),
                Some(toml::Value::Float(f)) if *f >= 0.0 => Ok(*f),
                Some(toml::Value::Integer(n)) if *n >= 0 => Ok(*n as f64),
                Some(_) => Err(e(
                    key,
                    "must be a non-negative number (price per million tokens)".into(),
                )),
            }
        };
        let tags = match table.get("tags") {
            None => vec![],
            Some(toml::Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(String::from)
                        .ok_or_else(|| e("tags", "must be a list of strings".into()))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(e("tags", "must be a list of strings".into())),
        };
        let mut rest = table.clone();
        for k in COMMON_KEYS {
            rest.remove(k);
        }
        fn parse<T: serde::de::DeserializeOwned>(
            name: &str,
            rest: &toml::Table,
        ) -> Result<T, NodeError> {
            rest.clone().try_into().map_err(|err: toml::de::Error| {
                let msg = err.message().trim().to_string();
                let field = field_of_error::<T>(rest, &msg).unwrap_or_else(|| "backend".into());
                NodeError::new(name, &field, msg)
            })
        }
        let backend = match backend.as_str() {
            "openai" => BackendSpec::OpenAi(parse(&name, &rest)?),
            "sim" => BackendSpec::Sim(parse(&name, &rest)?),
            "embedded" => BackendSpec::Embedded(rest),
            other => {
                let hint = suggest(other, &BACKENDS)
                    .map(|s| format!(" (did you mean {s:?}?)"))
                    .unwrap_or_default();
                return Err(e(
                    "backend",
                    format!(
                        "unknown backend {other:?}; expected one of {}{hint}",
                        BACKENDS.join(", ")
                    ),
                ));
            }
        };
        Ok(NodeSpec {
            tags,
            max_concurrency: get_u32("max_concurrency")?,
            tokens_per_minute: get_u32("tokens_per_minute")?,
            price_in: get_price("price_in")?,
            price_out: get_price("price_out")?,
            backend,
            name,
        })
    }

    /// Builds the node: checks what can only be checked against the machine
    /// (environment variables, files) and makes the backend. `base` is the
    /// team spec's folder, against which relative paths are resolved.
    pub fn build(&self, base: &Path) -> Result<NodeHandle, NodeError> {
        let backend: Arc<dyn Backend> = match &self.backend {
            BackendSpec::OpenAi(c) => Arc::new(OpenAiBackend::new(&self.name, c.clone())?),
            BackendSpec::Sim(c) => Arc::new(SimBackend::new(&self.name, c.clone(), base)?),
            BackendSpec::Embedded(table) => super::embedded::build_node(&self.name, table, base)?,
        };
        Ok(NodeHandle {
            backend,
            tags: self.tags.clone(),
            max_concurrency: self.max_concurrency,
            tokens_per_minute: self.tokens_per_minute,
            price_in: self.price_in,
            price_out: self.price_out,
        })
    }
}

#[cfg(test)]
mod tests {
    //! Node tables: each kind of mistake names the node and the field.
    use super::*;

    fn table(s: &str) -> toml::Table {
        s.parse().unwrap()
    }

    fn err(s: &str) -> NodeError {
        match NodeSpec::from_table(&table(s), 0).and_then(|n| n.build(Path::new("."))) {
            Ok(_) => panic!("expected an error for {s:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn unknown_backend_suggests_the_nearest() {
        let e = err("name = \"a\"\nbackend = \"opneai\"");
        assert_eq!((e.node.as_str(), e.field.as_str()), ("a", "backend"));
        assert!(e.reason.contains("did you mean \"openai\""), "{e}");
    }

    #[test]
    fn missing_base_url_and_unknown_keys_name_the_field() {
        let e = err("name = \"a\"\nbackend = \"openai\"\nmodel = \"m\"");
        assert_eq!(e.field, "base_url");
        let e = err("name = \"a\"\nbackend = \"openai\"\nbase_url = \"http://x\"\nmodel = \"m\"\nbse_url = 1");
        assert_eq!(e.field, "bse_url");
        let e = err("name = \"a\"\nbackend = \"openai\"\nbase_url = \"ftp://x\"\nmodel = \"m\"");
        assert_eq!(e.field, "base_url");
        let e = err("name = \"a\"\nbackend = \"openai\"\nbase_url = \"http://x\"\nmodel = \"m\"\nmax_tokens = \"many\"");
        assert_eq!(e.field, "max_tokens", "{e}");
        let e = err("name = \"s\"\nbackend = \"sim\"\naccuracy = \"high\"");
        assert_eq!(e.field, "accuracy", "{e}");
        let e = err("name = \"s\"\nbackend = \"sim\"\nlatency = { kind = \"gamma\" }");
        assert_eq!(e.field, "latency", "{e}");
    }

    #[test]
    fn unset_api_key_variable_is_named() {
        let e = err(
            "name = \"a\"\nbackend = \"openai\"\nbase_url = \"http://x\"\nmodel = \"m\"\napi_key_env = \"CONCLAVE_TEST_UNSET_KEY_VAR\"",
        );
        assert_eq!(e.field, "api_key_env");
        assert!(
            e.reason.contains("CONCLAVE_TEST_UNSET_KEY_VAR is not set"),
            "{e}"
        );
    }

    #[test]
    fn common_fields_are_checked() {
        assert_eq!(
            err("backend = \"sim\"").to_string(),
            "node \"#1\": `name`: is missing"
        );
        assert_eq!(
            err("name = \"s\"\nbackend = \"sim\"\nmax_concurrency = 0").field,
            "max_concurrency"
        );
        assert_eq!(
            err("name = \"s\"\nbackend = \"sim\"\nprice_in = -1").field,
            "price_in"
        );
        let ok = NodeSpec::from_table(
            &table("name = \"s\"\nbackend = \"sim\"\ntags = [\"fast\"]\naccuracy = 0.9"),
            0,
        )
        .unwrap();
        assert_eq!(ok.tags, vec!["fast"]);
        assert!(matches!(ok.backend, BackendSpec::Sim(ref c) if c.accuracy == 0.9));
    }
}
