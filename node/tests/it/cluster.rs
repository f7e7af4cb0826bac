//! Two-phase cluster init through the facade and REST: zombie nodes, init, cluster-level
//! endpoints, cluster-wide configuration seen on every node.
use std::time::Duration;

use lifecycle::NodeState;
use node::{IgniteImpl, InitRequest, NodeOptions};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(30);

async fn zombie(name: &str, dir: &std::path::Path, seeds: Vec<String>) -> IgniteImpl {
    let mut options = NodeOptions::standalone(name, dir).with("network.seeds", seeds);
    options.standalone = false;
    let ignite = IgniteImpl::start(options).await.unwrap();
    assert_eq!(ignite.state(), NodeState::Zombie);
    ignite
}

async fn wait_started(ignite: &IgniteImpl) {
    let state = ignite
        .wait_for_state(DEADLINE, |s| s == NodeState::Started)
        .await;
    assert_eq!(
        state,
        Some(NodeState::Started),
        "{} did not reach STARTED",
        ignite.name()
    );
}

async fn http(
    method: reqwest::Method,
    ignite: &IgniteImpl,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let url = format!("http://{}{path}", ignite.rest_address().unwrap());
    let mut req = reqwest::Client::new().request(method, url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_node_answers_409_until_init_then_serves_the_cluster_api() {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    let node = zombie("solo", dir.path(), vec![]).await;

    for path in [
        "/management/v1/cluster/state",
        "/management/v1/cluster/topology/logical",
        "/management/v1/configuration/cluster",
    ] {
        let (s, body) = http(Method::GET, &node, path, None).await;
        assert_eq!(s, 409, "{path}: {body}");
        assert_eq!(
            body["detail"], "cluster is not initialized: run `ignite cluster init`",
            "{path}"
        );
    }
    // what keeps working before init
    for path in [
        "/health",
        "/metrics",
        "/management/v1/node/state",
        "/management/v1/node/info",
        "/management/v1/configuration/node",
        "/management/v1/cluster/topology/physical",
    ] {
        let (s, _) = http(Method::GET, &node, path, None).await;
        assert_eq!(s, 200, "{path} works before init");
    }

    let (s, body) = http(
        Method::POST,
        &node,
        "/management/v1/cluster/init",
        Some(json!({"nam": "x"})),
    )
    .await;
    assert_eq!(s, 400, "{body}");
    let (s, body) = http(
        Method::POST,
        &node,
        "/management/v1/cluster/init",
        Some(json!({"name": "c1", "metastorage": ["ghost"]})),
    )
    .await;
    assert_eq!(s, 400, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("ghost"), "{body}");

    let (s, state) = http(
        Method::POST,
        &node,
        "/management/v1/cluster/init",
        Some(json!({"name": "c1"})),
    )
    .await;
    assert_eq!(s, 200, "{state}");
    assert_eq!(state["metastorage_voters"], json!(["solo"]));
    wait_started(&node).await;

    let (s, again) = http(
        Method::POST,
        &node,
        "/management/v1/cluster/init",
        Some(json!({"name": "c1"})),
    )
    .await;
    assert_eq!(s, 200, "same init again succeeds: {again}");
    assert_eq!(again["id"], state["id"]);
    let (s, body) = http(
        Method::POST,
        &node,
        "/management/v1/cluster/init",
        Some(json!({"name": "c2"})),
    )
    .await;
    assert_eq!(s, 409, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("c1"),
        "says why: {body}"
    );

    let (s, body) = http(Method::GET, &node, "/management/v1/cluster/state", None).await;
    assert_eq!(s, 200);
    assert_eq!(body["name"], "c1");
    assert_eq!(body["id"], state["id"]);
    assert_eq!(body["metastorage_leader"], "solo");
    let (s, body) = http(
        Method::GET,
        &node,
        "/management/v1/cluster/topology/logical",
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(body[0]["name"], "solo");
    assert_eq!(body[0]["role"], "voter");

    let (s, body) = http(
        Method::GET,
        &node,
        "/management/v1/configuration/cluster/cluster.default_replicas",
        None,
    )
    .await;
    assert_eq!((s, body), (200, json!(1)));
    let (s, body) = http(
        Method::PATCH,
        &node,
        "/management/v1/configuration/cluster/cluster.default_replicas",
        Some(json!(3)),
    )
    .await;
    assert_eq!((s, body), (200, json!(3)));
    let (s, body) = http(
        Method::PATCH,
        &node,
        "/management/v1/configuration/cluster/cluster.default_replicas",
        Some(json!(99)),
    )
    .await;
    assert_eq!(s, 400, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("cluster.default_replicas"),
        "{body}"
    );
    assert!(node.stop().await.is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_init_from_one_and_share_cluster_configuration() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = zombie("a", dirs[0].path(), vec![]).await;
    let seed = a.info().network_address.unwrap().to_string();
    let b = zombie("b", dirs[1].path(), vec![seed.clone()]).await;
    let c = zombie("c", dirs[2].path(), vec![seed]).await;
    for n in [&a, &b, &c] {
        tokio::time::timeout(DEADLINE, async {
            while n.topology().members().len() < 3 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("all three see each other");
    }

    let state = b
        .init_cluster(InitRequest {
            name: "trio".into(),
            metastorage: vec![],
        })
        .await
        .unwrap();
    assert_eq!(
        state.metastorage_voters,
        ["a", "b", "c"],
        "default: up to 3 nodes alphabetically"
    );
    for n in [&a, &b, &c] {
        wait_started(n).await;
        assert_eq!(
            n.cluster_state().await.unwrap().as_ref(),
            Some(&state),
            "same state in every vault"
        );
    }

    // a write on one node is read linearizably on another right after it returns
    let rev = a
        .metastorage()
        .put(b"k".to_vec(), b"v".to_vec())
        .await
        .unwrap();
    let e = c
        .metastorage()
        .get(b"k")
        .await
        .unwrap()
        .expect("linearizable read sees the write");
    assert_eq!((e.value.as_deref(), e.revision), (Some(&b"v"[..]), rev));

    // cluster configuration changed on one node reaches the others
    a.cluster_configuration()
        .change("cluster.default_partitions", json!(7))
        .await
        .unwrap();
    for n in [&b, &c] {
        tokio::time::timeout(DEADLINE, async {
            while n
                .cluster_configuration()
                .get("cluster.default_partitions")
                .ok()
                != Some(json!(7))
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{} sees the change", n.name()));
    }
    // the baseline follows the logical topology once the cluster formed; a manual set is
    // validated and seen by every node
    use reqwest::Method;
    let all: std::collections::BTreeSet<String> = ["a", "b", "c"].map(String::from).into();
    tokio::time::timeout(DEADLINE, async {
        while a.baseline().nodes != all {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("baseline = the three nodes");
    let (s, body) = http(
        Method::PUT,
        &b,
        "/management/v1/cluster/baseline",
        Some(json!({"nodes": ["a", "ghost"]})),
    )
    .await;
    assert_eq!(s, 400, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("ghost"), "{body}");
    let (s, body) = http(
        Method::PUT,
        &b,
        "/management/v1/cluster/baseline",
        Some(json!({"nodes": ["a", "b"]})),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["nodes"], json!(["a", "b"]));
    tokio::time::timeout(DEADLINE, async {
        loop {
            let (_, body) = http(Method::GET, &c, "/management/v1/cluster/baseline", None).await;
            if body["nodes"] == json!(["a", "b"]) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("c sees the manual baseline");

    for n in [&c, &b, &a] {
        n.stop().await;
    }
}
