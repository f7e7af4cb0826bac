//! The REST client behind every client command.
use std::time::Duration;

use anyhow::{bail, Context};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::{ClientArgs, Output};
use crate::rest::Problem;

pub(crate) struct Client {
    http: reqwest::Client,
    base: String,
    output: Output,
}

impl Client {
    pub(crate) fn new(args: &ClientArgs) -> anyhow::Result<Self> {
        let base = args.url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("--url {base}: must start with http:// or https://");
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .context("cannot build the http client")?;
        Ok(Self {
            http,
            base,
            output: args.output,
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach node at {}", self.base))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .with_context(|| format!("reading the answer of {url}"))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .with_context(|| format!("{url} answered invalid JSON"));
        }
        match serde_json::from_slice::<Problem>(&bytes) {
            Ok(p) => bail!("{}", p.detail),
            Err(_) if status == StatusCode::NOT_FOUND => bail!("{url}: not found"),
            Err(_) => bail!("{url}: {status}: {}", String::from_utf8_lossy(&bytes)),
        }
    }

    fn print(&self, value: &Value, human: impl FnOnce(&Value) -> String) {
        match self.output {
            Output::Json => println!("{value}"),
            Output::Human => println!("{}", human(value)),
        }
    }

    pub(crate) async fn node_state(&self) -> anyhow::Result<i32> {
        let v = self
            .call(Method::GET, "/management/v1/node/state", None)
            .await?;
        self.print(&v, |v| {
            format!("{}: {}", str_of(&v["name"]), str_of(&v["state"]))
        });
        Ok(0)
    }

    pub(crate) async fn node_info(&self) -> anyhow::Result<i32> {
        let v = self
            .call(Method::GET, "/management/v1/node/info", None)
            .await?;
        self.print(&v, |v| match v.as_object() {
            Some(map) => map
                .iter()
                .map(|(k, v)| format!("{k:<16} {}", str_of(v)))
                .collect::<Vec<_>>()
                .join("\n"),
            None => v.to_string(),
        });
        Ok(0)
    }

    pub(crate) async fn topology_physical(&self) -> anyhow::Result<i32> {
        let v = self
            .call(
                Method::GET,
                "/management/v1/cluster/topology/physical",
                None,
            )
            .await?;
        self.print(&v, |v| {
            let mut rows = vec![[
                "NAME".to_owned(),
                "ADDRESS".to_owned(),
                "REST".to_owned(),
                "ID".to_owned(),
            ]];
            for m in v.as_array().into_iter().flatten() {
                rows.push([
                    str_of(&m["name"]),
                    str_of(&m["address"]),
                    str_of(&m["metadata"]["rest"]),
                    str_of(&m["id"]),
                ]);
            }
            table(&rows)
        });
        Ok(0)
    }

    pub(crate) async fn config_show(&self, path: Option<&str>) -> anyhow::Result<i32> {
        let suffix = path.map(|p| format!("/{p}")).unwrap_or_default();
        let v = self
            .call(
                Method::GET,
                &format!("/management/v1/configuration/node{suffix}"),
                None,
            )
            .await?;
        self.print(&v, pretty);
        Ok(0)
    }

    pub(crate) async fn config_update(&self, assignment: &str) -> anyhow::Result<i32> {
        let (path, raw) = assignment.split_once('=').with_context(|| {
            format!("{assignment}: expected PATH=VALUE, e.g. node.stop_timeout_ms=5000")
        })?;
        let path = path.trim();
        if path.is_empty() {
            bail!("{assignment}: the path before '=' is empty");
        }
        // JSON when it parses (numbers, booleans, arrays, quoted strings), else a bare string.
        let value =
            serde_json::from_str::<Value>(raw).unwrap_or_else(|_| Value::String(raw.to_owned()));
        let v = self
            .call(
                Method::PATCH,
                &format!("/management/v1/configuration/node/{path}"),
                Some(&value),
            )
            .await?;
        self.print(&v, |v| format!("{path} = {}", pretty(v)));
        Ok(0)
    }
}

/// Left-aligned columns separated by two spaces.
fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    rows.iter()
        .map(|row| {
            let cells: Vec<String> = row
                .iter()
                .zip(widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            cells.join("  ").trim_end().to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}
