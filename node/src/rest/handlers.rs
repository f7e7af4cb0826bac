//! REST routes and handlers. Each handler enters the node's stop guard and calls `IgniteImpl`.
use axum::{
    body::Bytes,
    extract::{Path, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use lifecycle::NodeState;
use serde_json::json;

use super::problem::Problem;
use crate::ignite::IgniteImpl;

pub(super) fn router(ignite: IgniteImpl) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/management/v1/node/state", get(node_state))
        .route("/management/v1/node/info", get(node_info))
        .route(
            "/management/v1/cluster/topology/physical",
            get(topology_physical),
        )
        .route(
            "/management/v1/configuration/node",
            get(config_get_all).patch(config_patch_all),
        )
        .route(
            "/management/v1/configuration/node/{*path}",
            get(config_get).patch(config_patch),
        )
        .fallback(not_found)
        .with_state(ignite)
}

type ApiResult<T = Response> = Result<T, Problem>;

fn guard(ignite: &IgniteImpl) -> ApiResult<lifecycle::StopTicket> {
    ignite
        .guard()
        .enter()
        .map_err(|e| Problem::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
}

async fn health(State(ignite): State<IgniteImpl>) -> Response {
    let state = ignite.state();
    let up = !matches!(state, NodeState::Stopping | NodeState::Stopped);
    let status = if up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({ "status": if up { "UP" } else { "DOWN" }, "state": state })),
    )
        .into_response()
}

async fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::telemetry::render(),
    )
        .into_response()
}

async fn node_state(State(ignite): State<IgniteImpl>) -> Response {
    Json(json!({ "name": ignite.name(), "state": ignite.state() })).into_response()
}

async fn node_info(State(ignite): State<IgniteImpl>) -> Response {
    Json(ignite.info()).into_response()
}

async fn topology_physical(State(ignite): State<IgniteImpl>) -> ApiResult {
    let _t = guard(&ignite)?;
    let members: Vec<_> = ignite
        .topology()
        .members()
        .into_iter()
        .map(|m| {
            json!({
                "name": m.name,
                "id": m.id,
                "launch_id": m.launch_id,
                "address": m.address,
                "metadata": m.metadata,
            })
        })
        .collect();
    Ok(Json(members).into_response())
}

/// `network/seeds` and `network.seeds` both name the key `network.seeds`.
fn dotted(path: &str) -> String {
    path.trim_matches('/').replace('/', ".")
}

fn config_problem(err: &configuration::Error) -> Problem {
    let status = if matches!(err, configuration::Error::UnknownKey { .. }) {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::BAD_REQUEST
    };
    Problem::new(status, err.to_string())
}

fn parse_body(body: &Bytes) -> ApiResult<serde_json::Value> {
    serde_json::from_slice(body).map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            format!("request body is not valid JSON: {e}"),
        )
    })
}

async fn config_get_all(State(ignite): State<IgniteImpl>) -> ApiResult {
    let _t = guard(&ignite)?;
    let value = ignite
        .configuration()
        .get("")
        .map_err(|e| config_problem(&e))?;
    Ok(Json(value).into_response())
}

async fn config_get(State(ignite): State<IgniteImpl>, Path(path): Path<String>) -> ApiResult {
    let _t = guard(&ignite)?;
    let value = ignite
        .configuration()
        .get(&dotted(&path))
        .map_err(|e| config_problem(&e))?;
    Ok(Json(value).into_response())
}

async fn config_patch_all(State(ignite): State<IgniteImpl>, body: Bytes) -> ApiResult {
    let _t = guard(&ignite)?;
    let value = parse_body(&body)?;
    if !value.is_object() {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "request body must be a JSON object of configuration roots",
        ));
    }
    ignite
        .configuration()
        .change("", value)
        .await
        .map_err(|e| config_problem(&e))?;
    Ok(Json(
        ignite
            .configuration()
            .get("")
            .map_err(|e| config_problem(&e))?,
    )
    .into_response())
}

async fn config_patch(
    State(ignite): State<IgniteImpl>,
    Path(path): Path<String>,
    body: Bytes,
) -> ApiResult {
    let _t = guard(&ignite)?;
    let value = parse_body(&body)?;
    let path = dotted(&path);
    ignite
        .configuration()
        .change(&path, value)
        .await
        .map_err(|e| config_problem(&e))?;
    Ok(Json(
        ignite
            .configuration()
            .get(&path)
            .map_err(|e| config_problem(&e))?,
    )
    .into_response())
}

async fn not_found(uri: axum::http::Uri) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {}", uri.path()),
    )
}
