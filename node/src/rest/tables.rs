//! Table and row endpoints under `/v1/tables`; JSON rows at the edge, RFC 7807 errors.
use std::collections::HashMap;

use axum::{
    body::Bytes,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use schema::{AlterOp, Column, ColumnType, TableSchema};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{handlers::joined_guard, problem::Problem};
use crate::ignite::IgniteImpl;

type ApiResult<T = Response> = Result<T, Problem>;

pub(super) fn routes() -> Router<IgniteImpl> {
    Router::new()
        .route("/v1/tables", get(list).post(create))
        .route(
            "/v1/tables/{name}",
            get(describe).delete(drop_table).patch(alter),
        )
        .route("/v1/tables/{name}/rows", axum::routing::put(upsert))
        .route("/v1/tables/{name}/get", post(get_rows))
        .route("/v1/tables/{name}/delete", post(delete_rows))
        .route("/v1/tables/{name}/scan", get(scan))
}

/// The status that fits a table error: the caller's fault (400/404/409) or "retry" (503).
fn table_problem(e: &table::Error) -> Problem {
    use table::Error as T;
    let status = match e {
        T::TableNotFound { .. } => StatusCode::NOT_FOUND,
        T::TableExists { .. } => StatusCode::CONFLICT,
        T::InvalidTable { .. } | T::Schema(_) => StatusCode::BAD_REQUEST,
        e if e.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    Problem::new(status, e.to_string())
}

fn schema_problem(e: &schema::Error) -> Problem {
    let status = if e.is_retryable() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::BAD_REQUEST
    };
    Problem::new(status, e.to_string())
}

fn body<T: serde::de::DeserializeOwned>(bytes: &Bytes, expected: &str) -> ApiResult<T> {
    serde_json::from_slice(bytes).map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            format!("request body: {e} (expected {expected})"),
        )
    })
}

fn table_of(ignite: &IgniteImpl, name: &str) -> ApiResult<table::Table> {
    ignite.tables().table(name).ok_or_else(|| {
        Problem::new(
            StatusCode::NOT_FOUND,
            format!("table {name} does not exist"),
        )
    })
}

/// A column as the REST API and CLI spell it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ColumnSpec {
    name: String,
    #[serde(rename = "type")]
    ty: String,
    #[serde(default)]
    nullable: Option<bool>,
}

impl ColumnSpec {
    fn column(&self, key: bool) -> ApiResult<Column> {
        let ty: ColumnType = self.ty.parse().map_err(|e: String| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                format!("column {}: {e}", self.name),
            )
        })?;
        let column = Column::new(self.name.clone(), ty);
        // value columns are nullable unless said otherwise; key columns never are
        Ok(if !key && self.nullable.unwrap_or(true) {
            column.nullable()
        } else {
            column
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    key: Vec<ColumnSpec>,
    #[serde(default)]
    columns: Vec<ColumnSpec>,
    partitions: Option<u32>,
    replicas: Option<u32>,
}

fn describe_json(info: &table::TableInfo, schema: Option<&TableSchema>) -> Value {
    let cols = |cs: &[Column]| -> Vec<Value> {
        cs.iter()
            .map(|c| json!({"name": c.name, "type": c.ty.as_str(), "nullable": c.nullable}))
            .collect()
    };
    json!({
        "name": info.name,
        "id": info.id,
        "partitions": info.partitions,
        "replicas": info.replicas,
        "schema_version": schema.map(|s| s.version),
        "key": schema.map(|s| cols(&s.key_columns)),
        "columns": schema.map(|s| cols(&s.value_columns)),
    })
}

async fn list(State(ignite): State<IgniteImpl>) -> ApiResult {
    let _t = joined_guard(&ignite).await?;
    let tables: Vec<Value> = ignite
        .tables()
        .tables()
        .iter()
        .map(|t| describe_json(t, ignite.schemas().latest(&t.name).ok().as_deref()))
        .collect();
    Ok(Json(tables).into_response())
}

async fn create(State(ignite): State<IgniteImpl>, bytes: Bytes) -> ApiResult {
    let _t = joined_guard(&ignite).await?;
    let req: CreateBody = body(
        &bytes,
        r#"{"name": .., "key": [{"name": .., "type": ..}], "columns": [..]}"#,
    )?;
    let key = req
        .key
        .iter()
        .map(|c| c.column(true))
        .collect::<ApiResult<Vec<_>>>()?;
    let values = req
        .columns
        .iter()
        .map(|c| c.column(false))
        .collect::<ApiResult<Vec<_>>>()?;
    let schema = TableSchema::new(req.name.clone(), key, values).map_err(|e| schema_problem(&e))?;
    let (dp, dr) = ignite.table_defaults();
    let info = ignite
        .tables()
        .create_table(
            schema,
            req.partitions.unwrap_or(dp),
            req.replicas.unwrap_or(dr),
        )
        .await
        .map_err(|e| table_problem(&e))?;
    let schema = ignite.schemas().latest(&info.name).ok();
    Ok((
        StatusCode::CREATED,
        Json(describe_json(&info, schema.as_deref())),
    )
        .into_response())
}

async fn describe(State(ignite): State<IgniteImpl>, Path(name): Path<String>) -> ApiResult {
    let _t = joined_guard(&ignite).await?;
    let table = table_of(&ignite, &name)?;
    let schema = ignite.schemas().latest(&name).ok();
    Ok(Json(describe_json(table.info(), schema.as_deref())).into_response())
}

async fn drop_table(State(ignite): State<IgniteImpl>, Path(name): Path<String>) -> ApiResult {
    let _t = joined_guard(&ignite).await?;
    ignite
        .tables()
        .drop_table(&name)
        .await
        .map_err(|e| table_problem(&e))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlterBody {
    #[serde(default)]
    add: Vec<ColumnSpec>,
    #[serde(default)]
    drop: Vec<String>,
}

async fn alter(
    State(ignite): State<IgniteImpl>,
    Path(name): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    let _t = joined_guard(&ignite).await?;
    let req: AlterBody = body(
        &bytes,
        r#"{"add": [{"name": .., "type": ..}], "drop": [..]}"#,
    )?;
    let table = table_of(&ignite, &name)?;
    let mut ops = Vec::new();
    for c in &req.add {
        ops.push(AlterOp::AddColumn(c.column(false)?));
    }
    ops.extend(req.drop.iter().cloned().map(AlterOp::DropColumn));
    if ops.is_empty() {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "nothing to alter: give \"add\" or \"drop\"",
        ));
    }
    let mut latest = None;
    for op in ops {
        latest = Some(
            ignite
                .schemas()
                .alter(&name, op)
                .await
                .map_err(|e| schema_problem(&e))?,
        );
    }
    Ok(Json(describe_json(table.info(), latest.as_deref())).into_response())
}

async fn upsert(
    State(ignite): State<IgniteImpl>,
    Path(name): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    let _t = joined_guard(&ignite).await?;
    let rows: Value = body(&bytes, "a JSON row object or an array of them")?;
    let table = table_of(&ignite, &name)?;
    let count = match &rows {
        Value::Array(items) => {
            table
                .upsert_all(items)
                .await
                .map_err(|e| table_problem(&e))?;
            items.len()
        }
        row => {
            table.upsert(row).await.map_err(|e| table_problem(&e))?;
            1
        }
    };
    Ok(Json(json!({ "upserted": count })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysBody {
    #[serde(default)]
    key: Option<Value>,
    #[serde(default)]
    keys: Option<Vec<Value>>,
}

fn keys_of(req: KeysBody) -> ApiResult<(Vec<Value>, bool)> {
    match (req.key, req.keys) {
        (Some(k), None) => Ok((vec![k], true)),
        (None, Some(ks)) => Ok((ks, false)),
        _ => Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "give exactly one of \"key\" and \"keys\"",
        )),
    }
}

async fn get_rows(
    State(ignite): State<IgniteImpl>,
    Path(name): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    let _t = joined_guard(&ignite).await?;
    let (keys, single) = keys_of(body(&bytes, r#"{"key": ..} or {"keys": [..]}"#)?)?;
    let table = table_of(&ignite, &name)?;
    let rows = table.get_all(&keys).await.map_err(|e| table_problem(&e))?;
    if single {
        return Ok(Json(json!({ "row": rows.into_iter().next().flatten() })).into_response());
    }
    Ok(Json(json!({ "rows": rows })).into_response())
}

async fn delete_rows(
    State(ignite): State<IgniteImpl>,
    Path(name): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    let _t = joined_guard(&ignite).await?;
    let (keys, _) = keys_of(body(&bytes, r#"{"key": ..} or {"keys": [..]}"#)?)?;
    let table = table_of(&ignite, &name)?;
    let mut deleted = 0usize;
    for key in &keys {
        deleted += usize::from(table.delete(key).await.map_err(|e| table_problem(&e))?);
    }
    Ok(Json(json!({ "deleted": deleted })).into_response())
}

async fn scan(
    State(ignite): State<IgniteImpl>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let _t = joined_guard(&ignite).await?;
    let num = |k: &str, default: Option<u32>| -> ApiResult<Option<u32>> {
        match q.get(k) {
            None => Ok(default),
            Some(v) => v.parse().map(Some).map_err(|_| {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    format!("query parameter {k}: {v:?} is not a non-negative integer"),
                )
            }),
        }
    };
    let limit = num("limit", Some(1000))?.unwrap_or(1000);
    let partition = num("partition", None)?;
    let table = table_of(&ignite, &name)?;
    let rows = table
        .scan(partition, limit)
        .await
        .map_err(|e| table_problem(&e))?;
    Ok(Json(json!({ "rows": rows })).into_response())
}
