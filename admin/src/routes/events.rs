//! `/events`: the host's events as a Server-Sent Events stream, publishing one, and the bus's
//! counts.
//!
//! Each stream is a subscriber of the bus with a queue of its own; a client that does not keep
//! up loses events (counted, and told with a `plughost.admin.lagged` event), never slows the
//! bus or other streams.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt as _;
use plughost::{Event, EventStats, Percentiles, QueuePolicy, SubscribeOptions};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ErrorBody, Rejected};
use crate::state;

/// How many events may wait for one stream's client.
const STREAM_QUEUE: usize = 256;

/// What each stream's bus subscription is named after (`admin-stream-7`).
pub(crate) const STREAM_PREFIX: &str = "admin-stream-";

/// The longest `topics` accepted, all patterns together.
const MAX_TOPICS_LEN: usize = 255;

/// The source of events published through the API.
const SOURCE: &str = "plughost-admin";

/// Which events a stream carries.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct Topics {
    /// Topic patterns, comma-separated (`plughost.plugin.*`: one more token; `user.>`: one or
    /// more) [default: `plughost.>`, every host event].
    #[param(
        max_length = 255,
        pattern = r"^(>|([A-Za-z0-9_-]+|\*)(\.([A-Za-z0-9_-]+|\*))*(\.>)?)(,(>|([A-Za-z0-9_-]+|\*)(\.([A-Za-z0-9_-]+|\*))*(\.>)?))*$"
    )]
    topics: Option<String>,
}

/// A stream of events (`text/event-stream`): each is `event: TOPIC`, `id: ID` and `data:` the
/// event as a CloudEvent in JSON. Host events are under `plughost.`: `plugin.loaded`,
/// `.reloaded`, `.refused`, `.unloaded`, `config.applied`, `.refused`, `circuit.changed`,
/// `call.failed`.
#[utoipa::path(get, path = "/events", tag = "events", params(Topics),
    responses((status = 200, description = "The stream", content_type = "text/event-stream"),
        (status = 400, body = ErrorBody),
        (status = 429, description = "Too many streams are open", body = ErrorBody)))]
pub(crate) async fn stream(
    State(state): State<Arc<state::State>>,
    topics: Result<Query<Topics>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(topics) = topics.map_err(Rejected)?;
    let topics = topics.topics.as_deref().unwrap_or("plughost.>");
    if topics.len() > MAX_TOPICS_LEN {
        return Err(ApiError::bad_request(format!(
            "topics is {} bytes long; at most {MAX_TOPICS_LEN}",
            topics.len()
        )));
    }
    // Each one checked by the bus as it subscribes: an empty one is refused, not skipped.
    let patterns: Vec<&str> = topics.split(',').collect();
    let Ok(permit) = state.streams.clone().try_acquire_owned() else {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("{} event streams are open already", state::MAX_STREAMS),
        )
        .retry_after(5));
    };
    let (sender, receiver) = tokio::sync::mpsc::channel::<Event>(STREAM_QUEUE);
    let lost = Arc::new(AtomicU64::new(0));
    let counted = lost.clone();
    let id = state.stream_ids.fetch_add(1, Ordering::Relaxed);
    let subscription = state
        .host()
        .subscribe_events(
            &format!("{STREAM_PREFIX}{id}"),
            &patterns,
            SubscribeOptions::default()
                .capacity(STREAM_QUEUE)
                .policy(QueuePolicy::DropOldest),
            move |event| {
                if sender.try_send(event.clone()).is_err() {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            },
        )
        .map_err(|e| ApiError::bad_request(format!("topics: {e}")))?;
    let mut stopped = state.stop.subscribe();
    let stop = async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    let events = tokio_stream::wrappers::ReceiverStream::new(receiver)
        .flat_map(move |event| {
            // Held as long as the stream: dropping the stream unsubscribes.
            let _held = (&subscription, &permit);
            let mut frames = Vec::with_capacity(2);
            let dropped = lost.swap(0, Ordering::Relaxed);
            if dropped > 0 {
                frames.push(
                    SseEvent::default()
                        .event("plughost.admin.lagged")
                        .data(json!({ "dropped": dropped }).to_string()),
                );
            }
            let data = serde_json::to_string(&event).unwrap_or_default();
            frames.push(
                SseEvent::default()
                    .event(event.topic())
                    .id(&*event.id())
                    .data(data),
            );
            futures_util::stream::iter(frames.into_iter().map(Ok::<_, Infallible>))
        })
        .take_until(stop);
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// Publishes an event: the body is its JSON data; its source is `plughost-admin`.
#[utoipa::path(post, path = "/events/{topic}", tag = "events",
    params(("topic" = String, Path, max_length = 255,
        pattern = r"^(?!plughost\.)[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$",
        description = "The topic: dot-separated tokens of letters, digits, `_` and `-` (those under plughost. are the host's own)")),
    request_body(content = serde_json::Value, content_type = "application/json", description = "The event's data: any JSON value"),
    responses((status = 202, body = Published), (status = 400, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 503, description = "A full subscriber queue dropped it", body = ErrorBody)))]
pub(crate) async fn publish(
    State(state): State<Arc<state::State>>,
    topic: Result<Path<String>, PathRejection>,
    data: Result<axum::body::Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Published>), ApiError> {
    let Path(topic) = topic.map_err(Rejected)?;
    let data = data.map_err(Rejected)?;
    let data: Value = serde_json::from_slice(&data)
        .map_err(|e| ApiError::bad_request(format!("the event's data is not JSON: {e}")))?;
    let event = Event::json(topic.as_str(), &data)
        .map_err(|e| ApiError::bad_request(e.to_string()))?
        .with_source(SOURCE);
    let host = state.host().clone();
    // Publishing may wait for room in a subscriber's queue (policy `block`).
    let queued = tokio::task::spawn_blocking(move || host.publish(event))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "publishing failed"))?
        .map_err(|e| ApiError::publish(&e))?;
    Ok((StatusCode::ACCEPTED, Json(Published { topic, queued })))
}

/// A published event.
#[derive(Serialize, ToSchema)]
pub(crate) struct Published {
    /// Its topic.
    topic: String,
    /// How many subscribers it was queued for.
    queued: usize,
}

/// The bus's counts: per topic published, unrouted, delivered, dropped, failed; per
/// subscriber the same with its queue and latency percentiles (microseconds).
#[utoipa::path(get, path = "/events/stats", tag = "events",
    responses((status = 200, description = "The counts", body = Object)))]
pub(crate) async fn stats(State(state): State<Arc<state::State>>) -> Json<Value> {
    Json(stats_json(&state.host().event_stats()))
}

/// `stats` as JSON.
pub(crate) fn stats_json(stats: &EventStats) -> Value {
    let topics: Vec<Value> = stats
        .topics
        .iter()
        .map(|t| {
            json!({
                "topic": t.topic,
                "published": t.published,
                "unrouted": t.unrouted,
                "delivered": t.delivered,
                "dropped": t.dropped,
                "failed": t.failed,
            })
        })
        .collect();
    let subscribers: Vec<Value> = stats
        .subscribers
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "kind": if s.plugin { "plugin" } else { "app" },
                "patterns": s.patterns,
                "delivered": s.delivered,
                "dropped": s.dropped,
                "failed": s.failed,
                "timed_out": s.timed_out,
                "queue_depth": s.queue_depth,
                "capacity": s.capacity,
                "policy": s.policy.as_str(),
                "latency": percentiles_json(&s.latency),
                "handler": percentiles_json(&s.handler),
            })
        })
        .collect();
    json!({ "topics": topics, "subscribers": subscribers })
}

fn percentiles_json(p: &Percentiles) -> Value {
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    json!({
        "count": p.count,
        "p50_us": us(p.p50),
        "p90_us": us(p.p90),
        "p99_us": us(p.p99),
        "max_us": us(p.max),
    })
}
