//! `transform`: text in, text out, changed as the `mode` setting says.
//!
//! ```text
//! plughost exec transform hello --init '{"mode":"upper"}'   # HELLO
//! ```

use plugin_api::{export_plugin, ConfigField, Context, Output, Plugin, PluginError};
use serde::Deserialize;

/// What to do to the text.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `hello` -> `HELLO`
    #[default]
    Upper,
    /// `HeLLo` -> `hello`
    Lower,
    /// `hello` -> `olleh` (by characters, not bytes)
    Reverse,
}

/// The configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    mode: Mode,
}

/// The plugin.
#[derive(Default)]
pub struct Transform {
    mode: Mode,
}

impl Plugin for Transform {
    type Config = Config;
    const NAME: &'static str = "transform";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "Upper-cases, lower-cases or reverses text";
    const AUTHOR: &'static str = "plughost developers";
    const LICENSE: &'static str = "MIT OR Apache-2.0";
    const TAGS: &'static [&'static str] = &["example", "text"];
    const CONFIG_SCHEMA: &'static [ConfigField] = &[ConfigField::string("mode")
        .default_json(r#""upper""#)
        .describe("upper, lower or reverse")];

    fn init(&mut self, config: Config) -> Result<(), PluginError> {
        self.mode = config.mode;
        Ok(())
    }

    fn execute(
        &self,
        _ctx: &Context<'_>,
        input: &[u8],
        output: &mut Output<'_>,
    ) -> Result<(), PluginError> {
        let text = std::str::from_utf8(input)
            .map_err(|e| PluginError::new(format!("input is not UTF-8 text: {e}")))?;
        match self.mode {
            Mode::Upper => output.write(text.to_uppercase().as_bytes()),
            Mode::Lower => output.write(text.to_lowercase().as_bytes()),
            Mode::Reverse => {
                let mut utf8 = [0u8; 4];
                for c in text.chars().rev() {
                    output.write(c.encode_utf8(&mut utf8).as_bytes());
                }
            }
        }
        Ok(())
    }
}

export_plugin!(Transform);

#[cfg(test)]
mod tests {
    use plugin_api::testing::Harness;

    use super::Transform;

    #[test]
    fn each_mode_through_the_real_entry_points() -> Result<(), plugin_api::testing::TestError> {
        let upper = Harness::<Transform>::init(r#"{"mode": "upper"}"#)?;
        assert_eq!(upper.execute_str("hello")?, "HELLO");
        upper.shutdown()?;
        let reverse = Harness::<Transform>::init(r#"{"mode": "reverse"}"#)?;
        assert_eq!(reverse.execute_str("stressed")?, "desserts");
        Ok(())
    }

    #[test]
    fn a_wrong_config_is_refused_as_a_host_refuses_it() {
        let error = Harness::<Transform>::init(r#"{"mode": 3}"#).unwrap_err();
        assert_eq!(
            error.to_string(),
            "plugin transform: config key `mode` must be a string, found an integer (3)"
        );
    }
}
