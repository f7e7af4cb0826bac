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
        .route(
            "/management/v1/node/runlevel",
            get(runlevel_get).put(runlevel_set),
        )
        .route(
            "/management/v1/cluster/topology/logical",
            get(topology_logical),
        )
        .route(
            "/management/v1/cluster/init",
            axum::routing::post(cluster_init),
        )
        .route("/management/v1/cluster/state", get(cluster_state))
        .route(
            "/management/v1/configuration/cluster",
            get(cluster_config_get_all).patch(cluster_config_patch_all),
        )
        .route(
            "/management/v1/configuration/cluster/{*path}",
            get(cluster_config_get).patch(cluster_config_patch),
        )
        .route(
            "/management/v1/cluster/baseline",
            get(baseline_get).put(baseline_set),
        )
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
        .merge(super::tables::routes())
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

/// The node's info plus `etcd_address`: where the MetaStorage etcd v3 endpoint listens
/// (`"127.0.0.1:NNNN"`), `null` when `metastorage.etcd_listen` is not set.
async fn node_info(State(ignite): State<IgniteImpl>) -> Response {
    let etcd_address = ignite
        .metastorage()
        .etcd_address()
        .map(|address| address.to_string());
    match serde_json::to_value(ignite.info()) {
        Ok(serde_json::Value::Object(mut info)) => {
            info.insert("etcd_address".into(), json!(etcd_address));
            Json(info).into_response()
        }
        _ => Json(ignite.info()).into_response(),
    }
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

/// Enter the stop guard and require a joined node (for cluster-level endpoints).
pub(super) async fn joined_guard(ignite: &IgniteImpl) -> ApiResult<lifecycle::StopTicket> {
    let ticket = guard(ignite)?;
    joined(ignite).await?;
    Ok(ticket)
}

/// The sentence every cluster-level endpoint answers before init.
const NOT_INITIALIZED: &str = "cluster is not initialized: run `ignite cluster init`";

/// Cluster-level endpoints need a node that joined an initialized cluster: 409 before init,
/// 503 while it is still recovering.
async fn joined(ignite: &IgniteImpl) -> ApiResult<()> {
    match ignite.state() {
        NodeState::Started => Ok(()),
        NodeState::Zombie => Err(Problem::new(StatusCode::CONFLICT, NOT_INITIALIZED)),
        other => Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("node is {other}: retry when it is STARTED"),
        )),
    }
}

fn metastorage_problem(err: &crate::Error) -> Problem {
    use metastorage::Error as M;
    let status = match err {
        crate::Error::MetaStorage(M::AlreadyInitialized(_)) => StatusCode::CONFLICT,
        crate::Error::MetaStorage(M::InvalidInit(_)) => StatusCode::BAD_REQUEST,
        crate::Error::MetaStorage(M::NotInitialized) => StatusCode::CONFLICT,
        crate::Error::MetaStorage(M::Stopping(_)) => StatusCode::SERVICE_UNAVAILABLE,
        crate::Error::MetaStorage(M::Timeout { .. } | M::InitIncomplete(_)) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    Problem::new(status, err.to_string())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct InitBody {
    #[serde(alias = "clusterName")]
    name: String,
    #[serde(default, alias = "metaStorageNodes")]
    metastorage: Vec<String>,
}

async fn cluster_init(State(ignite): State<IgniteImpl>, body: Bytes) -> ApiResult {
    let _t = guard(&ignite)?;
    let body: InitBody = serde_json::from_slice(&body).map_err(|e| {
        Problem::new(StatusCode::BAD_REQUEST, format!("request body: {e} (expected {{\"name\": \"..\", \"metastorage\": [\"node\", ..]}})"))
    })?;
    let state = ignite
        .init_cluster(crate::InitRequest {
            name: body.name,
            metastorage: body.metastorage,
        })
        .await
        .map_err(|e| metastorage_problem(&e))?;
    Ok(Json(state).into_response())
}

async fn cluster_state(State(ignite): State<IgniteImpl>) -> ApiResult {
    let _t = guard(&ignite)?;
    joined(&ignite).await?;
    let state = ignite
        .cluster_state()
        .await
        .map_err(|e| metastorage_problem(&e))?;
    let Some(state) = state else {
        return Err(Problem::new(StatusCode::CONFLICT, NOT_INITIALIZED));
    };
    let ms = ignite.metastorage();
    let group = ms.group().map(|g| g.metrics());
    Ok(Json(json!({
        "id": state.id,
        "name": state.name,
        "metastorage_voters": state.metastorage_voters,
        "metastorage_leader": group.as_ref().and_then(|m| m.leader.clone()),
        "revision": ms.revision(),
        "node": ignite.name(),
        "node_state": ignite.state(),
    }))
    .into_response())
}

/// The logical topology: physical members that belong to the MetaStorage group (voters and
/// the learners the leader added), i.e. the nodes that joined this cluster.
async fn topology_logical(State(ignite): State<IgniteImpl>) -> ApiResult {
    let _t = guard(&ignite)?;
    joined(&ignite).await?;
    let Some(group) = ignite.metastorage().group() else {
        return Err(Problem::new(StatusCode::CONFLICT, NOT_INITIALIZED));
    };
    let m = group.metrics();
    let members: Vec<_> = ignite
        .topology()
        .members()
        .into_iter()
        .filter(|n| m.voters.contains(&n.name) || m.learners.contains(&n.name))
        .map(|n| {
            json!({
                "name": n.name,
                "id": n.id,
                "address": n.address,
                "role": if m.voters.contains(&n.name) { "voter" } else { "learner" },
                "metadata": n.metadata,
            })
        })
        .collect();
    Ok(Json(members).into_response())
}

async fn cluster_config_get_all(State(ignite): State<IgniteImpl>) -> ApiResult {
    let _t = guard(&ignite)?;
    joined(&ignite).await?;
    let value = ignite
        .cluster_configuration()
        .get("")
        .map_err(|e| config_problem(&e))?;
    Ok(Json(value).into_response())
}

async fn cluster_config_get(
    State(ignite): State<IgniteImpl>,
    Path(path): Path<String>,
) -> ApiResult {
    let _t = guard(&ignite)?;
    joined(&ignite).await?;
    let value = ignite
        .cluster_configuration()
        .get(&dotted(&path))
        .map_err(|e| config_problem(&e))?;
    Ok(Json(value).into_response())
}

async fn cluster_config_patch_all(State(ignite): State<IgniteImpl>, body: Bytes) -> ApiResult {
    let _t = guard(&ignite)?;
    joined(&ignite).await?;
    let value = parse_body(&body)?;
    if !value.is_object() {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "request body must be a JSON object of configuration roots",
        ));
    }
    let cfg = ignite.cluster_configuration();
    cfg.change("", value)
        .await
        .map_err(|e| config_problem(&e))?;
    Ok(Json(cfg.get("").map_err(|e| config_problem(&e))?).into_response())
}

async fn cluster_config_patch(
    State(ignite): State<IgniteImpl>,
    Path(path): Path<String>,
    body: Bytes,
) -> ApiResult {
    let _t = guard(&ignite)?;
    joined(&ignite).await?;
    let value = parse_body(&body)?;
    let path = dotted(&path);
    let cfg = ignite.cluster_configuration();
    cfg.change(&path, value)
        .await
        .map_err(|e| config_problem(&e))?;
    Ok(Json(cfg.get(&path).map_err(|e| config_problem(&e))?).into_response())
}

async fn baseline_get(State(ignite): State<IgniteImpl>) -> ApiResult {
    let _t = guard(&ignite)?;
    joined(&ignite).await?;
    let b = ignite.baseline();
    Ok(Json(json!({ "nodes": b.nodes, "revision": b.revision })).into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BaselineBody {
    nodes: std::collections::BTreeSet<String>,
}

async fn baseline_set(State(ignite): State<IgniteImpl>, body: Bytes) -> ApiResult {
    let _t = guard(&ignite)?;
    joined(&ignite).await?;
    let body: BaselineBody = serde_json::from_slice(&body).map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            format!("request body: {e} (expected {{\"nodes\": [\"n1\", ..]}})"),
        )
    })?;
    let b = ignite.set_baseline(body.nodes).await.map_err(|e| {
        let status = match e {
            baseline::Error::Empty | baseline::Error::NotInLogicalTopology(_) => {
                StatusCode::BAD_REQUEST
            }
            baseline::Error::Contended { .. } => StatusCode::CONFLICT,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        Problem::new(status, e.to_string())
    })?;
    Ok(Json(json!({ "nodes": b.nodes, "revision": b.revision })).into_response())
}

fn runlevel_body(ignite: &IgniteImpl) -> Response {
    Json(json!({
        "runlevel": ignite.run_level().map(lifecycle::RunLevel::as_str),
        "state": ignite.state(),
    }))
    .into_response()
}

async fn runlevel_get(State(ignite): State<IgniteImpl>) -> Response {
    runlevel_body(&ignite)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RunLevelBody {
    runlevel: lifecycle::RunLevel,
}

async fn runlevel_set(State(ignite): State<IgniteImpl>, body: Bytes) -> ApiResult {
    let _t = guard(&ignite)?;
    let body: RunLevelBody = serde_json::from_slice(&body).map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            format!(
                "request body: {e} (expected {{\"runlevel\": \"zombie\" | \"metastorage\" | \"ready\"}})"
            ),
        )
    })?;
    ignite.set_run_level(body.runlevel).await.map_err(|e| {
        let status = match &e {
            crate::Error::RunLevel(_)
            | crate::Error::Start(lifecycle::StartError::InvalidState(_)) => StatusCode::CONFLICT,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        Problem::new(status, e.to_string())
    })?;
    Ok(runlevel_body(&ignite))
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
