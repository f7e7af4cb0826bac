//! `cargo xtask cluster --nodes N`: an initialized local cluster of N release `ignite`
//! processes on loopback.
//!
//! Each node gets `target/cluster/<node>/` with its `ignite.toml`, its data directory and its
//! log (wiped at start unless `--keep`, which restarts the kept nodes with their own configs).
//! xtask waits until every node sees all N in the physical topology, runs `cluster init`
//! (name `local`, default MetaStorage voters) on the first node, waits until every node is
//! `STARTED`, prints the URLs, and on Ctrl-C (or SIGTERM) stops every node and waits for all.
use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::{
    http,
    metadata::Workspace,
    process::{self, Node, PROCESS_DEADLINE},
};

/// The cluster name `cargo xtask cluster` initializes.
const CLUSTER_NAME: &str = "local";

/// Bound of one REST call; init delivers the cluster state to every node, so it gets longer.
const REST_TIMEOUT: Duration = Duration::from_secs(5);
const INIT_TIMEOUT: Duration = Duration::from_secs(60);

/// A node's `ignite.toml`: the sections of the node's configuration xtask sets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ConfigFile {
    node: NodeSection,
    network: NetworkSection,
    rest: RestSection,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct NodeSection {
    name: String,
    data_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct NetworkSection {
    listen: SocketAddr,
    seeds: Vec<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RestSection {
    listen: SocketAddr,
}

impl ConfigFile {
    fn to_toml(&self) -> anyhow::Result<String> {
        let body = toml::to_string(self).context("failed to write a node config as toml")?;
        Ok(format!(
            "# written by `cargo xtask cluster`; after the first start the node's vault, not this\n\
             # file, holds its configuration (`ignite node config show|update`)\n{body}"
        ))
    }

    fn read(path: &Path) -> anyhow::Result<Self> {
        let text = fs::read_to_string(path)
            .with_context(|| format!("failed to read {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("failed to parse {}", path.display()))
    }
}

/// Where a node's files live under `target/cluster/`.
struct Layout {
    root: PathBuf,
}

impl Layout {
    fn node_dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
    fn config(&self, name: &str) -> PathBuf {
        self.node_dir(name).join("ignite.toml")
    }
    fn data_dir(&self, name: &str) -> PathBuf {
        self.node_dir(name).join("data")
    }
    fn log(&self, name: &str) -> PathBuf {
        self.node_dir(name).join("ignite.log")
    }
}

fn node_names(count: usize) -> Vec<String> {
    (1..=count).map(|i| format!("node-{i}")).collect()
}

/// The configs of `names`: a kept config (`kept[i]`) is used as it is; a new node takes the
/// next two of `ports` (listen, then REST) and seeds every other node of the cluster.
fn plan(
    layout: &Layout,
    names: &[String],
    kept: Vec<Option<ConfigFile>>,
    ports: &[u16],
) -> anyhow::Result<Vec<ConfigFile>> {
    let loopback = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let mut ports = ports.iter().copied();
    let mut next = || ports.next().context("too few free ports for the new nodes");
    let mut addresses = Vec::with_capacity(names.len());
    for slot in &kept {
        addresses.push(match slot {
            Some(config) => (config.network.listen, config.rest.listen),
            None => (loopback(next()?), loopback(next()?)),
        });
    }
    let listens: Vec<SocketAddr> = addresses.iter().map(|&(listen, _)| listen).collect();
    Ok(names
        .iter()
        .zip(kept)
        .zip(addresses)
        .enumerate()
        .map(|(i, ((name, kept), (listen, rest)))| {
            kept.unwrap_or_else(|| ConfigFile {
                node: NodeSection {
                    name: name.clone(),
                    data_dir: layout.data_dir(name),
                },
                network: NetworkSection {
                    listen,
                    seeds: listens
                        .iter()
                        .enumerate()
                        .filter(|&(j, _)| j != i)
                        .map(|(_, addr)| *addr)
                        .collect(),
                },
                rest: RestSection { listen: rest },
            })
        })
        .collect())
}

/// Runs the cluster until Ctrl-C. `keep` restarts the nodes kept in `target/cluster/` instead
/// of wiping it first.
pub(crate) fn run(root: &Path, binary: &Path, nodes: u32, keep: bool) -> anyhow::Result<()> {
    if !process::start_accepts(binary, "--config")? {
        bail!("{} start has no --config flag", binary.display());
    }
    // listen for Ctrl-C and SIGTERM before any node exists, so none is ever orphaned
    let mut signals = Signals::listen()?;
    let count = usize::try_from(nodes).context("node count out of range")?;
    let layout = Layout {
        root: Workspace::load(root)?.target_dir.join("cluster"),
    };
    if !keep && layout.root.exists() {
        fs::remove_dir_all(&layout.root)
            .with_context(|| format!("failed to wipe {}", layout.root.display()))?;
    }
    let names = node_names(count);
    let mut kept = Vec::with_capacity(count);
    for name in &names {
        let path = layout.config(name);
        kept.push(if keep && path.is_file() {
            Some(ConfigFile::read(&path)?)
        } else {
            None
        });
    }
    let fresh = kept.iter().filter(|slot| slot.is_none()).count();
    let reused = count - fresh;
    let configs = plan(&layout, &names, kept, &process::free_ports(2 * fresh)?)?;
    println!(
        "cluster: {count} nodes in {} ({reused} kept, {fresh} new)",
        layout.root.display()
    );

    let mut running = Vec::with_capacity(count);
    for config in &configs {
        let name = &config.node.name;
        fs::create_dir_all(layout.data_dir(name))
            .with_context(|| format!("failed to create {}", layout.data_dir(name).display()))?;
        let path = layout.config(name);
        if !path.is_file() {
            fs::write(&path, config.to_toml()?)
                .with_context(|| format!("failed to write {}", path.display()))?;
        }
        let args = vec![
            "start".to_owned(),
            "--config".to_owned(),
            path.display().to_string(),
        ];
        running.push(Node::spawn(
            binary,
            name,
            config.rest.listen,
            &args,
            &layout.log(name),
        )?);
    }

    for node in &mut running {
        node.wait_ready(false, PROCESS_DEADLINE)?;
    }
    println!("all nodes answer /health; waiting until each sees {count} members...");
    for node in &mut running {
        wait_for_members(node, count, PROCESS_DEADLINE)?;
    }
    let first = running
        .first_mut()
        .context("a cluster has at least one node")?;
    let state = init(first)?;
    println!("cluster init: {state}");
    for node in &mut running {
        node.wait_ready(true, PROCESS_DEADLINE)?;
    }
    for (node, config) in running.iter().zip(&configs) {
        println!(
            "  {:<8} http://{}  listen {}  log {}",
            node.name,
            node.rest,
            config.network.listen,
            node.log.display()
        );
    }
    if let Some(first) = running.first() {
        println!(
            "all {count} nodes are STARTED; try:\n  {} cluster status --url http://{}",
            binary.display(),
            first.rest
        );
    }
    println!("press Ctrl-C to stop the cluster");

    let died = signals.wait(&mut running)?;

    println!("stopping {count} nodes (SIGTERM)...");
    for node in &mut running {
        node.send_term()?;
    }
    let mut failures = Vec::new();
    for node in &mut running {
        match node.wait_exit(PROCESS_DEADLINE) {
            Ok(status) if status.success() => println!("  {} stopped", node.name),
            Ok(status) => failures.push(format!("{} exited with {status}", node.name)),
            Err(err) => failures.push(format!("{err:#}")),
        }
    }
    println!(
        "data, configs and logs stay in {} (restart them with --keep)",
        layout.root.display()
    );
    if let Some(message) = died {
        bail!("{message}");
    }
    if !failures.is_empty() {
        bail!(
            "some nodes did not stop cleanly:\n  {}",
            failures.join("\n  ")
        );
    }
    Ok(())
}

/// The number of members in a `cluster/topology/physical` body (a JSON array).
fn member_count(body: &[u8]) -> Option<usize> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()?
        .as_array()
        .map(Vec::len)
}

/// Polls `GET cluster/topology/physical` until it lists at least `count` members.
fn wait_for_members(node: &mut Node, count: usize, deadline: Duration) -> anyhow::Result<()> {
    let until = Instant::now() + deadline;
    let mut seen = None;
    loop {
        if let Some(status) = node.try_exit()? {
            bail!(
                "node {} exited with {status} while joining\n{}",
                node.name,
                node.log_tail()
            );
        }
        if let Ok(response) = http::get(
            node.rest,
            "/management/v1/cluster/topology/physical",
            REST_TIMEOUT,
        ) {
            if response.status == 200 {
                seen = member_count(&response.body);
                if seen.is_some_and(|n| n >= count) {
                    return Ok(());
                }
            }
        }
        if Instant::now() >= until {
            bail!(
                "node {} saw {} of {count} members after {deadline:?}\n{}",
                node.name,
                seen.map_or_else(|| "no".to_owned(), |n| n.to_string()),
                node.log_tail()
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// `POST cluster/init` on `node` with the default voters; returns a one-line summary of the
/// cluster state it answered.
fn init(node: &mut Node) -> anyhow::Result<String> {
    let body = serde_json::json!({ "name": CLUSTER_NAME });
    let response = http::post_json(
        node.rest,
        "/management/v1/cluster/init",
        &body,
        INIT_TIMEOUT,
    )
    .with_context(|| format!("cluster init on node {}", node.name))?;
    let text = String::from_utf8_lossy(&response.body);
    if response.status != 200 {
        bail!(
            "cluster init on node {} answered {}: {text}",
            node.name,
            response.status
        );
    }
    Ok(summarize_state(&response.body).unwrap_or_else(|| text.into_owned()))
}

/// `local (id …), metastorage voters node-1, node-2, node-3` from a cluster state body.
fn summarize_state(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let name = value.get("name")?.as_str()?;
    let id = value.get("id").map(ToString::to_string).unwrap_or_default();
    let voters: Vec<&str> = value
        .get("metastorage_voters")?
        .as_array()?
        .iter()
        .filter_map(serde_json::Value::as_str)
        .collect();
    Some(format!(
        "{name} (id {}), metastorage voters {}",
        id.trim_matches('"'),
        voters.join(", ")
    ))
}

/// Ctrl-C and SIGTERM, caught from the moment they are created.
struct Signals {
    runtime: tokio::runtime::Runtime,
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn listen() -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("failed to build a tokio runtime")?;
        let (interrupt, terminate) = {
            let _entered = runtime.enter();
            (
                signal(SignalKind::interrupt()).context("failed to listen for Ctrl-C")?,
                signal(SignalKind::terminate()).context("failed to listen for SIGTERM")?,
            )
        };
        Ok(Self {
            runtime,
            interrupt,
            terminate,
        })
    }

    /// Blocks until Ctrl-C or SIGTERM reaches xtask (returns `None`) or a node exits on its
    /// own (returns what happened, with the end of its log).
    fn wait(&mut self, nodes: &mut [Node]) -> anyhow::Result<Option<String>> {
        let Self {
            runtime,
            interrupt,
            terminate,
        } = self;
        runtime.block_on(async {
            let mut check = tokio::time::interval(Duration::from_millis(200));
            loop {
                tokio::select! {
                    _ = interrupt.recv() => return Ok(None),
                    _ = terminate.recv() => return Ok(None),
                    _ = check.tick() => {
                        for node in nodes.iter_mut() {
                            if let Some(status) = node.try_exit()? {
                                return Ok(Some(format!(
                                    "node {} exited on its own with {status}\n{}",
                                    node.name,
                                    node.log_tail()
                                )));
                            }
                        }
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn layout() -> Layout {
        Layout {
            root: PathBuf::from("/w/target/cluster"),
        }
    }

    #[test]
    fn every_new_node_seeds_all_the_others() {
        let names = node_names(3);
        let configs = plan(
            &layout(),
            &names,
            vec![None, None, None],
            &[1001, 2001, 1002, 2002, 1003, 2003],
        )
        .expect("plan");
        assert_eq!(configs.len(), 3);
        assert_eq!(
            configs[1],
            ConfigFile {
                node: NodeSection {
                    name: "node-2".into(),
                    data_dir: "/w/target/cluster/node-2/data".into(),
                },
                network: NetworkSection {
                    listen: addr(1002),
                    seeds: vec![addr(1001), addr(1003)],
                },
                rest: RestSection { listen: addr(2002) },
            }
        );
        assert!(configs[0].network.seeds == vec![addr(1002), addr(1003)]);
    }

    #[test]
    fn kept_nodes_keep_their_config_and_new_ones_seed_them() {
        let names = node_names(2);
        let old = plan(&layout(), &node_names(1), vec![None], &[1001, 2001]).expect("plan");
        assert!(
            old[0].network.seeds.is_empty(),
            "a single node has no seeds"
        );
        let configs = plan(
            &layout(),
            &names,
            vec![Some(old[0].clone()), None],
            &[1002, 2002],
        )
        .expect("plan");
        assert_eq!(configs[0], old[0]);
        assert_eq!(configs[1].network.listen, addr(1002));
        assert_eq!(configs[1].network.seeds, vec![addr(1001)]);
        assert_eq!(configs[1].rest.listen, addr(2002));
        assert!(plan(&layout(), &names, vec![None, None], &[1, 2, 3]).is_err());
    }

    #[test]
    fn config_file_round_trips_through_toml_with_the_node_sections() {
        let configs = plan(
            &layout(),
            &node_names(2),
            vec![None, None],
            &[1001, 2001, 1002, 2002],
        )
        .expect("plan");
        let text = configs[0].to_toml().expect("toml");
        for section in ["[node]", "[network]", "[rest]"] {
            assert!(text.contains(section), "{section} in\n{text}");
        }
        assert!(text.contains("seeds = [\"127.0.0.1:1002\"]"), "{text}");
        assert!(text.contains("listen = \"127.0.0.1:2001\""), "{text}");
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("ignite.toml");
        fs::write(&path, &text).expect("write config");
        assert_eq!(ConfigFile::read(&path).expect("read back"), configs[0]);
        fs::write(&path, "[node]\nname = 1\n").expect("write bad config");
        let err = ConfigFile::read(&path).expect_err("bad config");
        assert!(format!("{err:#}").contains("ignite.toml"), "{err:#}");
    }

    #[test]
    fn topology_and_state_bodies_are_read() {
        assert_eq!(
            member_count(br#"[{"name":"node-1"},{"name":"node-2"}]"#),
            Some(2)
        );
        assert_eq!(member_count(b"[]"), Some(0));
        assert_eq!(member_count(br#"{"title":"conflict"}"#), None);
        let state = br#"{"id":"5f0c","name":"local","metastorage_voters":["node-1","node-2"]}"#;
        assert_eq!(
            summarize_state(state).as_deref(),
            Some("local (id 5f0c), metastorage voters node-1, node-2")
        );
        assert_eq!(summarize_state(b"nope"), None);
    }
}
