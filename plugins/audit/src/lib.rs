//! `audit`: an event subscriber. It appends every event on `ticker.>`, `user.>` and
//! `plughost.>` to `file` as one JSON object per line, in the CloudEvents JSON format:
//!
//! ```text
//! {"specversion":"1.0","id":"17","source":"ticker","type":"ticker.tick","time":"2026-11-29T09:00:00.123Z","datacontenttype":"application/json","data":{"seq":17,"at_unix_ms":1795942800123}}
//! ```
//!
//! `data` is the payload itself when it is JSON, else its text (invalid UTF-8 replaced).
//! Extension attributes appear beside the others. Each line is written with a single append,
//! so lines stay whole even when several hosts share the file. Execute answers with how many
//! events it wrote.
//!
//! Try it with the `ticker` example, which publishes `ticker.tick` every second:
//!
//! ```text
//! cargo xtask build-plugins && cargo run --bin plughost -- run
//! tail -f audit.jsonl
//! ```

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use plugin_api::{export_plugin, ConfigField, Context, Event, Output, Plugin, PluginError};
use serde::{Deserialize, Serialize};

/// The configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    file: String,
}

/// The plugin.
#[derive(Debug, Default)]
pub struct Audit {
    path: String,
    file: Mutex<Option<File>>,
    written: AtomicU64,
}

/// One line of the file: a CloudEvent in its JSON format, attributes in the usual order.
#[derive(Serialize)]
struct Line<'a> {
    specversion: &'static str,
    id: &'a str,
    source: &'a str,
    #[serde(rename = "type")]
    topic: &'a str,
    time: String,
    datacontenttype: &'a str,
    #[serde(flatten)]
    extensions: BTreeMap<&'a str, &'a str>,
    data: Data,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Data {
    Json(serde_json::Value),
    Text(String),
}

/// Whether `content_type` is JSON: `application/json`, `text/json` or `+json`, parameters
/// (`; charset=utf-8`) aside.
fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
        || essence.eq_ignore_ascii_case("text/json")
        || essence.to_ascii_lowercase().ends_with("+json")
}

/// `time` as RFC 3339 in UTC with milliseconds: `2026-11-29T09:00:00.123Z`.
fn rfc3339(time: SystemTime) -> String {
    let since_epoch = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = since_epoch.as_secs();
    let (days, second_of_day) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60,
        since_epoch.subsec_millis()
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097); // [0, 146096]
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365; // [0, 399]
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100); // [0, 365]
    let mp = (5 * day_of_year + 2) / 153; // [0, 11], March first
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl Audit {
    /// The line for `event`, newline included.
    fn line(event: &Event<'_>) -> Result<Vec<u8>, PluginError> {
        let data = match serde_json::from_slice(event.data()) {
            Ok(value) if is_json(event.content_type()) => Data::Json(value),
            _ => Data::Text(String::from_utf8_lossy(event.data()).into_owned()),
        };
        const CORE: [&str; 7] = [
            "specversion",
            "id",
            "source",
            "type",
            "time",
            "datacontenttype",
            "data",
        ];
        let line = Line {
            specversion: "1.0",
            id: event.id(),
            source: event.source(),
            topic: event.topic(),
            time: rfc3339(event.time()),
            datacontenttype: event.content_type(),
            extensions: event
                .extensions()
                .filter(|(name, _)| !CORE.contains(name))
                .collect(),
            data,
        };
        let mut bytes = serde_json::to_vec(&line)?;
        bytes.push(b'\n');
        Ok(bytes)
    }
}

impl Plugin for Audit {
    type Config = Config;
    const NAME: &'static str = "audit";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "Appends the events it receives to a JSON-lines file";
    const AUTHOR: &'static str = "plughost developers";
    const LICENSE: &'static str = "MIT OR Apache-2.0";
    // The file is the operator's choice (`file` in its config): the grant says which.
    const CAPABILITIES: &'static [&'static str] = &["fs:write:*"];
    const TAGS: &'static [&'static str] = &["example", "events"];
    const CONFIG_SCHEMA: &'static [ConfigField] = &[ConfigField::string("file")
        .required()
        .describe("The JSON-lines file events are appended to (created if missing)")];
    const SUBSCRIBES: &'static [&'static str] = &["ticker.>", "user.>", "plughost.>"];

    fn validate_config(config: &Config) -> Result<(), PluginError> {
        if config.file.trim().is_empty() {
            return Err(PluginError::new("file must name a file"));
        }
        Ok(())
    }

    fn init(&mut self, config: Config) -> Result<(), PluginError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&config.file)
            .map_err(|e| PluginError::new(format!("cannot open {}: {e}", config.file)))?;
        self.file = Mutex::new(Some(file));
        self.path = config.file;
        Ok(())
    }

    fn execute(
        &self,
        _ctx: &Context<'_>,
        _input: &[u8],
        output: &mut Output<'_>,
    ) -> Result<(), PluginError> {
        output.write(self.written.load(Ordering::Relaxed).to_string().as_bytes());
        Ok(())
    }

    fn on_event(&self, _ctx: &Context<'_>, event: &Event<'_>) -> Result<(), PluginError> {
        let line = Self::line(event)?;
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let file = file
            .as_mut()
            .ok_or_else(|| PluginError::new("the file is closed"))?;
        // One write of the whole line: with O_APPEND, lines from several writers never mix.
        file.write_all(&line)
            .map_err(|e| PluginError::new(format!("cannot write to {}: {e}", self.path)))?;
        self.written.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Hot reload keeps the count: `written=<n>`.
    fn save_state(&self) -> Option<Vec<u8>> {
        Some(format!("written={}", self.written.load(Ordering::Relaxed)).into_bytes())
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), PluginError> {
        let written = std::str::from_utf8(state)
            .ok()
            .and_then(|s| s.strip_prefix("written="))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| PluginError::new("unrecognised state from the previous version"))?;
        self.written = AtomicU64::new(written);
        Ok(())
    }

    fn shutdown(&mut self) -> Result<(), PluginError> {
        let file = self
            .file
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut file) = file {
            file.flush()
                .and_then(|()| file.sync_data())
                .map_err(|e| PluginError::new(format!("cannot flush {}: {e}", self.path)))?;
        }
        plugin_api::info!(
            "wrote {} events to {}",
            self.written.load(Ordering::Relaxed),
            self.path
        );
        Ok(())
    }
}

export_plugin!(Audit);

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn dates() {
        let at = |secs: u64, millis: u64| {
            rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(secs * 1000 + millis))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_795_942_800, 123), "2026-11-29T09:00:00.123Z");
        assert_eq!(at(4_107_542_399, 999), "2100-02-28T23:59:59.999Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000Z");
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn an_event_becomes_one_json_line() -> Result<(), plugin_api::testing::TestError> {
        let file = std::env::temp_dir().join(format!("audit-test-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&file);
        let config = serde_json::json!({ "file": file }).to_string();
        let audit = plugin_api::testing::Harness::<Audit>::init(&config)?;
        audit.on_event("user.created", &serde_json::json!({ "id": 7 }))?;
        assert_eq!(audit.execute_str("")?, "1");
        audit.shutdown()?;
        let line: serde_json::Value =
            serde_json::from_str(std::fs::read_to_string(&file).unwrap().trim()).unwrap();
        std::fs::remove_file(&file).unwrap();
        assert_eq!(
            (line["type"].as_str(), &line["data"]["id"]),
            (Some("user.created"), &serde_json::json!(7))
        );
        Ok(())
    }

    #[test]
    fn json_types() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("application/cloudevents+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json(""));
    }
}
