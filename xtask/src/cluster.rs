//! `cargo xtask cluster --nodes N`: N release `ignite` processes on loopback that seed each
//! other, until Ctrl-C (or SIGTERM); then every node gets SIGTERM and xtask waits for all.
use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::{bail, Context};
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::process::{self, Node, PROCESS_DEADLINE};

/// What one node of the local cluster is started with.
#[derive(Debug, PartialEq, Eq)]
struct NodePlan {
    name: String,
    listen: SocketAddr,
    rest: SocketAddr,
    seeds: Vec<SocketAddr>,
}

/// Names, addresses and seeds for `ports.len() / 2` nodes: node `i` listens on `ports[2i]`,
/// serves REST on `ports[2i + 1]`, and seeds every other node.
fn plan(ports: &[u16]) -> Vec<NodePlan> {
    let loopback = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let listens: Vec<SocketAddr> = ports.chunks_exact(2).map(|p| loopback(p[0])).collect();
    ports
        .chunks_exact(2)
        .enumerate()
        .map(|(i, pair)| NodePlan {
            name: format!("node-{}", i + 1),
            listen: listens[i],
            rest: loopback(pair[1]),
            seeds: listens
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(_, addr)| *addr)
                .collect(),
        })
        .collect()
}

impl NodePlan {
    fn args(&self, data_dir: &Path) -> Vec<String> {
        let mut args = vec![
            "start".to_owned(),
            "--name".to_owned(),
            self.name.clone(),
            "--data-dir".to_owned(),
            data_dir.display().to_string(),
            "--listen".to_owned(),
            self.listen.to_string(),
            "--rest".to_owned(),
            self.rest.to_string(),
        ];
        if !self.seeds.is_empty() {
            let seeds: Vec<String> = self.seeds.iter().map(ToString::to_string).collect();
            args.push("--seeds".to_owned());
            args.push(seeds.join(","));
        }
        args
    }
}

/// Runs the cluster until Ctrl-C; `keep` leaves the data directories in place afterwards.
pub(crate) fn run(binary: &Path, nodes: u32, keep: bool) -> anyhow::Result<()> {
    for flag in ["--listen", "--seeds"] {
        if !process::start_accepts(binary, flag)? {
            bail!(
                "{} start has no {flag} flag yet: nodes could not find each other",
                binary.display()
            );
        }
    }
    // listen for Ctrl-C and SIGTERM before any node exists, so none is ever orphaned
    let mut signals = Signals::listen()?;
    let count = usize::try_from(nodes).context("node count out of range")?;
    let dir = tempfile::Builder::new()
        .prefix("ignite-cluster-")
        .tempdir()
        .context("failed to create a temp dir")?;
    println!(
        "cluster: {count} nodes, data and logs in {}",
        dir.path().display()
    );

    let plans = plan(&process::free_ports(2 * count)?);
    let mut running = Vec::with_capacity(count);
    for plan in &plans {
        let data_dir = dir.path().join(&plan.name);
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("failed to create {}", data_dir.display()))?;
        let log = dir.path().join(format!("{}.log", plan.name));
        running.push(Node::spawn(
            binary,
            &plan.name,
            plan.rest,
            &plan.args(&data_dir),
            &log,
        )?);
    }
    for (node, plan) in running.iter_mut().zip(&plans) {
        node.wait_ready(false, PROCESS_DEADLINE)?;
        println!(
            "  {:<8} rest http://{}  listen {}  log {}",
            node.name,
            node.rest,
            plan.listen,
            node.log.display()
        );
    }
    if let Some(first) = running.first() {
        println!(
            "all nodes answer /health; initialize with:\n  {} cluster init --name local --url http://{}",
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
    if keep {
        let kept = dir.keep();
        println!("kept data and logs in {}", kept.display());
    }
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

    #[test]
    fn every_node_seeds_all_the_others() {
        let plans = plan(&[1001, 2001, 1002, 2002, 1003, 2003]);
        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        assert_eq!(plans.len(), 3);
        assert_eq!(
            plans[1],
            NodePlan {
                name: "node-2".into(),
                listen: addr(1002),
                rest: addr(2002),
                seeds: vec![addr(1001), addr(1003)],
            }
        );
        let args = plans[0].args(Path::new("/tmp/c/node-1"));
        assert_eq!(
            args,
            [
                "start",
                "--name",
                "node-1",
                "--data-dir",
                "/tmp/c/node-1",
                "--listen",
                "127.0.0.1:1001",
                "--rest",
                "127.0.0.1:2001",
                "--seeds",
                "127.0.0.1:1002,127.0.0.1:1003"
            ]
        );
    }

    #[test]
    fn a_single_node_has_no_seeds() {
        let plans = plan(&[1001, 2001]);
        assert_eq!(plans.len(), 1);
        assert!(!plans[0]
            .args(Path::new("/d"))
            .contains(&"--seeds".to_owned()));
    }
}
