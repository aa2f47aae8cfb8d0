//! `/healthz` (the process answers) and `/readyz` (every enabled plugin serves).

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::state;

/// The process is up.
#[derive(Serialize, ToSchema)]
pub(crate) struct Alive {
    /// Always `ok`.
    status: &'static str,
    /// Seconds since the host was created.
    uptime_seconds: u64,
}

/// Whether every enabled plugin serves.
#[derive(Serialize, ToSchema)]
pub(crate) struct Readiness {
    /// True once the first load has finished and every enabled plugin runs.
    ready: bool,
    /// The enabled plugins that do not run, with their state and last refusal.
    waiting: Vec<Waiting>,
}

/// An enabled plugin that does not serve.
#[derive(Serialize, ToSchema)]
pub(crate) struct Waiting {
    plugin: String,
    state: String,
    /// Why, if its file was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// Whether the process is up (always 200 while it answers).
#[utoipa::path(get, path = "/healthz", tag = "host", responses((status = 200, body = Alive)))]
pub(crate) async fn healthz(State(state): State<Arc<state::State>>) -> Json<Alive> {
    let uptime = SystemTime::now()
        .duration_since(state.host().started_at())
        .unwrap_or_default();
    Json(Alive {
        status: "ok",
        uptime_seconds: uptime.as_secs(),
    })
}

/// Whether the host serves: 200 once the first load has finished and every enabled plugin
/// runs (but those whose file was removed), else 503 with those that do not.
#[utoipa::path(get, path = "/readyz", tag = "host",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub(crate) async fn readyz(
    State(state): State<Arc<state::State>>,
) -> (StatusCode, Json<Readiness>) {
    let host = state.host();
    let waiting: Vec<Waiting> = host
        .status()
        .into_iter()
        // A plugin whose file was taken away (`stopped`) was removed on purpose; one refused
        // or failed was meant to run.
        .filter(|s| {
            s.enabled
                && matches!(
                    s.state,
                    plughost::PluginState::Refused | plughost::PluginState::Failed
                )
        })
        .map(|s| Waiting {
            plugin: s.name,
            state: s.state.as_str().to_owned(),
            reason: s.last_refusal.map(|r| r.reason),
        })
        .collect();
    let ready = host.is_started() && waiting.is_empty();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(Readiness { ready, waiting }))
}
