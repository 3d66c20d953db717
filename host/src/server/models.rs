//! What a server serves: `/v1/models` (its teams as OpenAI model objects,
//! with the spec each came from) and `/v1/plugins` (each team's plugins and
//! the version serving new calls).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::teams::Served;
use super::{authorised, unauthorised, App};

/// A served team as an OpenAI model object, with where it came from.
pub(super) fn model_object(app: &App, s: &Served) -> serde_json::Value {
    json!({
        "id": s.name(),
        "object": "model",
        "created": s.loaded_ms / 1000,
        "owned_by": "conclave",
        "conclave": {
            "spec": s.path,
            "loaded_at_ms": s.loaded_ms,
            "refused": app.teams.refusal(&s.path),
        },
    })
}

pub(super) async fn models(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if !authorised(&app, &headers) {
        return unauthorised();
    }
    let data: Vec<_> = app
        .teams
        .list()
        .iter()
        .map(|s| model_object(&app, s))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

pub(super) async fn model(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    if !authorised(&app, &headers) {
        return unauthorised();
    }
    match app.teams.get(&id) {
        Some(s) => axum::Json(model_object(&app, &s)).into_response(),
        None => model_not_found(&app, &id),
    }
}

/// 404 in OpenAI's shape for a model id no team has.
pub(super) fn model_not_found(app: &App, id: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({"error": {
            "message": format!(
                "The model `{id}` does not exist: this server serves {}",
                served_list(app)
            ),
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }})),
    )
        .into_response()
}

pub(super) fn served_list(app: &App) -> String {
    app.teams
        .names()
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The plugins the team uses and the version of each serving new calls
/// (it changes when a watched file is swapped in).
pub(super) async fn plugins(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if !authorised(&app, &headers) {
        return unauthorised();
    }
    let mut data = Vec::new();
    for s in app.teams.list() {
        for p in s.team.plugin_status() {
            let mut v = serde_json::to_value(p).unwrap_or_default();
            v["team"] = json!(s.name());
            data.push(v);
        }
    }
    axum::Json(json!({"object": "list", "data": data})).into_response()
}
