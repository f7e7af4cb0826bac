//! Bootstrap: file values land in the vault on first start, the vault wins afterwards,
//! environment and flag overrides, and errors that name file, key and reason.
use configuration::{BootstrapConfig, Error};
use serde_json::json;

use crate::support::{local_roots, no_env, start_vault, write_file, Local, TestNode, TestRest};

#[tokio::test]
async fn first_start_writes_file_values_and_the_marker() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write_file(
        dir.path(),
        "[node]\nname = \"n1\"\nseeds = [\"a:1\", \"b:2\"]\n[node.limits]\ntimeout_ms = 5\n",
    );
    let bootstrap =
        BootstrapConfig::load_with_env(&local_roots(), Some(&file), no_env()).expect("valid file");
    assert_eq!(bootstrap.file(), Some(file.as_path()));

    let vault = start_vault(None).await;
    assert!(!vault.bootstrapped().await.expect("marker"));
    let local = Local::new(vault.clone(), Some(bootstrap));
    local.start().await.expect("manager starts");

    assert!(
        vault.bootstrapped().await.expect("marker"),
        "marker written"
    );
    let stored = local.stored().await;
    assert_eq!(
        stored,
        [
            ("node.limits.timeout_ms".to_owned(), json!(5)),
            ("node.name".to_owned(), json!("n1")),
            ("node.seeds".to_owned(), json!(["a:1", "b:2"])),
        ]
        .into(),
        "only the values set are stored; defaults are not"
    );
    let node: TestNode = local.manager.root().expect("typed root");
    assert_eq!(node.name, "n1");
    assert_eq!(node.port, 3344, "default fills what the file did not set");
    assert_eq!(node.limits.timeout_ms, 5);
    assert_eq!(node.limits.max_connections, 16);
    assert!(local.manager.ignored_bootstrap_keys().is_empty());
    local.stop().await;
}

#[tokio::test]
async fn first_start_without_values_still_sets_the_marker() {
    let vault = start_vault(None).await;
    let local = Local::new(vault.clone(), None);
    local.start().await.expect("manager starts");
    assert!(vault.bootstrapped().await.expect("marker"));
    assert!(local.stored().await.is_empty());
    assert_eq!(
        local.manager.root::<TestNode>().expect("root"),
        TestNode::default()
    );
    local.stop().await;
}

#[tokio::test]
async fn second_start_with_another_file_keeps_the_vault_and_lists_ignored_keys() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let first = write_file(dir.path(), "[node]\nname = \"a\"\nport = 4000\n");
    let bootstrap =
        BootstrapConfig::load_with_env(&local_roots(), Some(&first), no_env()).expect("valid");
    let local = Local::new(start_vault(Some(&data)).await, Some(bootstrap));
    local.start().await.expect("first start");
    local.stop().await;

    let second = write_file(
        dir.path(),
        "[node]\nname = \"b\"\nport = 4000\n[rest]\nenabled = true\n[rest.extra]\n",
    );
    // `rest.extra` is an unknown key: the file is still checked on every start
    let err = BootstrapConfig::load_with_env(&local_roots(), Some(&second), no_env())
        .expect_err("unknown key");
    assert!(matches!(err, Error::UnknownKey { .. }), "{err}");
    let second = write_file(
        dir.path(),
        "[node]\nname = \"b\"\nport = 4000\n[rest]\nenabled = true\n",
    );
    let bootstrap =
        BootstrapConfig::load_with_env(&local_roots(), Some(&second), no_env()).expect("valid");
    let local = Local::new(start_vault(Some(&data)).await, Some(bootstrap));
    local.start().await.expect("second start");
    let node: TestNode = local.manager.root().expect("root");
    assert_eq!(node.name, "a", "the vault is the source of truth");
    assert_eq!(node.port, 4000);
    assert!(!local.manager.root::<TestRest>().expect("root").enabled);
    assert_eq!(
        local.manager.ignored_bootstrap_keys(),
        vec!["node.name".to_owned(), "rest.enabled".to_owned()],
        "values equal to the stored ones are not reported"
    );
    assert_eq!(
        local.stored().await.get("node.name"),
        Some(&json!("a")),
        "nothing of the second file was written"
    );
    assert_eq!(local.stored().await.get("rest.enabled"), None);
    local.stop().await;
}

#[test]
fn environment_overrides_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write_file(dir.path(), "[node]\nname = \"file\"\nport = 4000\n");
    let env = vec![
        ("IGNITE__NODE__PORT".to_owned(), "5000".to_owned()),
        ("IGNITE__NODE__SEEDS".to_owned(), "h1:1, h2:2".to_owned()),
        (
            "IGNITE__NODE__LIMITS__MAX_CONNECTIONS".to_owned(),
            "7".to_owned(),
        ),
        ("IGNITE__REST__LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
        ("IGNITE__REST__ENABLED".to_owned(), "true".to_owned()),
        ("PATH".to_owned(), "/bin".to_owned()),
        ("IGNITE_HOME".to_owned(), "/opt".to_owned()),
    ];
    let cfg = BootstrapConfig::load_with_env(&local_roots(), Some(&file), env).expect("valid");
    let node: TestNode = cfg.root().expect("root");
    assert_eq!(node.name, "file");
    assert_eq!(node.port, 5000);
    assert_eq!(node.seeds, vec!["h1:1".to_owned(), "h2:2".to_owned()]);
    assert_eq!(node.limits.max_connections, 7);
    let rest: TestRest = cfg.root().expect("root");
    assert_eq!(rest.listen, "127.0.0.1:0");
    assert!(rest.enabled);
}

#[test]
fn environment_errors_name_the_variable_and_key() {
    let cases = [
        (
            "IGNITE__NODE__PORT",
            "80",
            "environment variable IGNITE__NODE__PORT: key node.port: must be at least 1024",
        ),
        (
            "IGNITE__NODE__PORT",
            "lots",
            "environment variable IGNITE__NODE__PORT: key node.port: invalid type: string \"lots\", expected u16",
        ),
        (
            "IGNITE__NODE__COLOR",
            "red",
            "environment variable IGNITE__NODE__COLOR: key node.color: unknown configuration key",
        ),
        (
            "IGNITE__NOPE__X",
            "1",
            "environment variable IGNITE__NOPE__X: key nope: unknown configuration key",
        ),
    ];
    for (name, value, message) in cases {
        let env = vec![(name.to_owned(), value.to_owned())];
        let err = BootstrapConfig::load_with_env(&local_roots(), None, env).expect_err(name);
        assert_eq!(err.to_string(), message);
    }
}

#[test]
fn flags_override_file_and_environment() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write_file(dir.path(), "[node]\nname = \"file\"\nport = 4000\n");
    let env = vec![("IGNITE__NODE__NAME".to_owned(), "env".to_owned())];
    let mut cfg = BootstrapConfig::load_with_env(&local_roots(), Some(&file), env).expect("valid");
    assert_eq!(cfg.root::<TestNode>().expect("root").name, "env");
    cfg.set("node.name", json!("flag")).expect("valid flag");
    cfg.set("node.limits", json!({"timeout_ms": 9}))
        .expect("valid flag");
    let node: TestNode = cfg.root().expect("root");
    assert_eq!(node.name, "flag");
    assert_eq!(node.port, 4000, "other file values stay");
    assert_eq!(node.limits.timeout_ms, 9);

    let before = cfg.values();
    let err = cfg.set("node.port", json!(1)).expect_err("out of range");
    assert_eq!(err.to_string(), "key node.port: must be at least 1024");
    let err = cfg.set("node.nick", json!("x")).expect_err("unknown key");
    assert_eq!(err.to_string(), "key node.nick: unknown configuration key");
    let err = cfg.set("nope.x", json!(1)).expect_err("unknown root");
    assert_eq!(err.to_string(), "key nope: unknown configuration key");
    assert_eq!(cfg.values(), before, "a refused flag changes nothing");

    // flags given together are validated together: only the final values must be valid
    cfg.set_all([
        ("node.port".to_owned(), json!(1)),
        ("node.name".to_owned(), json!("both")),
        ("node.port".to_owned(), json!(5000)),
    ])
    .expect("valid once all are applied");
    let node: TestNode = cfg.root().expect("root");
    assert_eq!((node.name.as_str(), node.port), ("both", 5000));
    let before = cfg.values();
    let err = cfg
        .set_all([
            ("node.name".to_owned(), json!("half")),
            ("node.port".to_owned(), json!(2)),
        ])
        .expect_err("the final port is out of range");
    assert_eq!(err.to_string(), "key node.port: must be at least 1024");
    assert_eq!(
        cfg.values(),
        before,
        "a refused set of flags changes nothing"
    );
}

#[test]
fn bad_files_name_file_key_and_reason() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("ignite.toml");
    let shown = path.display().to_string();
    let cases = [
        (
            "[node]\nseeds = \"a\"\n",
            format!("file {shown}: key node.seeds: invalid type: string \"a\", expected a sequence"),
        ),
        (
            "[node]\ncolour = \"red\"\n",
            format!("file {shown}: key node.colour: unknown configuration key"),
        ),
        (
            "[node.limits]\nmax_connections = -1\n",
            format!("file {shown}: key node.limits.max_connections: invalid value: integer `-1`, expected u32"),
        ),
        (
            "[node]\nport = 70000\n",
            format!("file {shown}: key node.port: invalid value: integer `70000`, expected u16"),
        ),
        (
            "[node]\nport = 80\n",
            format!("file {shown}: key node.port: must be at least 1024"),
        ),
        (
            "[metrics]\nenabled = true\n",
            format!("file {shown}: key metrics: unknown configuration key"),
        ),
    ];
    for (text, message) in cases {
        std::fs::write(&path, text).expect("write");
        let err =
            BootstrapConfig::load_with_env(&local_roots(), Some(&path), no_env()).expect_err(text);
        assert_eq!(err.to_string(), message);
    }

    std::fs::write(&path, "[node\nname = ").expect("write");
    let err = BootstrapConfig::load_with_env(&local_roots(), Some(&path), no_env())
        .expect_err("malformed");
    let message = err.to_string();
    assert!(
        message.starts_with(&format!("file {shown}: malformed toml: ")),
        "{message}"
    );
    assert!(matches!(err, Error::File { .. }));

    let missing = dir.path().join("missing.toml");
    let err = BootstrapConfig::load_with_env(&local_roots(), Some(&missing), no_env())
        .expect_err("missing file");
    assert!(
        err.to_string()
            .starts_with(&format!("file {}: cannot read: ", missing.display())),
        "{err}"
    );
}
