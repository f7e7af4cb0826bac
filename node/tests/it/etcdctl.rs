//! `etcdctl` (Debian's etcd-client package, API v3) against the etcd endpoint of three `ignite`
//! processes: put, get --prefix, del, txn from a script, a watch on one node receiving a put
//! made on another, endpoint status and member list.
use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::Instant,
};

use crate::support::{run_cli, wait_for, wait_with_deadline, NodeProcess, DEADLINE};

/// `etcdctl` from `PATH`; a missing one fails the test with what to install.
fn etcdctl_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("etcdctl"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "etcdctl not found on PATH: install Debian's etcd-client package \
                 (`apt-get install etcd-client`; CI installs it in .ci/run)"
            )
        })
}

fn etcdctl_command(endpoints: &str, args: &[&str]) -> Command {
    let mut command = Command::new(etcdctl_binary());
    command
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .args(["--dial-timeout=5s", "--command-timeout=10s"])
        .args(args);
    command
}

/// Runs `etcdctl --endpoints=ENDPOINTS ARGS...` with `stdin`: (exit code, stdout, stderr).
fn etcdctl(endpoints: &str, args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = etcdctl_command(endpoints, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn etcdctl");
    let mut input = child.stdin.take().expect("stdin is piped");
    input
        .write_all(stdin.as_bytes())
        .expect("write etcdctl stdin");
    drop(input);
    // read both pipes on threads so a chatty child never blocks on a full pipe
    let out = read_all(child.stdout.take().expect("stdout is piped"));
    let err = read_all(child.stderr.take().expect("stderr is piped"));
    let status = wait_with_deadline(&mut child);
    let out = out.join().expect("stdout reader");
    let err = err.join().expect("stderr reader");
    (status.code().unwrap_or(-1), out, err)
}

fn read_all(mut pipe: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

/// `etcdctl ARGS...` that must succeed; its stdout.
fn ok(endpoints: &str, args: &[&str]) -> String {
    let (code, out, err) = etcdctl(endpoints, args, "");
    assert_eq!(code, 0, "etcdctl {args:?} failed: {err}{out}");
    out
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not json ({e}): {text}"))
}

fn node_json(url: &str, what: &str) -> Option<serde_json::Value> {
    let (code, out, _) = run_cli(&["node", what, "--url", url, "--output", "json"]);
    (code == 0).then(|| json(&out))
}

fn members_of(url: &str) -> Option<usize> {
    let (code, out, _) = run_cli(&[
        "cluster", "topology", "physical", "--url", url, "--output", "json",
    ]);
    (code == 0).then(|| json(&out).as_array().map_or(0, Vec::len))
}

/// A node whose config turns on the etcd endpoint on a free loopback port.
fn start_node(dir: &Path, name: &str, seed: Option<&str>) -> NodeProcess {
    let config = dir.join("ignite.toml");
    std::fs::write(&config, "[metastorage]\netcd_listen = \"127.0.0.1:0\"\n")
        .expect("write config");
    let config = config.to_string_lossy().into_owned();
    let data = dir.join("data");
    std::fs::create_dir_all(&data).expect("create data dir");
    let data = data.to_string_lossy().into_owned();
    let mut extra = vec!["--config", config.as_str(), "--name", name];
    if let Some(seed) = seed {
        extra.extend(["--seeds", seed]);
    }
    NodeProcess::start(Path::new(&data), &extra)
}

#[test]
fn etcdctl_speaks_to_a_three_node_cluster() {
    // fail first, with the fix, when the tool is missing
    etcdctl_binary();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = start_node(dirs[0].path(), "a", None);
    let seed = wait_for("network address of a", || {
        node_json(&a.url(), "info").and_then(|v| v["network_address"].as_str().map(str::to_owned))
    });
    let b = start_node(dirs[1].path(), "b", Some(&seed));
    let c = start_node(dirs[2].path(), "c", Some(&seed));
    for node in [&a, &b, &c] {
        wait_for("all three members", || {
            members_of(&node.url()).filter(|n| *n == 3)
        });
    }
    let (code, out, err) = run_cli(&["cluster", "init", "--name", "etcd", "--url", &a.url()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("cluster etcd initialized"), "{out}");
    let mut endpoints = Vec::new();
    for node in [&a, &b, &c] {
        let info = wait_for("STARTED with an etcd address", || {
            node_json(&node.url(), "info")
                .filter(|v| v["state"] == "STARTED" && v["etcd_address"].is_string())
        });
        let address = info["etcd_address"].as_str().unwrap().to_owned();
        assert!(address.starts_with("127.0.0.1:"), "{address}");
        assert!(!address.ends_with(":0"), "the bound port: {address}");
        endpoints.push(address);
    }
    let (ea, eb, ec) = (&endpoints[0], &endpoints[1], &endpoints[2]);

    // put, get --prefix (written on one node, read on others), del
    assert_eq!(ok(ea, &["put", "/app/a", "1"]).trim(), "OK");
    assert_eq!(ok(eb, &["put", "/app/b", "2"]).trim(), "OK");
    assert_eq!(ok(eb, &["put", "/other", "x"]).trim(), "OK");
    assert_eq!(
        ok(ec, &["get", "--prefix", "/app/"]),
        "/app/a\n1\n/app/b\n2\n"
    );
    assert_eq!(ok(ea, &["get", "/app/b", "--print-value-only"]), "2\n");
    assert_eq!(ok(ec, &["del", "/app/a"]).trim(), "1", "one key deleted");
    assert_eq!(ok(ea, &["del", "/app/a"]).trim(), "0", "nothing left");
    assert_eq!(ok(eb, &["get", "--prefix", "/app/"]), "/app/b\n2\n");

    // txn from a script on stdin: compares, blank line, success ops, blank, failure ops
    let script =
        "value(\"/app/b\") = \"2\"\n\nput /app/b 3\nput /app/c ok\n\nput /app/failed yes\n\n";
    let (code, out, err) = etcdctl(eb, &["txn"], script);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "SUCCESS\n\nOK\n\nOK\n");
    let (code, out, err) = etcdctl(ec, &["txn"], script);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out, "FAILURE\n\nOK\n",
        "/app/b is 3 now: the failure branch ran"
    );
    assert_eq!(
        ok(ea, &["get", "--prefix", "/app/"]),
        "/app/b\n3\n/app/c\nok\n/app/failed\nyes\n"
    );

    // watch on a, from the next revision, sees a put made on c
    let header = json(&ok(ea, &["get", "/app/b", "-w", "json"]));
    let revision = header["header"]["revision"]
        .as_i64()
        .expect("header revision");
    assert!(revision > 0, "{header}");
    let mut watch = etcdctl_command(
        ea,
        &[
            "watch",
            "--prefix",
            "/app/w/",
            &format!("--rev={}", revision + 1),
        ],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .expect("spawn etcdctl watch");
    let (lines_tx, lines_rx) = mpsc::channel();
    let stdout = watch.stdout.take().expect("stdout is piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    assert_eq!(ok(ec, &["put", "/app/w/1", "hello"]).trim(), "OK");
    let mut seen = Vec::new();
    let begin = Instant::now();
    while seen.len() < 3 {
        let left = DEADLINE.saturating_sub(begin.elapsed());
        match lines_rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(seen, ["PUT", "/app/w/1", "hello"], "watch output");

    // endpoint status: every member answers, one leader, the same revision or later
    let all = endpoints.join(",");
    let status = json(&ok(&all, &["endpoint", "status", "-w", "json"]));
    let statuses = status.as_array().expect("a status per endpoint");
    assert_eq!(statuses.len(), 3, "{status}");
    let leaders: BTreeSet<u64> = statuses
        .iter()
        .map(|s| s["Status"]["leader"].as_u64().expect("leader id"))
        .collect();
    assert_eq!(leaders.len(), 1, "one leader: {status}");
    assert!(!leaders.contains(&0), "a leader is known: {status}");
    let ids: BTreeSet<u64> = statuses
        .iter()
        .map(|s| {
            s["Status"]["header"]["member_id"]
                .as_u64()
                .expect("member id")
        })
        .collect();
    assert_eq!(ids.len(), 3, "distinct member ids: {status}");
    assert!(
        ids.is_superset(&leaders),
        "the leader is a member: {status}"
    );
    for s in statuses {
        let rev = s["Status"]["header"]["revision"].as_i64().unwrap_or(0);
        assert!(
            rev > revision,
            "revision {rev} includes the watched put: {s}"
        );
    }
    let table = ok(ec, &["endpoint", "status"]);
    assert!(table.starts_with(ec.as_str()), "{table}");

    // member list: the three nodes by name, with ids matching the status headers
    let list = json(&ok(eb, &["member", "list", "-w", "json"]));
    let members = list["members"].as_array().expect("members");
    let names: BTreeSet<&str> = members.iter().filter_map(|m| m["name"].as_str()).collect();
    assert_eq!(names, BTreeSet::from(["a", "b", "c"]), "{list}");
    let member_ids: BTreeSet<u64> = members.iter().filter_map(|m| m["ID"].as_u64()).collect();
    assert_eq!(
        member_ids, ids,
        "member ids match the status headers: {list}"
    );
    let plain = ok(eb, &["member", "list"]);
    assert_eq!(plain.lines().count(), 3, "{plain}");
    assert!(plain.contains(", a, "), "{plain}");

    for node in [a, b, c] {
        assert_eq!(node.terminate().code(), Some(0));
    }
}
