//! In-process nodes: the facade and the REST contract.
use lifecycle::NodeState;
use node::{IgniteImpl, NodeOptions};
use serde_json::{json, Value};

struct Rest {
    http: reqwest::Client,
    base: String,
}

impl Rest {
    fn of(ignite: &IgniteImpl) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: format!("http://{}", ignite.rest_address().expect("rest bound")),
        }
    }

    async fn get(&self, path: &str) -> (u16, String, String) {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    async fn patch(&self, path: &str, body: &str) -> (u16, String, String) {
        let req = self.http.patch(format!("{}{path}", self.base));
        self.send(
            req.header("content-type", "application/json")
                .body(body.to_owned()),
        )
        .await
    }

    async fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &str,
    ) -> (u16, String, String) {
        let req = self.http.request(method, format!("{}{path}", self.base));
        self.send(
            req.header("content-type", "application/json")
                .body(body.to_owned()),
        )
        .await
    }

    /// (status, content type, body)
    async fn send(&self, req: reqwest::RequestBuilder) -> (u16, String, String) {
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let ct = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, ct, r.text().await.unwrap())
    }
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not json ({e}): {s}"))
}

#[tokio::test]
async fn standalone_node_serves_the_management_api() {
    let dir = tempfile::tempdir().unwrap();
    let ignite = IgniteImpl::start(NodeOptions::standalone("emb", dir.path()))
        .await
        .unwrap();
    assert_eq!(ignite.state(), NodeState::Started);
    assert_eq!(ignite.name(), "emb");
    let rest = Rest::of(&ignite);

    let (s, _, body) = rest.get("/health").await;
    assert_eq!(s, 200);
    assert_eq!(json(&body)["status"], "UP");

    let (s, _, body) = rest.get("/management/v1/node/state").await;
    assert_eq!(s, 200);
    assert_eq!(json(&body), json!({"name": "emb", "state": "STARTED"}));

    let (s, _, body) = rest.get("/management/v1/configuration/node").await;
    assert_eq!(s, 200);
    let all = json(&body);
    assert_eq!(all["node"]["name"], "emb");
    assert_eq!(all["rest"]["listen"], "127.0.0.1:0");

    let (s, _, body) = rest
        .get("/management/v1/configuration/node/node/stop_timeout_ms")
        .await;
    assert_eq!(s, 200);
    assert_eq!(json(&body), json!(10_000));

    let (s, _, body) = rest
        .patch(
            "/management/v1/configuration/node/node.stop_timeout_ms",
            "2500",
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(json(&body), json!(2500));
    let (s, _, body) = rest
        .patch(
            "/management/v1/configuration/node",
            r#"{"node": {"stop_timeout_ms": 3000}}"#,
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(json(&body)["node"]["stop_timeout_ms"], 3000);
    assert_eq!(
        ignite.configuration().get("node.stop_timeout_ms").unwrap(),
        json!(3000)
    );

    let (s, _, body) = rest.get("/management/v1/cluster/topology/physical").await;
    assert_eq!(s, 200);
    let members = json(&body);
    assert_eq!(members.as_array().unwrap().len(), 1);
    assert_eq!(members[0]["name"], "emb");
    assert_eq!(
        members[0]["metadata"]["rest"],
        format!("http://{}", ignite.rest_address().unwrap())
    );

    let (s, _, body) = rest.get("/metrics").await;
    assert_eq!(s, 200);
    assert!(body.contains("ignite_node_state"), "{body}");
    assert!(body.contains("ignite_component_start_seconds"), "{body}");

    let report = ignite.stop().await;
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(ignite.state(), NodeState::Stopped);
    assert!(
        rest.http
            .get(format!("{}/health", rest.base))
            .send()
            .await
            .is_err(),
        "rest closed after stop"
    );
}

#[tokio::test]
async fn rest_errors_are_problem_json_with_the_right_status() {
    let dir = tempfile::tempdir().unwrap();
    let ignite = IgniteImpl::start(NodeOptions::standalone("errs", dir.path()))
        .await
        .unwrap();
    let rest = Rest::of(&ignite);

    let (s, ct, body) = rest.get("/management/v1/nope").await;
    assert_eq!(s, 404);
    assert_eq!(ct, "application/problem+json");
    let p = json(&body);
    assert_eq!(p["status"], 404);
    assert!(p["detail"]
        .as_str()
        .unwrap()
        .contains("/management/v1/nope"));

    let (s, ct, body) = rest
        .get("/management/v1/configuration/node/node.nosuch")
        .await;
    assert_eq!(s, 404, "{body}");
    assert_eq!(ct, "application/problem+json");
    assert!(
        json(&body)["detail"]
            .as_str()
            .unwrap()
            .contains("node.nosuch"),
        "{body}"
    );

    let (s, ct, body) = rest
        .patch(
            "/management/v1/configuration/node/node.stop_timeout_ms",
            "{not json",
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(ct, "application/problem+json");
    assert!(
        json(&body)["detail"]
            .as_str()
            .unwrap()
            .contains("not valid JSON"),
        "{body}"
    );

    let (s, _, body) = rest
        .patch(
            "/management/v1/configuration/node/node.stop_timeout_ms",
            "\"soon\"",
        )
        .await;
    assert_eq!(s, 400, "{body}");
    assert!(
        json(&body)["detail"]
            .as_str()
            .unwrap()
            .contains("node.stop_timeout_ms"),
        "{body}"
    );
    assert_eq!(
        ignite.configuration().get("node.stop_timeout_ms").unwrap(),
        json!(10_000),
        "nothing changed"
    );

    ignite.stop().await;
}

#[tokio::test]
async fn cluster_mode_node_waits_in_zombie() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = NodeOptions::standalone("z", dir.path());
    options.standalone = false;
    let ignite = IgniteImpl::start(options).await.unwrap();
    assert_eq!(ignite.state(), NodeState::Zombie);
    let (s, _, body) = Rest::of(&ignite).get("/management/v1/node/state").await;
    assert_eq!(s, 200);
    assert_eq!(json(&body)["state"], "ZOMBIE");
    ignite.stop().await;
}

#[tokio::test]
async fn a_bad_override_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let options = NodeOptions::standalone("bad", dir.path()).with("rest.nosuch", 1);
    let err = IgniteImpl::start(options).await.unwrap_err().to_string();
    assert!(err.contains("rest.nosuch"), "{err}");
}

#[tokio::test]
async fn run_level_moves_down_for_maintenance_and_back_up_with_rows_intact() {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    let ignite = IgniteImpl::start(NodeOptions::standalone("lvl", dir.path()))
        .await
        .unwrap();
    let rest = Rest::of(&ignite);
    let (s, _, body) = rest.get("/management/v1/node/runlevel").await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        json(&body),
        json!({"runlevel": "ready", "state": "STARTED"})
    );

    let (s, _, body) = rest
        .send_json(
            Method::POST,
            "/v1/tables",
            r#"{"name": "t", "key": [{"name": "id", "type": "int64"}],
                "columns": [{"name": "v", "type": "string"}], "partitions": 2, "replicas": 1}"#,
        )
        .await;
    assert!(s == 200 || s == 201, "create: {s} {body}");
    let (s, _, body) = rest
        .send_json(Method::PUT, "/v1/tables/t/rows", r#"{"id": 1, "v": "one"}"#)
        .await;
    assert_eq!(s, 200, "{body}");

    // down to metastorage: the table layer stops, MetaStorage and configuration keep serving
    let (s, _, body) = rest
        .send_json(
            Method::PUT,
            "/management/v1/node/runlevel",
            r#"{"runlevel": "metastorage"}"#,
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        json(&body),
        json!({"runlevel": "metastorage", "state": "STARTED"})
    );
    assert_eq!(ignite.run_level(), Some(lifecycle::RunLevel::Metastorage));
    ignite
        .metastorage()
        .put(b"maintenance".to_vec(), b"on".to_vec())
        .await
        .unwrap();
    let (s, _, body) = rest
        .send_json(Method::POST, "/v1/tables/t/get", r#"{"key": {"id": 1}}"#)
        .await;
    assert!(
        s >= 400,
        "rows are not served while the table layer is down: {s} {body}"
    );

    // refused moves say why and change nothing
    let (s, _, body) = rest
        .send_json(
            Method::PUT,
            "/management/v1/node/runlevel",
            r#"{"runlevel": "zombie"}"#,
        )
        .await;
    assert_eq!(s, 409, "{body}");
    assert!(
        json(&body)["detail"]
            .as_str()
            .unwrap()
            .contains("stop the node instead"),
        "{body}"
    );
    let (s, _, body) = rest
        .send_json(
            Method::PUT,
            "/management/v1/node/runlevel",
            r#"{"runlevel": "up"}"#,
        )
        .await;
    assert_eq!(s, 400, "{body}");
    assert!(
        json(&body)["detail"].as_str().unwrap().contains("runlevel"),
        "{body}"
    );
    assert_eq!(ignite.run_level(), Some(lifecycle::RunLevel::Metastorage));

    // back up: the row written before is there and writes work again
    let (s, _, body) = rest
        .send_json(
            Method::PUT,
            "/management/v1/node/runlevel",
            r#"{"runlevel": "ready"}"#,
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(json(&body)["runlevel"], "ready");
    let (s, _, body) = rest
        .send_json(Method::POST, "/v1/tables/t/get", r#"{"key": {"id": 1}}"#)
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(json(&body)["row"], json!({"id": 1, "v": "one"}));
    let (s, _, body) = rest
        .send_json(Method::PUT, "/v1/tables/t/rows", r#"{"id": 2, "v": "two"}"#)
        .await;
    assert_eq!(s, 200, "{body}");
    ignite.stop().await;
}
