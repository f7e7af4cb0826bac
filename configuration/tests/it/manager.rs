//! The manager over the vault: reads, durable changes, listeners, validation, merge patch,
//! and the lifecycle around them.
use std::sync::Arc;

use configuration::{
    BootstrapConfig, ConfigChange, ConfigRoot, ConfigurationManager, ConfigurationStorage,
    ConfigurationType, Error, LocalConfigurationStorage, RootKey,
};
use lifecycle::Component;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::json;
use vault::VaultEntry;

use crate::support::{bounded, ctx, local_roots, start_vault, Local, TestNode, TestRest};

fn recorder(log: &Arc<Mutex<Vec<ConfigChange>>>) -> configuration::Listener {
    let log = Arc::clone(log);
    Arc::new(move |change: &ConfigChange| {
        log.lock().push(change.clone());
        Ok(())
    })
}

#[tokio::test]
async fn get_reads_every_level_and_refuses_unknown_paths() {
    let mut bootstrap = BootstrapConfig::new(&local_roots());
    bootstrap.set("node.name", json!("n1")).expect("valid");
    let local = Local::new(start_vault(None).await, Some(bootstrap));
    local.start().await.expect("start");
    let m = &local.manager;
    assert_eq!(m.roots(), vec!["node".to_owned(), "rest".to_owned()]);
    assert_eq!(m.get("node.name").expect("leaf"), json!("n1"));
    assert_eq!(
        m.get("node.limits.max_connections").expect("leaf"),
        json!(16)
    );
    assert_eq!(
        m.get("rest").expect("root"),
        json!({"listen": "", "enabled": false})
    );
    let all = m.get("").expect("everything");
    assert_eq!(all["node"]["port"], json!(3344));
    assert_eq!(all["rest"]["enabled"], json!(false));
    for path in ["nope", "node.nope", "node.name.deeper"] {
        let err = m.get(path).expect_err(path);
        assert!(matches!(err, Error::UnknownKey { .. }), "{path}: {err}");
        assert_eq!(
            err.to_string(),
            format!("key {path}: unknown configuration key")
        );
    }
    local.stop().await;
}

#[tokio::test]
async fn change_is_durable_across_a_restart_of_vault_and_manager() {
    let dir = tempfile::tempdir().expect("temp dir");
    let local = Local::new(start_vault(Some(dir.path())).await, None);
    local.start().await.expect("start");
    bounded(local.manager.change("node.port", json!(4100)))
        .await
        .expect("valid change");
    bounded(local.manager.change("node.seeds", json!(["x:1"])))
        .await
        .expect("valid change");
    assert_eq!(local.manager.root::<TestNode>().expect("root").port, 4100);
    local.stop().await;

    // a fresh vault and manager over the same directory, with a bootstrap that disagrees
    let mut bootstrap = BootstrapConfig::new(&local_roots());
    bootstrap.set("node.port", json!(5000)).expect("valid");
    let again = Local::new(start_vault(Some(dir.path())).await, Some(bootstrap));
    again.start().await.expect("restart");
    let node: TestNode = again.manager.root().expect("root");
    assert_eq!(node.port, 4100);
    assert_eq!(node.seeds, vec!["x:1".to_owned()]);
    assert_eq!(
        again.manager.ignored_bootstrap_keys(),
        vec!["node.port".to_owned()]
    );
    again.stop().await;
}

#[tokio::test]
async fn listeners_see_path_then_parents_with_old_and_new_values() {
    let local = Local::new(start_vault(None).await, None);
    local.start().await.expect("start");
    let log = Arc::new(Mutex::new(Vec::new()));
    // registered in an order that differs from the call order
    for path in [
        "",
        "node",
        "node.limits",
        "node.limits.timeout_ms",
        "rest",
        "node.name",
    ] {
        local.manager.listen(path, recorder(&log));
    }
    bounded(local.manager.change("node.limits.timeout_ms", json!(7)))
        .await
        .expect("valid change");
    let calls = log.lock().clone();
    let paths: Vec<&str> = calls.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(
        paths,
        ["node.limits.timeout_ms", "node.limits", "node", ""],
        "deepest first; untouched paths are not called"
    );
    assert_eq!(
        (calls[0].old.clone(), calls[0].new.clone()),
        (json!(1000), json!(7))
    );
    assert_eq!(calls[1].old["timeout_ms"], json!(1000));
    assert_eq!(calls[1].new["timeout_ms"], json!(7));
    assert_eq!(calls[1].new["max_connections"], json!(16));
    assert_eq!(calls[2].new["limits"]["timeout_ms"], json!(7));
    assert_eq!(calls[3].new["node"]["limits"]["timeout_ms"], json!(7));
    assert_eq!(calls[3].old["node"]["limits"]["timeout_ms"], json!(1000));

    // a change of a parent also reaches the listeners of the children it changed
    log.lock().clear();
    bounded(local.manager.change("node", json!({"name": "renamed"})))
        .await
        .expect("valid change");
    let calls = log.lock().clone();
    let paths: Vec<&str> = calls.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(paths, ["node.name", "node", ""]);
    assert_eq!(
        (calls[0].old.clone(), calls[0].new.clone()),
        (json!("node"), json!("renamed"))
    );

    // setting the current value again notifies nobody
    log.lock().clear();
    bounded(local.manager.change("node.name", json!("renamed")))
        .await
        .expect("valid change");
    assert!(log.lock().is_empty());
    local.stop().await;
}

#[tokio::test]
async fn listener_error_is_reported_and_the_change_stays() {
    let local = Local::new(start_vault(None).await, None);
    local.start().await.expect("start");
    let log = Arc::new(Mutex::new(Vec::new()));
    local.manager.listen(
        "rest.listen",
        Arc::new(|_: &ConfigChange| Err("address in use".to_owned())),
    );
    local.manager.listen("rest", recorder(&log));
    let err = bounded(local.manager.change("rest.listen", json!("0.0.0.0:80")))
        .await
        .expect_err("the listener refuses");
    assert!(matches!(err, Error::ListenerFailed { .. }));
    assert_eq!(
        err.to_string(),
        "listener of rest.listen failed: address in use"
    );
    assert_eq!(log.lock().len(), 1, "the other listeners still run");
    assert_eq!(
        local.manager.get("rest.listen").expect("get"),
        json!("0.0.0.0:80")
    );
    assert_eq!(
        local.stored().await.get("rest.listen"),
        Some(&json!("0.0.0.0:80"))
    );
    local.stop().await;
}

#[tokio::test]
async fn invalid_changes_name_the_key_and_write_nothing() {
    let local = Local::new(start_vault(None).await, None);
    local.start().await.expect("start");
    bounded(local.manager.change("node.name", json!("kept")))
        .await
        .expect("valid change");
    let log = Arc::new(Mutex::new(Vec::new()));
    local.manager.listen("", recorder(&log));
    let before = bounded(local.storage.read_all()).await.expect("read");

    let cases = [
        (
            "node.foo",
            json!(1),
            "key node.foo: unknown configuration key",
        ),
        (
            "node",
            json!({"foo": 1}),
            "key node.foo: unknown configuration key",
        ),
        ("nope", json!(1), "key nope: unknown configuration key"),
        ("nope.x", json!(1), "key nope.x: unknown configuration key"),
        (
            "",
            json!({"nope": {}}),
            "key nope: unknown configuration key",
        ),
        (
            "node.port",
            json!(80),
            "key node.port: must be at least 1024",
        ),
        (
            "node.port",
            json!("x"),
            "key node.port: invalid type: string \"x\", expected u16",
        ),
        (
            "node.seeds",
            json!("a"),
            "key node.seeds: invalid type: string \"a\", expected a sequence",
        ),
        (
            "node",
            json!({"name": "ok", "port": 1}),
            "key node.port: must be at least 1024",
        ),
        (
            "node.limits.tags",
            json!({"a.b": "x"}),
            "key node.limits.tags.a.b: a configuration key must not be empty or contain '.'",
        ),
    ];
    for (path, value, message) in cases {
        let err = bounded(local.manager.change(path, value))
            .await
            .expect_err(path);
        assert_eq!(err.to_string(), message, "change of {path}");
    }
    let after = bounded(local.storage.read_all()).await.expect("read");
    assert_eq!(after, before, "nothing written, not even the version");
    assert!(log.lock().is_empty(), "no listener called");
    assert_eq!(local.manager.get("node.name").expect("get"), json!("kept"));
    local.stop().await;
}

#[tokio::test]
async fn objects_merge_scalars_and_arrays_replace_and_null_resets() {
    let local = Local::new(start_vault(None).await, None);
    local.start().await.expect("start");
    let m = &local.manager;
    bounded(m.change(
        "node",
        json!({"name": "a", "seeds": ["s1", "s2"], "limits": {"tags": {"x": "1", "y": "2"}}}),
    ))
    .await
    .expect("valid");
    bounded(m.change(
        "node",
        json!({"limits": {"timeout_ms": 5, "tags": {"y": null, "z": "3"}}, "seeds": ["s3"]}),
    ))
    .await
    .expect("valid");
    let node: TestNode = m.root().expect("root");
    assert_eq!(node.name, "a", "untouched members stay");
    assert_eq!(node.seeds, vec!["s3".to_owned()], "arrays replace");
    assert_eq!(node.limits.timeout_ms, 5);
    assert_eq!(
        node.limits.tags,
        [
            ("x".to_owned(), "1".to_owned()),
            ("z".to_owned(), "3".to_owned())
        ]
        .into(),
        "maps merge; null removes"
    );

    bounded(m.change("node.name", serde_json::Value::Null))
        .await
        .expect("reset");
    assert_eq!(
        m.root::<TestNode>().expect("root").name,
        "node",
        "back to the default"
    );
    assert_eq!(
        local.stored().await.get("node.name"),
        None,
        "a reset removes the stored key"
    );

    // the whole configuration at once
    bounded(m.change(
        "",
        json!({"node": {"port": 4444}, "rest": {"enabled": true}}),
    ))
    .await
    .expect("valid");
    assert_eq!(m.root::<TestNode>().expect("root").port, 4444);
    assert_eq!(m.root::<TestNode>().expect("root").limits.timeout_ms, 5);
    assert!(m.root::<TestRest>().expect("root").enabled);
    local.stop().await;
}

#[tokio::test]
async fn change_before_start_and_after_stop_is_refused() {
    let local = Local::new(start_vault(None).await, None);
    let err = bounded(local.manager.change("node.port", json!(4000)))
        .await
        .expect_err("not started");
    assert!(matches!(err, Error::NotStarted(_)), "{err}");
    assert_eq!(
        local.manager.root::<TestNode>().expect("root"),
        TestNode::default()
    );
    local.start().await.expect("start");
    assert_eq!(local.manager.name(), "configuration");
    bounded(local.manager.stop()).await.expect("stop");
    bounded(local.manager.stop())
        .await
        .expect("stop is idempotent");
    let err = bounded(local.manager.change("node.port", json!(4000)))
        .await
        .expect_err("stopped");
    assert!(matches!(err, Error::Stopping(_)), "{err}");
    assert_eq!(err.to_string(), "component configuration is stopping");

    // and it starts again (a run-level change)
    local.start().await.expect("restart");
    bounded(local.manager.change("node.port", json!(4000)))
        .await
        .expect("serving again");
    local.stop().await;
}

/// A root named like [`TestNode`] but with a stricter check, as after an upgrade.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(default)]
struct StrictNode {
    port: u16,
}

impl ConfigRoot for StrictNode {
    const KEY: &'static str = "node";
    const TYPE: ConfigurationType = ConfigurationType::Local;
    fn validate(&self) -> Result<(), (String, String)> {
        if self.port != 0 && self.port < 5000 {
            return Err(("port".into(), "must be at least 5000".into()));
        }
        Ok(())
    }
}

fn strict_manager(
    vault: &Arc<vault::VaultManager>,
    bootstrap: Option<BootstrapConfig>,
) -> ConfigurationManager {
    let storage: Arc<dyn ConfigurationStorage> =
        Arc::new(LocalConfigurationStorage::new(Arc::clone(vault)));
    ConfigurationManager::new(vec![RootKey::of::<StrictNode>()], vec![storage], bootstrap)
}

#[tokio::test]
async fn invalid_bootstrap_fails_start_and_writes_nothing() {
    let mut bootstrap = BootstrapConfig::new(&local_roots());
    bootstrap
        .set("node.port", json!(4000))
        .expect("valid for TestNode");
    let vault = start_vault(None).await;
    let manager = strict_manager(&vault, Some(bootstrap));
    let err = bounded(manager.start(&ctx()))
        .await
        .expect_err("invalid bootstrap");
    assert_eq!(err.to_string(), "key node.port: must be at least 5000");
    assert!(
        !vault.bootstrapped().await.expect("marker"),
        "not bootstrapped"
    );
    assert!(vault.prefix(b"config/").await.expect("prefix").is_empty());
    bounded(manager.stop())
        .await
        .expect("stop after a failed start");
}

#[tokio::test]
async fn stored_values_that_no_longer_validate_fail_start_naming_the_key() {
    let vault = start_vault(None).await;
    let local = Local::new(Arc::clone(&vault), None);
    local.start().await.expect("start");
    bounded(local.manager.change("node.port", json!(4000)))
        .await
        .expect("valid for TestNode");
    bounded(local.manager.stop()).await.expect("stop");

    let manager = strict_manager(&vault, None);
    let err = bounded(manager.start(&ctx()))
        .await
        .expect_err("stored value invalid");
    assert_eq!(
        err.to_string(),
        "stored configuration: key node.port: must be at least 5000"
    );
    bounded(manager.stop()).await.expect("stop");

    // a value that is not json at all
    vault
        .put_all(vec![VaultEntry {
            key: b"config/local/value/node.port".to_vec(),
            value: Some(b"{not json".to_vec()),
        }])
        .await
        .expect("put");
    let again = Local::new(Arc::clone(&vault), None);
    let err = again.start().await.expect_err("corrupt value");
    assert!(
        err.starts_with("stored configuration key node.port: value is not json"),
        "{err}"
    );
    again.stop().await;
}
