//! The host's state as the JSON the API answers with (and the status page shows): one
//! [`PluginView`] per plugin, from its status in the host, its call metrics and its health
//! in the dispatcher.

use std::time::{Duration, SystemTime};

use plughost::{ConfigKey, MetricsSnapshot, PluginHealth, PluginStatus, SignatureStatus};
use serde::Serialize;
use utoipa::ToSchema;

use crate::state::State;

/// One plugin: what `plughost list` and `inspect` show, its state in the host, and how its
/// calls go.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct PluginView {
    /// Its name.
    pub(crate) name: String,
    /// `running`, `disabled`, `refused` (its file was refused and no version runs), `stopped`
    /// (its file was deleted), or `failed`.
    pub(crate) state: String,
    /// Whether the settings let it run.
    pub(crate) enabled: bool,
    /// The version in service, else the last one seen.
    pub(crate) version: Option<String>,
    /// The plugin-api version it was built against.
    pub(crate) api_version: Option<String>,
    /// What it does.
    pub(crate) description: Option<String>,
    /// The library file.
    pub(crate) file: Option<String>,
    /// `in-process` or `process` (a worker process of its own).
    pub(crate) isolation: String,
    /// When the version in service began serving (RFC 3339).
    pub(crate) loaded_at: Option<String>,
    /// How many times a new version replaced a running one.
    pub(crate) reloads: u64,
    /// How many of its files were refused.
    pub(crate) refusals: u64,
    /// The last refusal: when and why.
    pub(crate) last_refusal: Option<RefusalView>,
    /// Closed versions still in memory.
    pub(crate) still_mapped: usize,
    /// Its last health answer, if it was checked.
    pub(crate) health: Option<HealthView>,
    /// Its circuit breaker, if it has one: `closed`, `open` or `half_open`.
    pub(crate) circuit: Option<String>,
    /// Its calls through the guarded path, if it was called.
    pub(crate) calls: Option<CallsView>,
    /// The topics it publishes.
    pub(crate) emits: Vec<String>,
    /// The topic patterns it receives.
    pub(crate) subscribes: Vec<String>,
    /// The plugins it requires (`name range`).
    pub(crate) requires: Vec<String>,
    /// What it declares it needs, as written in its descriptor.
    pub(crate) capabilities: Vec<String>,
    /// What it needs to be granted, and why: its declared capabilities, then those its
    /// dependencies and events imply. Empty if its version is not known.
    pub(crate) needs: Vec<NeedView>,
    /// What the settings grant it (`[plugins.NAME] grant`).
    pub(crate) grants: Vec<String>,
    /// The SHA-256 of the code in service: of the bytes its running version was loaded from,
    /// not of whatever its file holds now. `null` when no version runs.
    pub(crate) sha256: Option<String>,
    /// Who approved the code in service: the id of the trusted key whose signature covers
    /// those bytes, or `unsigned` when no trusted key's does (see `signature`). `null` when no
    /// version runs.
    pub(crate) signer: Option<String>,
    /// Its signature in words: `signed by trusted key ID`, `unsigned`, or `not trusted:
    /// REASON`. `null` when no version runs.
    pub(crate) signature: Option<String>,
}

/// A capability a plugin needs, and where the need comes from.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct NeedView {
    /// The capability, as `grant = [...]` takes it (`fs:read:/etc/ssl`, `call:storage`).
    pub(crate) capability: String,
    /// `declared` (its `CAPABILITIES`), `dependency` (a plugin it requires), `emits` (it
    /// publishes events) or `subscribes` (it receives events).
    pub(crate) source: String,
}

/// Every plugin the host knows, and the files it refused that serve no plugin.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct PluginList {
    /// Every plugin, by name.
    pub(crate) plugins: Vec<PluginView>,
    /// Refused files that no plugin runs from (broken or foreign files, say).
    pub(crate) refused: Vec<RefusalView>,
}

impl PluginList {
    pub(crate) fn of(state: &State) -> Self {
        let host = state.host();
        PluginList {
            plugins: host
                .status()
                .iter()
                .map(|status| PluginView::of(state, status))
                .collect(),
            refused: host
                .refusals()
                .into_iter()
                .map(|r| RefusalView {
                    file: r.file.display().to_string(),
                    reason: r.reason,
                    at: rfc3339(r.at),
                })
                .collect(),
        }
    }
}

/// One plugin with its configuration: [`PluginView`] and what `inspect` adds.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct PluginDetail {
    #[serde(flatten)]
    pub(crate) plugin: PluginView,
    /// The keys its configuration accepts.
    #[schema(value_type = Vec<Object>)]
    pub(crate) config_schema: Vec<ConfigKey>,
    /// Its configuration in the settings, sensitive values shown as `***`.
    #[schema(value_type = Object)]
    pub(crate) config: serde_json::Map<String, serde_json::Value>,
    /// Its author.
    pub(crate) author: Option<String>,
    /// Its licence.
    pub(crate) license: Option<String>,
}

/// A refused file.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct RefusalView {
    /// The file.
    pub(crate) file: String,
    /// Why, in one line naming the file.
    pub(crate) reason: String,
    /// When (RFC 3339).
    pub(crate) at: String,
}

/// A health answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct HealthView {
    /// `healthy`, `degraded`, `unhealthy` or `unknown`.
    pub(crate) status: &'static str,
    /// The plugin's reason, for `degraded` and `unhealthy`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reason: Option<String>,
}

/// How a plugin's calls went.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct CallsView {
    /// Calls made, every outcome.
    pub(crate) calls: u64,
    /// Calls per second lately.
    pub(crate) per_second: f64,
    /// Calls that did not succeed.
    pub(crate) errors: u64,
    /// `errors / calls`, 0 without calls.
    pub(crate) error_rate: f64,
    /// Calls that ran out of time.
    pub(crate) timeouts: u64,
    /// Calls in which the plugin panicked.
    pub(crate) panics: u64,
    /// Calls refused by a limit or an open circuit.
    pub(crate) rejected: u64,
    /// Calls running now.
    pub(crate) in_flight: i64,
    /// Median call time, milliseconds.
    pub(crate) p50_ms: f64,
    /// 95th percentile, milliseconds.
    pub(crate) p95_ms: f64,
    /// 99th percentile, milliseconds.
    pub(crate) p99_ms: f64,
}

impl PluginView {
    pub(crate) fn of(state: &State, status: &PluginStatus) -> Self {
        let dispatcher = &state.dispatcher;
        let info = status.info.as_ref();
        let metrics = dispatcher.metrics(&status.name);
        PluginView {
            name: status.name.clone(),
            state: status.state.as_str().to_owned(),
            enabled: status.enabled,
            version: info.map(|i| i.version.to_string()),
            api_version: info.map(|i| i.api_version.to_string()),
            description: info.map(|i| i.description.clone()),
            file: status.file.as_ref().map(|f| f.display().to_string()),
            isolation: text(&status.isolation),
            loaded_at: status.loaded_at.map(rfc3339),
            reloads: status.reloads,
            refusals: status.refusals,
            last_refusal: status.last_refusal.as_ref().map(|r| RefusalView {
                file: r.file.display().to_string(),
                reason: r.reason.clone(),
                at: rfc3339(r.at),
            }),
            still_mapped: status.still_mapped,
            health: dispatcher.last_health(&status.name).map(|h| health(&h)),
            circuit: (status.state == plughost::PluginState::Running)
                .then(|| dispatcher.circuit(&status.name))
                .flatten()
                .map(|c| c.as_str().to_owned()),
            calls: metrics.map(|m| calls(state, &status.name, &m)),
            emits: info.map(|i| i.emits.clone()).unwrap_or_default(),
            subscribes: info.map(|i| i.subscribes.clone()).unwrap_or_default(),
            requires: info
                .map(|i| i.dependencies.iter().map(ToString::to_string).collect())
                .unwrap_or_default(),
            capabilities: info.map(|i| i.capabilities.clone()).unwrap_or_default(),
            needs: info
                .and_then(|i| i.needs().ok())
                .unwrap_or_default()
                .iter()
                .map(|need| NeedView {
                    capability: need.capability.to_string(),
                    source: text(&need.source),
                })
                .collect(),
            grants: status.grants.iter().map(ToString::to_string).collect(),
            sha256: status.integrity.as_ref().map(|i| i.sha256.to_string()),
            signer: status.integrity.as_ref().map(|i| match &i.signature {
                SignatureStatus::Trusted { key_id } => key_id.clone(),
                _ => "unsigned".to_owned(),
            }),
            signature: status.integrity.as_ref().map(|i| i.signature.to_string()),
        }
    }
}

impl PluginDetail {
    pub(crate) fn of(state: &State, status: &PluginStatus) -> Self {
        let info = status.info.as_ref();
        PluginDetail {
            plugin: PluginView::of(state, status),
            config_schema: info.map(|i| i.config_schema.clone()).unwrap_or_default(),
            config: state.host().config().masked_config(&status.name, info),
            author: info.map(|i| i.author.clone()),
            license: info.map(|i| i.license.clone()),
        }
    }
}

fn calls(state: &State, name: &str, m: &MetricsSnapshot) -> CallsView {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    CallsView {
        calls: m.calls,
        per_second: state.rates.rate(name, m.calls),
        errors: m.errors,
        error_rate: if m.calls == 0 {
            0.0
        } else {
            m.errors as f64 / m.calls as f64
        },
        timeouts: m.timeouts,
        panics: m.panics,
        rejected: m.rejected,
        in_flight: m.in_flight,
        p50_ms: ms(m.p50),
        p95_ms: ms(m.p95),
        p99_ms: ms(m.p99),
    }
}

fn health(health: &PluginHealth) -> HealthView {
    let (status, reason) = match health {
        PluginHealth::Healthy => ("healthy", None),
        PluginHealth::Degraded(why) => ("degraded", Some(why.clone())),
        PluginHealth::Unhealthy(why) => ("unhealthy", Some(why.clone())),
        _ => ("unknown", None),
    };
    HealthView { status, reason }
}

/// A value's serde name (`in-process`).
fn text<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(text)) => text,
        _ => String::new(),
    }
}

pub(crate) fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}
