//! `filter`: a JSON array of numbers in, the numbers matching the configured rule out.
//!
//! ```text
//! plughost exec filter '[1, 5, 10, 20]' --init '{"rule":"gt","value":5}'   # [10,20]
//! ```

use plugin_api::{export_plugin, json, ConfigField, Context, Output, Plugin, PluginError};
use serde::Deserialize;

/// How a number is compared with `value`.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rule {
    /// greater than
    #[default]
    Gt,
    /// greater than or equal
    Ge,
    /// less than
    Lt,
    /// less than or equal
    Le,
    /// equal
    Eq,
    /// not equal
    Ne,
}

/// The configuration.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    rule: Rule,
    #[serde(default)]
    value: f64,
}

/// The plugin.
#[derive(Default)]
pub struct Filter {
    config: Config,
}

impl Filter {
    fn keeps(&self, x: f64) -> bool {
        let v = self.config.value;
        match self.config.rule {
            Rule::Gt => x > v,
            Rule::Ge => x >= v,
            Rule::Lt => x < v,
            Rule::Le => x <= v,
            Rule::Eq => x == v,
            Rule::Ne => x != v,
        }
    }
}

impl Plugin for Filter {
    type Config = Config;
    const NAME: &'static str = "filter";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "Keeps the numbers of a JSON array that match a rule";
    const AUTHOR: &'static str = "plughost developers";
    const LICENSE: &'static str = "MIT OR Apache-2.0";
    const TAGS: &'static [&'static str] = &["example", "json"];
    const CONFIG_SCHEMA: &'static [ConfigField] = &[
        ConfigField::string("rule")
            .default_json(r#""gt""#)
            .describe("gt, ge, lt, le, eq or ne"),
        ConfigField::float("value")
            .default_json("0")
            .describe("The number each element is compared with"),
    ];

    fn init(&mut self, config: Config) -> Result<(), PluginError> {
        self.config = config;
        Ok(())
    }

    fn execute(
        &self,
        _ctx: &Context<'_>,
        input: &[u8],
        output: &mut Output<'_>,
    ) -> Result<(), PluginError> {
        let numbers: Vec<serde_json::Number> = json::from_input(input)?;
        let kept: Vec<&serde_json::Number> = numbers
            .iter()
            .filter(|n| n.as_f64().is_some_and(|x| self.keeps(x)))
            .collect();
        json::write(output, &kept)
    }
}

export_plugin!(Filter);

#[cfg(test)]
mod tests {
    use plugin_api::testing::Harness;

    use super::Filter;

    #[test]
    fn keeps_the_numbers_matching_the_rule() -> Result<(), plugin_api::testing::TestError> {
        let filter = Harness::<Filter>::init(r#"{"rule": "gt", "value": 5}"#)?;
        assert_eq!(filter.execute_str("[1, 5, 10, 20]")?, "[10,20]");
        let error = filter.execute_str("not json").unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("plugin filter returned an error"),
            "{error}"
        );
        Ok(())
    }

    #[test]
    fn the_schema_fills_in_the_defaults() -> Result<(), plugin_api::testing::TestError> {
        // rule "gt", value 0
        let filter = Harness::<Filter>::init("")?;
        assert_eq!(filter.execute_str("[-1, 0, 2]")?, "[2]");
        Ok(())
    }
}
