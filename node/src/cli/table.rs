//! `ignite table ...`: tables and rows through a node's `/v1/tables` API.
use std::{io::BufRead, path::Path, time::Instant};

use anyhow::{bail, Context};
use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Map, Value};

use super::{client::Client, Output};

#[derive(Debug, Subcommand)]
pub(crate) enum TableCommand {
    /// Create a table: `ignite table create people --key id:int64 --column name:string`.
    Create {
        /// Table name.
        name: String,
        /// Key column NAME:TYPE (repeat for a composite key, in key order).
        #[arg(long = "key", required = true)]
        key: Vec<String>,
        /// Value column NAME:TYPE (nullable), repeatable.
        #[arg(long = "column")]
        columns: Vec<String>,
        /// Partitions (default: `cluster.default_partitions`).
        #[arg(long)]
        partitions: Option<u32>,
        /// Replicas per partition (default: `cluster.default_replicas`).
        #[arg(long)]
        replicas: Option<u32>,
    },
    /// Every table with its partitions, replicas and schema.
    List,
    /// One table's schema and layout.
    Describe { name: String },
    /// Drop a table and its data.
    Drop { name: String },
    /// Add (`--add col:type`) or drop (`--drop col`) value columns.
    Alter {
        name: String,
        #[arg(long)]
        add: Vec<String>,
        #[arg(long)]
        drop: Vec<String>,
    },
    /// Insert or replace one row given as a JSON object.
    Put { name: String, row: String },
    /// Print the row with this key as one JSON line (nothing when absent).
    Get { name: String, key: String },
    /// Delete the row with this key.
    Delete { name: String, key: String },
    /// Rows as JSON lines, in key order.
    Scan {
        name: String,
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        /// Only this partition.
        #[arg(long)]
        partition: Option<u32>,
    },
    /// Load JSON lines (`.jsonl`/`.json`) or CSV (`.csv`, header = column names) into a table.
    Load {
        name: String,
        file: std::path::PathBuf,
        /// Rows per request.
        #[arg(long, default_value_t = 500)]
        batch: usize,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
        parallel: u32,
    },
}

fn column_spec(spec: &str) -> anyhow::Result<Value> {
    let (name, ty) = spec
        .split_once(':')
        .with_context(|| format!("column {spec:?}: expected NAME:TYPE, e.g. id:int64"))?;
    Ok(json!({ "name": name, "type": ty }))
}

fn parse_json(what: &str, text: &str) -> anyhow::Result<Value> {
    serde_json::from_str(text).with_context(|| format!("{what} is not valid JSON: {text}"))
}

fn path_segment(name: &str) -> anyhow::Result<&str> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        bail!("table name {name:?}: use letters, digits and '_'");
    }
    Ok(name)
}

impl Client {
    pub(crate) async fn table(&self, command: TableCommand) -> anyhow::Result<i32> {
        match command {
            TableCommand::Create {
                name,
                key,
                columns,
                partitions,
                replicas,
            } => {
                let key: Vec<Value> = key
                    .iter()
                    .map(|k| column_spec(k))
                    .collect::<anyhow::Result<_>>()?;
                let columns: Vec<Value> = columns
                    .iter()
                    .map(|c| column_spec(c))
                    .collect::<anyhow::Result<_>>()?;
                let mut body = json!({ "name": name, "key": key, "columns": columns });
                if let Some(p) = partitions {
                    body["partitions"] = json!(p);
                }
                if let Some(r) = replicas {
                    body["replicas"] = json!(r);
                }
                let v = self.call(Method::POST, "/v1/tables", Some(&body)).await?;
                self.print(&v, describe_human);
            }
            TableCommand::List => {
                let v = self.call(Method::GET, "/v1/tables", None).await?;
                self.print(&v, |v| {
                    v.as_array()
                        .into_iter()
                        .flatten()
                        .map(|t| {
                            format!(
                                "{}  partitions={} replicas={}",
                                t["name"].as_str().unwrap_or("?"),
                                t["partitions"],
                                t["replicas"]
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                });
            }
            TableCommand::Describe { name } => {
                let v = self
                    .call(
                        Method::GET,
                        &format!("/v1/tables/{}", path_segment(&name)?),
                        None,
                    )
                    .await?;
                self.print(&v, describe_human);
            }
            TableCommand::Drop { name } => {
                self.call_empty(
                    Method::DELETE,
                    &format!("/v1/tables/{}", path_segment(&name)?),
                )
                .await?;
                self.print(&json!({ "dropped": name }), |_| {
                    format!("table {name} dropped")
                });
            }
            TableCommand::Alter { name, add, drop } => {
                let add: Vec<Value> = add
                    .iter()
                    .map(|c| column_spec(c))
                    .collect::<anyhow::Result<_>>()?;
                let body = json!({ "add": add, "drop": drop });
                let v = self
                    .call(
                        Method::PATCH,
                        &format!("/v1/tables/{}", path_segment(&name)?),
                        Some(&body),
                    )
                    .await?;
                self.print(&v, describe_human);
            }
            TableCommand::Put { name, row } => {
                let row = parse_json("row", &row)?;
                let v = self
                    .call(
                        Method::PUT,
                        &format!("/v1/tables/{}/rows", path_segment(&name)?),
                        Some(&row),
                    )
                    .await?;
                self.print(&v, |_| "1 row upserted".to_owned());
            }
            TableCommand::Get { name, key } => {
                let body = json!({ "key": parse_json("key", &key)? });
                let v = self
                    .call(
                        Method::POST,
                        &format!("/v1/tables/{}/get", path_segment(&name)?),
                        Some(&body),
                    )
                    .await?;
                // one JSON line whatever the output mode; nothing when absent
                if !v["row"].is_null() {
                    println!("{}", v["row"]);
                }
            }
            TableCommand::Delete { name, key } => {
                let body = json!({ "key": parse_json("key", &key)? });
                let v = self
                    .call(
                        Method::POST,
                        &format!("/v1/tables/{}/delete", path_segment(&name)?),
                        Some(&body),
                    )
                    .await?;
                self.print(&v, |v| format!("{} row deleted", v["deleted"]));
            }
            TableCommand::Scan {
                name,
                limit,
                partition,
            } => {
                let mut path = format!("/v1/tables/{}/scan?limit={limit}", path_segment(&name)?);
                if let Some(p) = partition {
                    path.push_str(&format!("&partition={p}"));
                }
                let v = self.call(Method::GET, &path, None).await?;
                for row in v["rows"].as_array().into_iter().flatten() {
                    println!("{row}");
                }
            }
            TableCommand::Load {
                name,
                file,
                batch,
                parallel,
            } => {
                self.load(path_segment(&name)?, &file, batch.max(1), parallel as usize)
                    .await?
            }
        }
        Ok(0)
    }

    async fn load(
        &self,
        name: &str,
        file: &Path,
        batch: usize,
        parallel: usize,
    ) -> anyhow::Result<()> {
        let rows = read_rows(file)?;
        let total = rows.len();
        let bar = if self.output() == Output::Json {
            indicatif::ProgressBar::hidden()
        } else {
            indicatif::ProgressBar::new(total as u64)
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} rows {per_sec} {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let begin = Instant::now();
        // up to `parallel` requests in flight; rows of different requests may land in any
        // order, each request is acknowledged only after its rows are durable
        let path = format!("/v1/tables/{name}/rows");
        let mut chunks = rows.chunks(batch).map(|c| Value::Array(c.to_vec()));
        let mut in_flight = tokio::task::JoinSet::new();
        let mut failure = None;
        loop {
            while failure.is_none() && in_flight.len() < parallel {
                let Some(body) = chunks.next() else { break };
                let client = self.clone();
                let path = path.clone();
                in_flight.spawn(async move {
                    let n = body.as_array().map_or(0, Vec::len) as u64;
                    client
                        .call(Method::PUT, &path, Some(&body))
                        .await
                        .map(|_| n)
                });
            }
            let Some(done) = in_flight.join_next().await else {
                break;
            };
            match done {
                Ok(Ok(n)) => bar.inc(n),
                Ok(Err(e)) => {
                    failure.get_or_insert(e);
                }
                Err(e) => {
                    failure.get_or_insert(anyhow::anyhow!("a load request failed: {e}"));
                }
            }
        }
        if let Some(e) = failure {
            bar.abandon();
            let done = bar.position();
            return Err(e.context(format!(
                "{} loaded {done} of {total} rows before the error (rows of other requests \
                 may also have landed; loading again is safe: rows are upserted)",
                file.display()
            )));
        }
        bar.finish_and_clear();
        let secs = begin.elapsed().as_secs_f64();
        let summary = json!({ "rows": total, "seconds": secs, "rows_per_second": total as f64 / secs.max(1e-9) });
        self.print(&summary, |_| {
            format!(
                "loaded {total} rows in {secs:.2} s ({:.0} rows/s)",
                total as f64 / secs.max(1e-9)
            )
        });
        Ok(())
    }
}

/// Rows from a JSON-lines or CSV file; errors name the file and line.
fn read_rows(file: &Path) -> anyhow::Result<Vec<Value>> {
    let is_csv = file
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let f = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let mut rows = Vec::new();
    if is_csv {
        let mut reader = csv::Reader::from_reader(f);
        let headers = reader
            .headers()
            .with_context(|| format!("{}: no CSV header", file.display()))?
            .clone();
        for (i, record) in reader.records().enumerate() {
            let record = record
                .with_context(|| format!("{} line {}: malformed CSV", file.display(), i + 2))?;
            let mut row = Map::new();
            for (h, v) in headers.iter().zip(record.iter()) {
                // numbers and booleans as JSON, empty as null, anything else a string
                let value = if v.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_str::<Value>(v)
                        .ok()
                        .filter(|x| !x.is_object() && !x.is_array())
                        .unwrap_or_else(|| Value::String(v.to_owned()))
                };
                row.insert(h.to_owned(), value);
            }
            rows.push(Value::Object(row));
        }
    } else {
        for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
            let line =
                line.with_context(|| format!("{} line {}: cannot read", file.display(), i + 1))?;
            if line.trim().is_empty() {
                continue;
            }
            let row: Value = serde_json::from_str(&line)
                .with_context(|| format!("{} line {}: malformed JSON", file.display(), i + 1))?;
            if !row.is_object() {
                bail!(
                    "{} line {}: a row must be a JSON object",
                    file.display(),
                    i + 1
                );
            }
            rows.push(row);
        }
    }
    Ok(rows)
}

fn describe_human(v: &Value) -> String {
    let cols = |k: &str| -> String {
        v[k].as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                format!(
                    "{}:{}{}",
                    c["name"].as_str().unwrap_or("?"),
                    c["type"].as_str().unwrap_or("?"),
                    if c["nullable"] == true { "?" } else { "" }
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "table {} (schema v{}, {} partitions x {} replicas)\n  key:     {}\n  columns: {}",
        v["name"].as_str().unwrap_or("?"),
        v["schema_version"],
        v["partitions"],
        v["replicas"],
        cols("key"),
        cols("columns")
    )
}
