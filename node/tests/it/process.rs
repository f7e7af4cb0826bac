//! The real `ignite` binary: start, state, config, signals, bad input.
use crate::support::{run_cli, wait_for, NodeProcess};

fn state_of(url: &str) -> Option<serde_json::Value> {
    let (code, out, _) = run_cli(&["node", "state", "--url", url, "--output", "json"]);
    (code == 0).then(|| serde_json::from_str(out.trim()).expect("json output"))
}

#[test]
fn standalone_node_starts_answers_and_exits_zero_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(dir.path(), &["--standalone", "--name", "alpha"]);
    let state = wait_for("STARTED", || {
        state_of(&node.url()).filter(|v| v["state"] == "STARTED")
    });
    assert_eq!(state["name"], "alpha");

    let (code, out, _) = run_cli(&["node", "state", "--url", &node.url()]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "alpha: STARTED");

    let (code, out, _) = run_cli(&["node", "info", "--url", &node.url(), "--output", "json"]);
    assert_eq!(code, 0);
    let info: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(info["name"], "alpha");
    assert_eq!(info["standalone"], true);
    assert_eq!(info["pid"], node.pid());

    let (code, out, err) = run_cli(&["node", "runlevel", "metastorage", "--url", &node.url()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "runlevel: metastorage (state STARTED)");
    let (code, out, err) = run_cli(&["node", "runlevel", "--url", &node.url(), "--output", "json"]);
    assert_eq!(code, 0, "{err}");
    let level: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(level["runlevel"], "metastorage");
    let (code, _, err) = run_cli(&["node", "runlevel", "zombie", "--url", &node.url()]);
    assert_ne!(code, 0);
    assert!(err.contains("stop the node instead"), "{err}");
    let (code, out, err) = run_cli(&["node", "runlevel", "ready", "--url", &node.url()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "runlevel: ready (state STARTED)");

    let log_before = node.log();
    let status = node.terminate();
    assert_eq!(status.code(), Some(0), "SIGTERM exits 0; log: {log_before}");
}

#[test]
fn config_update_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(dir.path(), &["--standalone", "--name", "beta"]);
    wait_for("STARTED", || {
        state_of(&node.url()).filter(|v| v["state"] == "STARTED")
    });

    let (code, out, err) = run_cli(&[
        "node",
        "config",
        "update",
        "node.stop_timeout_ms=4321",
        "--url",
        &node.url(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("4321"), "{out}");
    let (code, _, err) = run_cli(&[
        "node",
        "config",
        "update",
        "node.stop_timeout_ms=1",
        "--url",
        &node.url(),
    ]);
    assert_ne!(code, 0, "out of range value is refused");
    assert!(
        err.contains("node.stop_timeout_ms"),
        "error names the key: {err}"
    );
    assert_eq!(node.terminate().code(), Some(0));

    // restart with a different --name: the vault wins and the flag is reported as ignored
    let node = NodeProcess::start(dir.path(), &["--standalone", "--name", "other"]);
    wait_for("STARTED", || {
        state_of(&node.url()).filter(|v| v["state"] == "STARTED")
    });
    let (code, out, _) = run_cli(&[
        "node",
        "config",
        "show",
        "node.stop_timeout_ms",
        "--url",
        &node.url(),
        "--output",
        "json",
    ]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "4321");
    let (_, out, _) = run_cli(&["node", "state", "--url", &node.url(), "--output", "json"]);
    assert!(out.contains("\"beta\""), "the stored name wins: {out}");
    assert!(
        node.log().contains("ignored: vault was bootstrapped"),
        "{}",
        node.log()
    );
    assert_eq!(node.terminate().code(), Some(0));
}

/// `--worker-threads` sizes the scheduler the node runs on (`node/info` reads the runtime's
/// own count); a value out of range is refused naming the flag.
#[test]
fn a_node_runs_on_the_scheduler_threads_it_is_given() {
    for threads in [1, 3] {
        let dir = tempfile::tempdir().unwrap();
        let count = threads.to_string();
        let node = NodeProcess::start(dir.path(), &["--standalone", "--worker-threads", &count]);
        wait_for("STARTED", || {
            state_of(&node.url()).filter(|v| v["state"] == "STARTED")
        });
        let (code, out, err) = run_cli(&["node", "info", "--url", &node.url(), "--output", "json"]);
        assert_eq!(code, 0, "{err}");
        let info: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(info["worker_threads"], threads, "{info}");
        assert_eq!(node.terminate().code(), Some(0));
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_string_lossy().into_owned();
    let (code, _, err) = run_cli(&["start", "--data-dir", &data, "--worker-threads", "0"]);
    assert_ne!(code, 0);
    assert!(err.contains("--worker-threads"), "names the flag: {err}");
}

#[test]
fn bad_config_file_exits_non_zero_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ignite.toml");
    std::fs::write(&file, "[node]\nname = \"n\"\nstop_timeout_msx = 5\n").unwrap();
    let data = dir.path().join("data");
    let (code, _, err) = run_cli(&[
        "start",
        "--config",
        file.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--rest",
        "127.0.0.1:0",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("stop_timeout_msx"), "names the key: {err}");
    assert!(err.contains("ignite.toml"), "names the file: {err}");

    std::fs::write(&file, "[rest]\nlisten = \"not an address\"\n").unwrap();
    let (code, _, err) = run_cli(&[
        "start",
        "--config",
        file.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("rest.listen"), "names the key: {err}");
}

#[test]
fn second_node_on_the_same_data_dir_is_refused_while_the_first_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let first = NodeProcess::start(dir.path(), &["--standalone", "--name", "one"]);
    wait_for("STARTED", || {
        state_of(&first.url()).filter(|v| v["state"] == "STARTED")
    });
    let d = dir.path().to_string_lossy().into_owned();
    let (code, _, err) = run_cli(&[
        "start",
        "--standalone",
        "--data-dir",
        &d,
        "--rest",
        "127.0.0.1:0",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("in use"), "clear error: {err}");
    assert!(err.contains(&d), "names the directory: {err}");
    let state = state_of(&first.url()).expect("first node still answers");
    assert_eq!(state["state"], "STARTED");
    assert_eq!(first.terminate().code(), Some(0));
}

#[test]
fn client_errors_go_to_stderr_with_a_non_zero_exit() {
    // nothing listens on port 9 (discard) of loopback
    let (code, out, err) = run_cli(&["node", "state", "--url", "http://127.0.0.1:9"]);
    assert_ne!(code, 0);
    assert!(out.is_empty());
    assert!(err.contains("cannot reach node"), "{err}");
    let (code, _, err) = run_cli(&[
        "node",
        "config",
        "update",
        "novalue",
        "--url",
        "http://127.0.0.1:9",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("PATH=VALUE"), "{err}");
}

fn members_of(url: &str) -> Option<Vec<String>> {
    let (code, out, _) = run_cli(&[
        "cluster", "topology", "physical", "--url", url, "--output", "json",
    ]);
    if code != 0 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(out.trim()).ok()?;
    let mut names: Vec<String> = v
        .as_array()?
        .iter()
        .filter_map(|m| m["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    Some(names)
}

#[test]
fn three_processes_see_each_other_and_a_killed_one_disappears() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = NodeProcess::start(dirs[0].path(), &["--name", "a"]);
    let (seed, _) = network_address(&a.url());
    // without --standalone a node waits for init (STARTING until its zombie level is up)
    wait_for("ZOMBIE", || node_state(&a.url()).filter(|s| s == "ZOMBIE"));

    let b = NodeProcess::start(dirs[1].path(), &["--name", "b", "--seeds", &seed]);
    let c = NodeProcess::start(dirs[2].path(), &["--name", "c", "--seeds", &seed]);
    let all = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
    for node in [&a, &b, &c] {
        wait_for("all three members", || {
            members_of(&node.url()).filter(|m| *m == all)
        });
    }
    // the human table lists the members with their REST address
    let (code, out, _) = run_cli(&["cluster", "topology", "physical", "--url", &b.url()]);
    assert_eq!(code, 0);
    assert!(out.starts_with("NAME"), "{out}");
    assert!(
        out.contains(&a.url()),
        "REST address gossiped as metadata: {out}"
    );

    crate::support::send_signal(c.pid(), 9);
    let two = vec!["a".to_owned(), "b".to_owned()];
    for node in [&a, &b] {
        wait_for("c to disappear", || {
            members_of(&node.url()).filter(|m| *m == two)
        });
    }
    drop(c);
    assert_eq!(b.terminate().code(), Some(0));
    wait_for("b to say goodbye", || {
        members_of(&a.url()).filter(|m| *m == ["a".to_owned()])
    });
    assert_eq!(a.terminate().code(), Some(0));
}

fn node_state(url: &str) -> Option<String> {
    state_of(url).and_then(|v| v["state"].as_str().map(str::to_owned))
}

#[test]
fn three_processes_init_through_the_cli_and_survive_a_killed_voter() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = NodeProcess::start(dirs[0].path(), &["--name", "a"]);
    let (seed, _) = network_address(&a.url());
    let b = NodeProcess::start(dirs[1].path(), &["--name", "b", "--seeds", &seed]);
    let c = NodeProcess::start(dirs[2].path(), &["--name", "c", "--seeds", &seed]);
    let all = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
    for node in [&a, &b, &c] {
        wait_for("all three members", || {
            members_of(&node.url()).filter(|m| *m == all)
        });
    }

    let (code, _, err) = run_cli(&["cluster", "status", "--url", &a.url()]);
    assert_ne!(code, 0);
    assert!(
        err.contains("cluster is not initialized: run `ignite cluster init`"),
        "{err}"
    );

    let (code, out, err) = run_cli(&["cluster", "init", "--name", "procs", "--url", &b.url()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("cluster procs initialized"), "{out}");
    let mut ids = Vec::new();
    for node in [&a, &b, &c] {
        wait_for("STARTED", || {
            node_state(&node.url()).filter(|s| s == "STARTED")
        });
        let (code, out, err) = run_cli(&[
            "cluster",
            "status",
            "--url",
            &node.url(),
            "--output",
            "json",
        ]);
        assert_eq!(code, 0, "{err}");
        let status: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(status["name"], "procs");
        assert_eq!(
            status["metastorage_voters"],
            serde_json::json!(["a", "b", "c"])
        );
        ids.push(status["id"].clone());
    }
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "one cluster id: {ids:?}"
    );

    // kill -9 a voter: the other two keep accepting configuration changes
    let c_dir = dirs[2].path().to_path_buf();
    crate::support::send_signal(c.pid(), 9);
    drop(c);
    let (code, out, err) = run_cli(&[
        "cluster",
        "config",
        "update",
        "cluster.default_partitions=11",
        "--url",
        &a.url(),
    ]);
    assert_eq!(code, 0, "2 of 3 voters accept a change: {err}");
    assert!(out.contains("11"));

    // the killed voter restarts alone (no init) and catches up
    let c = NodeProcess::start(&c_dir, &["--name", "c", "--seeds", &seed]);
    wait_for("restarted c STARTED", || {
        node_state(&c.url()).filter(|s| s == "STARTED")
    });
    let (code, out, err) = run_cli(&[
        "cluster",
        "config",
        "show",
        "cluster.default_partitions",
        "--url",
        &c.url(),
        "--output",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        "11",
        "the restarted node sees the change made while it was down"
    );

    for node in [c, b, a] {
        assert_eq!(node.terminate().code(), Some(0));
    }
}

/// The node's network address from `node info` (REST answers before the network is bound, so
/// wait for it), and the info document.
fn network_address(url: &str) -> (String, serde_json::Value) {
    wait_for("network address in node info", || {
        let (code, out, _) = run_cli(&["node", "info", "--url", url, "--output", "json"]);
        let info: serde_json::Value = serde_json::from_str(out.trim())
            .ok()
            .filter(|_| code == 0)?;
        let address = info["network_address"].as_str()?.to_owned();
        Some((address, info))
    })
}
