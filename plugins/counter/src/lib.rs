//! `counter`: stateful. Each Execute adds `step` to a count that starts at `start` and answers
//! with the new count. On Shutdown it writes a line to `report_file`, if set, so you can see
//! that Shutdown ran and what the count was. A hot reload hands the count to the new version.

use std::sync::atomic::{AtomicU64, Ordering};

use plugin_api::{export_plugin, ConfigField, Context, Output, Plugin, PluginError};
use serde::Deserialize;

/// The configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    start: u64,
    #[serde(default = "one")]
    step: u64,
    #[serde(default)]
    report_file: Option<String>,
}

fn one() -> u64 {
    1
}

/// The plugin.
#[derive(Default)]
pub struct Counter {
    count: AtomicU64,
    step: u64,
    report_file: Option<String>,
}

impl Plugin for Counter {
    type Config = Config;
    const NAME: &'static str = "counter";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "Counts its calls and answers with the count";
    const AUTHOR: &'static str = "plughost developers";
    const LICENSE: &'static str = "MIT OR Apache-2.0";
    const TAGS: &'static [&'static str] = &["example", "stateful"];
    const CONFIG_SCHEMA: &'static [ConfigField] = &[
        ConfigField::integer("start")
            .default_json("0")
            .describe("The count before the first call"),
        ConfigField::integer("step")
            .default_json("1")
            .describe("How much each call adds"),
        ConfigField::string("report_file")
            .describe("Where Shutdown writes the final count (optional)"),
    ];

    fn validate_config(config: &Config) -> Result<(), PluginError> {
        if config.step == 0 {
            return Err(PluginError::new("step must be at least 1"));
        }
        Ok(())
    }

    fn init(&mut self, config: Config) -> Result<(), PluginError> {
        self.count = AtomicU64::new(config.start);
        self.step = config.step;
        self.report_file = config.report_file;
        Ok(())
    }

    fn execute(
        &self,
        _ctx: &Context<'_>,
        _input: &[u8],
        output: &mut Output<'_>,
    ) -> Result<(), PluginError> {
        let count = self.count.fetch_add(self.step, Ordering::Relaxed) + self.step;
        output.write(count.to_string().as_bytes());
        Ok(())
    }

    /// Hot reload keeps the count: `count=<n>`.
    fn save_state(&self) -> Option<Vec<u8>> {
        Some(format!("count={}", self.count.load(Ordering::Relaxed)).into_bytes())
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), PluginError> {
        let count = std::str::from_utf8(state)
            .ok()
            .and_then(|s| s.strip_prefix("count="))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| PluginError::new("unrecognised state from the previous version"))?;
        self.count = AtomicU64::new(count);
        Ok(())
    }

    fn shutdown(&mut self) -> Result<(), PluginError> {
        let count = self.count.load(Ordering::Relaxed);
        plugin_api::info!("shutting down at {count}");
        if let Some(path) = &self.report_file {
            std::fs::write(path, format!("counter shut down at {count}\n"))
                .map_err(|e| PluginError::new(format!("cannot write {path}: {e}")))?;
        }
        Ok(())
    }
}

export_plugin!(Counter);

#[cfg(test)]
mod tests {
    use plugin_api::testing::Harness;

    use super::Counter;

    #[test]
    fn counts_from_start_by_step() -> Result<(), plugin_api::testing::TestError> {
        let counter = Harness::<Counter>::init(r#"{"start": 10, "step": 5}"#)?;
        assert_eq!(counter.execute_str("")?, "15");
        assert_eq!(counter.execute_str("")?, "20");
        Ok(())
    }

    #[test]
    fn its_own_check_refuses_a_zero_step() {
        let error = Harness::<Counter>::init(r#"{"step": 0}"#).unwrap_err();
        assert_eq!(
            error.to_string(),
            "plugin counter returned an error: step must be at least 1"
        );
    }
}
