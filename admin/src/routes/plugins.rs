//! `/plugins`: what runs, and changes to one plugin. Changes that start or stop plugin code
//! (enable, disable, reload, a new config) run on a blocking thread: they wait for Init and
//! Shutdown, each bounded by the host's own time limits.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use plughost::Host;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ErrorBody, Rejected};
use crate::state;
use crate::view::{PluginDetail, PluginList};

type Shared = State<Arc<state::State>>;

/// What a change did.
#[derive(Serialize, ToSchema)]
pub(crate) struct Changed {
    /// The plugin.
    plugin: String,
    /// Its state now.
    state: String,
    /// Its version now, if it runs.
    version: Option<String>,
    /// The plugins the change started, stopped or re-initialised.
    changed: Vec<String>,
    /// Whether `plughost.toml` was written (config changes only).
    #[serde(skip_serializing_if = "Option::is_none")]
    written: Option<bool>,
    /// Why it could not be written, when it was asked to be: the change is applied all the
    /// same.
    #[serde(skip_serializing_if = "Option::is_none")]
    write_error: Option<String>,
}

/// Lists every plugin: what `plughost list` shows, its state, reloads, last refusal, health
/// and call metrics.
#[utoipa::path(get, path = "/plugins", tag = "plugins",
    responses((status = 200, body = PluginList)))]
pub(crate) async fn list(State(state): Shared) -> Json<PluginList> {
    Json(PluginList::of(&state))
}

/// One plugin, with its configuration (sensitive values masked) and its schema.
#[utoipa::path(get, path = "/plugins/{name}", tag = "plugins",
    params(("name" = String, Path, description = "The plugin's name")),
    responses((status = 200, body = PluginDetail), (status = 404, body = ErrorBody)))]
pub(crate) async fn show(
    State(state): Shared,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<PluginDetail>, ApiError> {
    let Path(name) = name.map_err(Rejected)?;
    let status = state
        .host()
        .plugin_status(&name)
        .ok_or_else(|| ApiError::unknown_plugin(&name))?;
    Ok(Json(PluginDetail::of(&state, &status)))
}

/// Enables a plugin and starts it from the plugins folder.
#[utoipa::path(post, path = "/plugins/{name}/enable", tag = "plugins",
    params(("name" = String, Path, description = "The plugin's name")),
    responses((status = 200, body = Changed), (status = 404, body = ErrorBody),
        (status = 409, description = "It cannot start (the reason is given); the setting stays", body = ErrorBody)))]
pub(crate) async fn enable(
    State(state): Shared,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<Changed>, ApiError> {
    switch(state, name, |host, name| {
        host.enable(name).map_err(|e| ApiError::config(name, &e))
    })
    .await
}

/// Disables a plugin: it is shut down and unloaded, and stays off until enabled.
#[utoipa::path(post, path = "/plugins/{name}/disable", tag = "plugins",
    params(("name" = String, Path, description = "The plugin's name")),
    responses((status = 200, body = Changed), (status = 404, body = ErrorBody),
        (status = 409, description = "Refused: running plugins require it", body = ErrorBody)))]
pub(crate) async fn disable(
    State(state): Shared,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<Changed>, ApiError> {
    switch(state, name, |host, name| {
        host.disable(name).map_err(|e| ApiError::config(name, &e))
    })
    .await
}

/// Re-reads the plugin's file now and, if its content changed, replaces the running version
/// with it (a refused file leaves the running version serving).
#[utoipa::path(post, path = "/plugins/{name}/reload", tag = "plugins",
    params(("name" = String, Path, description = "The plugin's name")),
    responses((status = 200, body = Changed), (status = 404, body = ErrorBody),
        (status = 409, description = "The file was refused; the running version keeps serving", body = ErrorBody)))]
pub(crate) async fn reload(
    State(state): Shared,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<Changed>, ApiError> {
    switch(state, name, |host, name| {
        host.reload(name).map_err(|e| ApiError::host(name, &e))
    })
    .await
}

/// Calls the plugin with the request body as its input, through the guarded path (its
/// timeout, limits and circuit breaker); answers with its output bytes.
#[utoipa::path(post, path = "/plugins/{name}/execute", tag = "plugins",
    params(("name" = String, Path, description = "The plugin's name")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The input"),
    responses(
        (status = 200, description = "The plugin's output", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 422, description = "The plugin returned an error", body = ErrorBody),
        (status = 429, description = "Its concurrency or rate limit", body = ErrorBody),
        (status = 502, description = "The plugin panicked or crashed", body = ErrorBody),
        (status = 503, description = "Its circuit is open, or its worker restarting", body = ErrorBody),
        (status = 504, description = "It did not answer in time", body = ErrorBody)))]
pub(crate) async fn execute(
    State(state): Shared,
    name: Result<Path<String>, PathRejection>,
    input: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path(name) = name.map_err(Rejected)?;
    let input = input.map_err(Rejected)?;
    let output = state
        .dispatcher
        .execute(&name, input.to_vec())
        .await
        .map_err(|e| ApiError::call(&name, &e))?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], output).into_response())
}

/// Whether to write the new configuration into `plughost.toml`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct Write {
    /// Also write it into `plughost.toml` (keeping its layout and comments) [default: the
    /// `[admin] write_config` setting]. Without it, the next edit of the file wins.
    write: Option<bool>,
}

/// Replaces the plugin's configuration (its `[plugins.NAME.config]` table), checked and
/// applied exactly as an edit of `plughost.toml` is: the plugin is re-initialised with it, or
/// nothing changes.
#[utoipa::path(put, path = "/plugins/{name}/config", tag = "plugins",
    params(("name" = String, Path, description = "The plugin's name"), Write),
    request_body(content = Object, content_type = "application/json", description = "The new configuration, a JSON object"),
    responses((status = 200, body = Changed), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "The host refused the change for another reason", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 422, description = "The configuration is invalid for this plugin", body = ErrorBody)))]
pub(crate) async fn configure(
    State(state): Shared,
    name: Result<Path<String>, PathRejection>,
    write: Result<Query<Write>, axum::extract::rejection::QueryRejection>,
    config: Result<Bytes, BytesRejection>,
) -> Result<Json<Changed>, ApiError> {
    let Path(name) = name.map_err(Rejected)?;
    let Query(write) = write.map_err(Rejected)?;
    known(&state, &name)?;
    let config = config.map_err(|e| ApiError::from(Rejected(e)).about(&name))?;
    // Whatever the Content-Type says (curl -d sends a form's): the body must be JSON.
    let config: serde_json::Value = serde_json::from_slice(&config).map_err(|e| {
        ApiError::bad_request(format!("the configuration is not JSON: {e}")).about(&name)
    })?;
    let serde_json::Value::Object(config) = config else {
        return Err(ApiError::bad_request("the configuration must be a JSON object").about(&name));
    };
    let write = write.write.unwrap_or(state.write_config);
    let host = state.host().clone();
    let plugin = name.clone();
    let change = blocking(move || host.set_plugin_config(&plugin, config, write))
        .await?
        .map_err(|e| ApiError::config(&name, &e))?;
    let mut answer = changed(&state, &name, change.changed, Some(write));
    if let Some(error) = change.write_error {
        // Applied all the same: not an error to retry.
        answer.written = Some(false);
        answer.write_error = Some(error.to_string());
    }
    Ok(Json(answer))
}

/// Runs `change` on plugin `name` (404 if the host does not know it) on a blocking thread,
/// and answers with the plugin's state after it.
async fn switch(
    state: Arc<state::State>,
    name: Result<Path<String>, PathRejection>,
    change: fn(&Host, &str) -> Result<(), ApiError>,
) -> Result<Json<Changed>, ApiError> {
    let Path(name) = name.map_err(Rejected)?;
    known(&state, &name)?;
    let host = state.host().clone();
    let plugin = name.clone();
    blocking(move || change(&host, &plugin)).await??;
    Ok(Json(changed(&state, &name, vec![name.clone()], None)))
}

/// 404 unless the host knows plugin `name`.
fn known(state: &state::State, name: &str) -> Result<(), ApiError> {
    match state.host().plugin_status(name) {
        Some(_) => Ok(()),
        None => Err(ApiError::unknown_plugin(name)),
    }
}

fn changed(
    state: &state::State,
    name: &str,
    changed: Vec<String>,
    written: Option<bool>,
) -> Changed {
    let status = state.host().plugin_status(name);
    Changed {
        plugin: name.to_owned(),
        state: status
            .as_ref()
            .map_or("unknown", |s| s.state.as_str())
            .to_owned(),
        version: status
            .as_ref()
            .filter(|s| s.state == plughost::PluginState::Running)
            .and_then(|s| s.info.as_ref())
            .map(|i| i.version.to_string()),
        changed,
        written,
        write_error: None,
    }
}

/// Runs `work` on a blocking thread of the admin runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await.map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the request's work ended without an answer (see the host's log)",
        )
    })
}
