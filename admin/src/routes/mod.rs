//! The routes, one module per resource. Each handler carries its OpenAPI description
//! (`#[utoipa::path]`), and the router is built from those descriptions, so the document
//! served at `/openapi.json` lists exactly the routes served.
//!
//! Layers, outermost first: request tracing, the rate limit, the body size limit; changes
//! (POST, PUT) also need the token ([`guard`](crate::guard)).

mod events;
mod health;
mod metrics;
mod page;
mod plugins;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Router;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::OpenApi;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::guard;
use crate::state::State;

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "plughost admin API",
        description = "Operate a running plughost host: its plugins, their calls, metrics and events. \
                       Changes (POST, PUT) need `Authorization: Bearer TOKEN` ([admin] token), \
                       except over the host's own Unix socket. Errors are \
                       `{\"error\": \"...\", \"plugin\": \"...\"}`."
    ),
    tags(
        (name = "plugins", description = "What runs, and changes to one plugin"),
        (name = "host", description = "The host as a whole: health, readiness, metrics"),
        (name = "events", description = "The event bus"),
    )
)]
struct ApiDoc;

/// The routes that read, and those that change something, each with its description.
fn documented() -> (OpenApiRouter<Arc<State>>, OpenApiRouter<Arc<State>>) {
    let reads = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(plugins::list))
        .routes(routes!(plugins::show))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(metrics::metrics))
        .routes(routes!(events::stream))
        .routes(routes!(events::stats))
        .routes(routes!(openapi_json))
        .routes(routes!(page::index));
    let changes = OpenApiRouter::new()
        .routes(routes!(plugins::enable))
        .routes(routes!(plugins::disable))
        .routes(routes!(plugins::reload))
        .routes(routes!(plugins::execute))
        .routes(routes!(plugins::configure))
        .routes(routes!(events::publish));
    (reads, changes)
}

/// The router and the document that describes it.
pub(crate) fn router(state: Arc<State>) -> (Router, OpenApi) {
    let (reads, changes) = documented();
    let changes = changes.route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        guard::require_token,
    ));
    let (router, mut api) = reads.merge(changes).split_for_parts();
    secure_changes(&mut api);
    common_responses(&mut api);
    let max_body = state.max_body;
    let router = router
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such route (GET /openapi.json lists them)",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(max_body))
        .layer(axum::middleware::map_response(too_large))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::limit_rate,
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state);
    (router, api)
}

/// The document alone.
pub(crate) fn openapi() -> OpenApi {
    let (reads, changes) = documented();
    let mut api = reads.merge(changes).into_openapi();
    secure_changes(&mut api);
    common_responses(&mut api);
    api
}

/// The OpenAPI document of this API.
#[utoipa::path(get, path = "/openapi.json", tag = "host",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
async fn openapi_json() -> impl IntoResponse {
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let json = DOCUMENT.get_or_init(|| openapi().to_json().unwrap_or_default());
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        json.as_str(),
    )
}

/// Marks every change (POST, PUT) as needing the bearer token, and says what the token is.
fn secure_changes(api: &mut OpenApi) {
    let components = api.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "token",
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
    );
    let requirement =
        utoipa::openapi::security::SecurityRequirement::new("token", Vec::<String>::new());
    for item in api.paths.paths.values_mut() {
        for operation in [item.post.as_mut(), item.put.as_mut()]
            .into_iter()
            .flatten()
        {
            operation.security = Some(vec![requirement.clone()]);
            let unauthorized = utoipa::openapi::ResponseBuilder::new()
                .description("No token, or the wrong one")
                .content("application/json", error_content())
                .build();
            operation
                .responses
                .responses
                .insert("401".into(), unauthorized.into());
        }
    }
}

/// The answers any route may give: 429 from the rate limit, and for those that take a body,
/// 413 from the body limit.
fn common_responses(api: &mut OpenApi) {
    let error = |description: &str| -> utoipa::openapi::RefOr<utoipa::openapi::Response> {
        utoipa::openapi::ResponseBuilder::new()
            .description(description)
            .content("application/json", error_content())
            .build()
            .into()
    };
    for item in api.paths.paths.values_mut() {
        let operations = [item.get.as_mut(), item.post.as_mut(), item.put.as_mut()];
        for operation in operations.into_iter().flatten() {
            let responses = &mut operation.responses.responses;
            responses.entry("429".into()).or_insert_with(|| {
                error("Too many requests ([admin] rate_limit); see Retry-After")
            });
            if operation.request_body.is_some() {
                responses
                    .entry("413".into())
                    .or_insert_with(|| error("The body is larger than [admin] max_body"));
            }
        }
    }
}

/// The content of every error response.
pub(crate) fn error_content() -> utoipa::openapi::content::Content {
    utoipa::openapi::content::ContentBuilder::new()
        .schema(Some(
            utoipa::openapi::schema::RefBuilder::new().ref_location_from_schema_name("ErrorBody"),
        ))
        .build()
}

/// The body limit's plain-text 413 as the API's JSON error.
async fn too_large(response: axum::response::Response) -> axum::response::Response {
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE
        && response
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .map(|v| v.as_bytes())
            != Some(b"application/json")
    {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the request body is larger than [admin] max_body allows",
        )
        .into_response();
    }
    response
}
