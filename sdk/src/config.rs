//! Plugin configuration: the JSON object the team spec gives a plugin.

use serde::de::DeserializeOwned;

/// Parses a plugin's configuration. An empty string means `{}`, so a config
/// type whose fields all have defaults works without any configuration.
/// Unknown fields are the config type's business (`#[serde(deny_unknown_fields)]`).
pub fn parse<C: DeserializeOwned>(json: &str) -> Result<C, String> {
    let json = if json.trim().is_empty() { "{}" } else { json };
    serde_json::from_str(json).map_err(|e| format!("bad plugin config: {e}"))
}

/// Sampling and routing settings that model-calling plugins accept in
/// their config.
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Sampling {
    /// Sampling temperature (the node's default when absent).
    pub temperature: Option<f32>,
    /// Most tokens to generate (the node's default when absent).
    pub max_tokens: Option<u32>,
    /// Only route to nodes carrying these tags.
    pub tags: Vec<String>,
    /// Route to this node only (empty: any).
    pub node: String,
}

#[cfg(test)]
mod tests {
    //! Config parsing: defaults, errors.
    use super::*;

    #[derive(serde::Deserialize, Debug, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct C {
        #[serde(default)]
        share: f64,
    }

    #[test]
    fn empty_config_uses_defaults() {
        assert_eq!(parse::<C>("").unwrap(), C { share: 0.0 });
        assert_eq!(parse::<C>("{\"share\":0.5}").unwrap(), C { share: 0.5 });
    }

    #[test]
    fn unknown_field_is_named_in_the_error() {
        let e = parse::<C>("{\"shar\":1}").unwrap_err();
        assert!(e.contains("unknown field `shar`"), "{e}");
    }
}
