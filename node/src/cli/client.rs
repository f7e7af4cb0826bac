//! The REST client behind every client command.
use std::time::Duration;

use anyhow::{bail, Context};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::{ClientArgs, Output};
use crate::rest::Problem;

#[derive(Clone)]
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

    pub(super) async fn call(
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

    pub(super) fn output(&self) -> Output {
        self.output
    }

    /// A call whose success has no body (204).
    pub(super) async fn call_empty(&self, method: Method, path: &str) -> anyhow::Result<()> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .http
            .request(method, &url)
            .send()
            .await
            .with_context(|| format!("cannot reach node at {}", self.base))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let bytes = resp.bytes().await.unwrap_or_default();
        match serde_json::from_slice::<Problem>(&bytes) {
            Ok(p) => bail!("{}", p.detail),
            Err(_) => bail!("{url}: {status}: {}", String::from_utf8_lossy(&bytes)),
        }
    }

    pub(super) fn print(&self, value: &Value, human: impl FnOnce(&Value) -> String) {
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

    pub(crate) async fn node_runlevel(&self, level: Option<&str>) -> anyhow::Result<i32> {
        const PATH: &str = "/management/v1/node/runlevel";
        let v = match level {
            None => self.call(Method::GET, PATH, None).await?,
            Some(level) => {
                let progress = spinner(self.output, "changing the run level");
                let v = self
                    .call(
                        Method::PUT,
                        PATH,
                        Some(&serde_json::json!({ "runlevel": level })),
                    )
                    .await;
                progress.finish_and_clear();
                v?
            }
        };
        self.print(&v, |v| {
            format!(
                "runlevel: {} (state {})",
                str_of(&v["runlevel"]),
                str_of(&v["state"])
            )
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

    pub(crate) async fn topology(&self, kind: &str) -> anyhow::Result<i32> {
        let v = self
            .call(
                Method::GET,
                &format!("/management/v1/cluster/topology/{kind}"),
                None,
            )
            .await?;
        self.print(&v, |v| {
            let mut rows = vec![[
                "NAME".to_owned(),
                "ADDRESS".to_owned(),
                "REST".to_owned(),
                "ROLE".to_owned(),
            ]];
            for m in v.as_array().into_iter().flatten() {
                rows.push([
                    str_of(&m["name"]),
                    str_of(&m["address"]),
                    str_of(&m["metadata"]["rest"]),
                    str_of(&m["role"]),
                ]);
            }
            table(&rows)
        });
        Ok(0)
    }

    pub(crate) async fn cluster_init(
        &self,
        name: &str,
        metastorage: &[String],
    ) -> anyhow::Result<i32> {
        let progress = spinner(self.output, "initializing the cluster");
        let body = serde_json::json!({ "name": name, "metastorage": metastorage });
        let state = self
            .call(Method::POST, "/management/v1/cluster/init", Some(&body))
            .await;
        let state = match state {
            Ok(v) => v,
            Err(e) => {
                progress.finish_and_clear();
                return Err(e);
            }
        };
        progress.set_message("waiting for this node to join");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let node = self
                .call(Method::GET, "/management/v1/node/state", None)
                .await?;
            if node["state"] == "STARTED" {
                break;
            }
            if std::time::Instant::now() > deadline {
                progress.finish_and_clear();
                bail!(
                    "cluster initialized but node is still {} after 60 s",
                    str_of(&node["state"])
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        progress.finish_and_clear();
        self.print(&state, |v| {
            format!(
                "cluster {} initialized (id {}, metastorage voters: {})",
                str_of(&v["name"]),
                str_of(&v["id"]),
                v["metastorage_voters"]
                    .as_array()
                    .map(|a| a.iter().map(str_of).collect::<Vec<_>>().join(", "))
                    .unwrap_or_default()
            )
        });
        Ok(0)
    }

    pub(crate) async fn baseline(&self, set: Option<&[String]>) -> anyhow::Result<i32> {
        let v = match set {
            None => {
                self.call(Method::GET, "/management/v1/cluster/baseline", None)
                    .await?
            }
            Some(nodes) => {
                let body = serde_json::json!({ "nodes": nodes });
                self.call(Method::PUT, "/management/v1/cluster/baseline", Some(&body))
                    .await?
            }
        };
        self.print(&v, |v| {
            format!(
                "baseline (revision {}): {}",
                str_of(&v["revision"]),
                human(&v["nodes"])
            )
        });
        Ok(0)
    }

    pub(crate) async fn cluster_status(&self) -> anyhow::Result<i32> {
        let v = self
            .call(Method::GET, "/management/v1/cluster/state", None)
            .await?;
        self.print(&v, |v| match v.as_object() {
            Some(map) => map
                .iter()
                .map(|(k, v)| format!("{k:<20} {}", human(v)))
                .collect::<Vec<_>>()
                .join("\n"),
            None => v.to_string(),
        });
        Ok(0)
    }

    pub(crate) async fn config_show(
        &self,
        scope: ConfigScope,
        path: Option<&str>,
    ) -> anyhow::Result<i32> {
        let suffix = path.map(|p| format!("/{p}")).unwrap_or_default();
        let v = self
            .call(Method::GET, &format!("{}{suffix}", scope.base()), None)
            .await?;
        self.print(&v, pretty);
        Ok(0)
    }

    pub(crate) async fn config_update(
        &self,
        scope: ConfigScope,
        assignment: &str,
    ) -> anyhow::Result<i32> {
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
                &format!("{}/{path}", scope.base()),
                Some(&value),
            )
            .await?;
        self.print(&v, |v| format!("{path} = {}", pretty(v)));
        Ok(0)
    }
}

/// Which configuration a `config` command addresses.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ConfigScope {
    /// This node's local configuration.
    Node,
    /// The cluster-wide configuration in MetaStorage.
    Cluster,
}

impl ConfigScope {
    fn base(self) -> &'static str {
        match self {
            ConfigScope::Node => "/management/v1/configuration/node",
            ConfigScope::Cluster => "/management/v1/configuration/cluster",
        }
    }
}

/// A spinner on stderr for people; nothing for `--output json`.
fn spinner(output: Output, message: &'static str) -> indicatif::ProgressBar {
    if output == Output::Json {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_message(message);
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

fn human(v: &Value) -> String {
    match v {
        Value::Array(items) => items.iter().map(str_of).collect::<Vec<_>>().join(", "),
        other => str_of(other),
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
