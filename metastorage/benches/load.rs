//! MetaStorage load generator (`cargo xtask bench metastorage`, never a test): in-process
//! clusters of real nodes on 127.0.0.1 (vault, local configuration, network, raft and the
//! MetaStorage manager per node, sled storage in a temp dir, the product's default settings).
//!
//! Measures 1-node and 3-node puts/s and linearizable gets/s at 1 and 64 operations in flight
//! (16-byte keys, 100-byte values, a fixed duration per cell, clients spread over the nodes),
//! watch delivery latency (put issued on one node -> listener on another), leader failover
//! (the leader's network stopped without leaving -> next accepted write) and restart to
//! serving with 100,000 keys (one node: stop, start again, first linearizable get answers),
//! and a fourth node's catch-up from a snapshot of 100,000 keys with the latencies of the
//! puts made meanwhile. Prints one table with the goals and measured/goal ratios.
//!
//! Cells can be picked by name (`1n-put`, `1n-get`, `3n-put`, `3n-get`, `watch`, `failover`,
//! `restart`, `catch-up`): as arguments (`cargo bench -p metastorage --bench load -- 3n-put
//! watch`) or in `METASTORAGE_BENCH` (comma-separated). No name: every cell.
use std::{
    fmt::Write as _,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use configuration::{BootstrapConfig, ConfigurationManager, LocalConfigurationStorage, RootKey};
use lifecycle::{Component, FaultReporter, StartContext};
use metastorage::{InitRequest, KeyMatcher, MetaStorageConfiguration, MetaStorageManager};
use network::{NetworkConfiguration, NetworkManager};
use raft::{RaftConfiguration, RaftManager};
use serde_json::json;
use tokio::{sync::mpsc, task::JoinSet};
use vault::VaultManager;

/// The allocator the `ignite` binary runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long each throughput cell runs.
const CELL: Duration = Duration::from_secs(3);
/// Operations in flight of the concurrent cells.
const IN_FLIGHT: usize = 64;
const VALUE_BYTES: usize = 100;
/// Sequential puts whose watch delivery is timed.
const WATCH_SAMPLES: usize = 2_000;
/// Keys in the store before the timed restart.
const RESTART_KEYS: usize = 100_000;
/// Bound of anything the bench waits for.
const WAIT: Duration = Duration::from_secs(60);
/// Prefix the watch latency cell writes under (the other cells write `k...` keys).
const WATCH_PREFIX: &[u8] = b"watch/";

fn ctx() -> StartContext {
    StartContext {
        faults: FaultReporter::detached(),
    }
}

fn boxed(e: lifecycle::BoxError) -> anyhow::Error {
    anyhow!("{e}")
}

/// A 16-byte key: `k` and 15 digits.
fn key(i: usize) -> Vec<u8> {
    format!("k{i:015}").into_bytes()
}

fn value() -> Vec<u8> {
    vec![b'v'; VALUE_BYTES]
}

/// One node's components, started by hand in graph order.
struct BenchNode {
    name: String,
    vault: Arc<VaultManager>,
    config: Arc<ConfigurationManager>,
    network: Arc<NetworkManager>,
    raft: Arc<RaftManager>,
    ms: Arc<MetaStorageManager>,
}

impl BenchNode {
    /// Builds and starts vault, configuration, network and raft (the zombie level) on
    /// `data_dir`, with the product's defaults apart from the addresses.
    async fn start(name: &str, seeds: &[String], data_dir: &Path) -> Result<Self> {
        let vault = Arc::new(VaultManager::persistent(data_dir));
        let roots = vec![
            RootKey::of::<NetworkConfiguration>(),
            RootKey::of::<RaftConfiguration>(),
            RootKey::of::<MetaStorageConfiguration>(),
        ];
        let mut bootstrap = BootstrapConfig::new(&roots);
        bootstrap.set("network.listen", json!("127.0.0.1:0"))?;
        bootstrap.set("network.seeds", json!(seeds))?;
        let config = Arc::new(ConfigurationManager::new(
            roots,
            vec![Arc::new(LocalConfigurationStorage::new(Arc::clone(&vault)))],
            Some(bootstrap),
        ));
        let network = Arc::new(NetworkManager::new(
            name.to_owned(),
            Arc::clone(&vault),
            Arc::clone(&config),
            Default::default(),
        ));
        let raft = Arc::new(RaftManager::new(
            Arc::clone(&network),
            Arc::clone(&vault),
            Arc::clone(&config),
        ));
        let ms = Arc::new(MetaStorageManager::new(
            Arc::clone(&vault),
            Arc::clone(&network),
            Arc::clone(&raft),
            Arc::clone(&config),
        ));
        let ctx = ctx();
        vault.start(&ctx).await.map_err(boxed)?;
        config.start(&ctx).await.map_err(boxed)?;
        network.start(&ctx).await.map_err(boxed)?;
        raft.start(&ctx).await.map_err(boxed)?;
        Ok(Self {
            name: name.to_owned(),
            vault,
            config,
            network,
            raft,
            ms,
        })
    }

    fn address(&self) -> Result<String> {
        self.network
            .local_address()
            .map(|a| a.to_string())
            .with_context(|| format!("network address of {}", self.name))
    }

    async fn start_ms(&self) -> Result<()> {
        self.ms
            .start(&ctx())
            .await
            .map_err(|e| anyhow!("metastorage on {}: {e}", self.name))
    }

    /// Stops every component in reverse order (graceful: leaves the topology first).
    async fn stop(&self) -> Result<()> {
        self.ms.before_stop().await;
        self.raft.before_stop().await;
        self.network.before_stop().await;
        self.stop_components().await
    }

    async fn stop_components(&self) -> Result<()> {
        self.ms.stop().await.map_err(boxed)?;
        self.raft.stop().await.map_err(boxed)?;
        self.network.stop().await.map_err(boxed)?;
        self.config.stop().await.map_err(boxed)?;
        self.vault.stop().await.map_err(boxed)?;
        Ok(())
    }
}

/// Nodes `n1..=nN`, each in its own directory under one temp dir, initialized.
struct Cluster {
    nodes: Vec<BenchNode>,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` nodes, waits until each sees all, inits from `n1` with the default voters;
    /// `watch` registers a listener for [`WATCH_PREFIX`] on every node before the watches
    /// deploy and returns the receivers of (key, arrival time).
    async fn start(
        n: usize,
        watch: bool,
    ) -> Result<(Self, Vec<mpsc::UnboundedReceiver<(Vec<u8>, Instant)>>)> {
        let dir = tempfile::Builder::new()
            .prefix("metastorage-bench-")
            .tempdir()?;
        let mut nodes: Vec<BenchNode> = Vec::with_capacity(n);
        for i in 1..=n {
            let name = format!("n{i}");
            let seeds = nodes
                .iter()
                .map(BenchNode::address)
                .collect::<Result<Vec<_>>>()?;
            nodes.push(BenchNode::start(&name, &seeds, &dir.path().join(&name)).await?);
        }
        let cluster = Self { nodes, dir };
        cluster.wait_for_topology().await?;
        cluster.nodes[0]
            .ms
            .init_cluster(InitRequest {
                name: "bench".into(),
                metastorage: vec![],
            })
            .await?;
        let starts = cluster.nodes.iter().map(BenchNode::start_ms);
        for started in futures::future::join_all(starts).await {
            started?;
        }
        let mut receivers = Vec::new();
        for node in &cluster.nodes {
            if watch {
                let (tx, rx) = mpsc::unbounded_channel();
                node.ms.register_watch(
                    KeyMatcher::Prefix(WATCH_PREFIX.to_vec()),
                    move |event: metastorage::WatchEvent| {
                        let now = Instant::now();
                        for entry in event.entries {
                            let _ = tx.send((entry.new.key, now));
                        }
                        futures::future::ready(Ok(()))
                    },
                )?;
                receivers.push(rx);
            }
            node.ms.deploy_watches()?;
        }
        Ok((cluster, receivers))
    }

    async fn wait_for_topology(&self) -> Result<()> {
        let n = self.nodes.len();
        for node in &self.nodes {
            let topology = node.network.topology();
            let mut events = topology.subscribe();
            tokio::time::timeout(WAIT, async {
                while topology.members().len() < n {
                    let _ = events.recv().await;
                }
            })
            .await
            .with_context(|| format!("{} sees all {n} nodes", node.name))?;
        }
        Ok(())
    }

    fn managers(&self) -> Vec<Arc<MetaStorageManager>> {
        self.nodes.iter().map(|n| Arc::clone(&n.ms)).collect()
    }

    async fn stop(self) -> Result<()> {
        for node in self.nodes.iter().rev() {
            node.stop().await?;
        }
        drop(self.dir);
        Ok(())
    }
}

/// What one throughput cell measured.
struct Throughput {
    ops: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

/// Key indices each put cell has to itself.
const KEYS_PER_CELL: usize = 100_000_000;

/// Puts fresh keys (from `first` on, client `c` writing `first + c + i * in_flight`) for
/// [`CELL`] with `in_flight` clients, client `c` on node `c % nodes`.
async fn puts(
    managers: &[Arc<MetaStorageManager>],
    in_flight: usize,
    first: usize,
) -> Result<Throughput> {
    let started = Instant::now();
    let until = started + CELL;
    let mut clients = JoinSet::new();
    for c in 0..in_flight {
        let ms = Arc::clone(&managers[c % managers.len()]);
        clients.spawn(async move {
            let mut latencies = Vec::new();
            let mut n = first + c;
            while Instant::now() < until {
                let t0 = Instant::now();
                ms.put(key(n), value()).await?;
                latencies.push(t0.elapsed());
                n += in_flight;
            }
            Ok::<_, anyhow::Error>(latencies)
        });
    }
    collect(clients, started).await
}

/// Linearizable gets of the keys `first..first + keys` for [`CELL`] with `in_flight`
/// clients, client `c` on node `c % nodes`.
async fn gets(
    managers: &[Arc<MetaStorageManager>],
    in_flight: usize,
    first: usize,
    keys: usize,
) -> Result<Throughput> {
    if keys == 0 {
        bail!("no keys to read");
    }
    let started = Instant::now();
    let until = started + CELL;
    let mut clients = JoinSet::new();
    for c in 0..in_flight {
        let ms = Arc::clone(&managers[c % managers.len()]);
        clients.spawn(async move {
            let mut latencies = Vec::new();
            let mut i = c;
            while Instant::now() < until {
                let k = key(first + i % keys);
                let t0 = Instant::now();
                if ms.get(&k).await?.is_none() {
                    bail!(
                        "key {} was written but is missing",
                        String::from_utf8_lossy(&k)
                    );
                }
                latencies.push(t0.elapsed());
                i += in_flight;
            }
            Ok::<_, anyhow::Error>(latencies)
        });
    }
    collect(clients, started).await
}

async fn collect(
    mut clients: JoinSet<Result<Vec<Duration>>>,
    started: Instant,
) -> Result<Throughput> {
    let mut latencies = Vec::new();
    while let Some(joined) = clients.join_next().await {
        latencies.extend(joined??);
    }
    Ok(Throughput {
        ops: latencies.len(),
        elapsed: started.elapsed(),
        latencies,
    })
}

/// Sequential puts on `writer`, each timed until `rx` (a listener on another node) sees it.
async fn watch_latency(
    writer: &MetaStorageManager,
    rx: &mut mpsc::UnboundedReceiver<(Vec<u8>, Instant)>,
) -> Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(WATCH_SAMPLES);
    for i in 0..WATCH_SAMPLES {
        let mut k = WATCH_PREFIX.to_vec();
        k.extend_from_slice(format!("{i:010}").as_bytes());
        let t0 = Instant::now();
        writer.put(k.clone(), value()).await?;
        let arrived = tokio::time::timeout(WAIT, async {
            while let Some((seen, at)) = rx.recv().await {
                if seen == k {
                    return Some(at);
                }
            }
            None
        })
        .await
        .context("watch event within the deadline")?
        .context("watch channel closed")?;
        samples.push(arrived.saturating_duration_since(t0));
    }
    // where the slow ones fall tells what they share (they clustered at write-outs)
    let slow: Vec<String> = samples
        .iter()
        .enumerate()
        .filter(|(_, d)| **d > Duration::from_millis(1))
        .map(|(i, d)| format!("#{i} {:.2}", d.as_secs_f64() * 1000.0))
        .collect();
    println!("  over 1 ms: {} ({})", slow.len(), slow.join(", "));
    Ok(samples)
}

/// Stops the leader's network without leaving the topology (its peers see the connections
/// drop, nothing else), then fires a put on a survivor every 10 ms until one is accepted.
/// Returns the time from the stop to that acceptance, and the leader's name.
async fn failover(cluster: &mut Cluster) -> Result<(Duration, String)> {
    let group = cluster.nodes[0].ms.group().context("metastorage group")?;
    let leader = group.wait_for_leader(WAIT).await?;
    let index = cluster
        .nodes
        .iter()
        .position(|n| n.name == leader)
        .with_context(|| format!("leader {leader} is a bench node"))?;
    let dead = cluster.nodes.remove(index);
    let survivor = Arc::clone(&cluster.nodes[0].ms);
    let killed = Instant::now();
    dead.network.stop().await.map_err(boxed)?;
    let mut attempts = JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let accepted = tokio::time::timeout(WAIT, async {
        let mut n = 0usize;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let ms = Arc::clone(&survivor);
                    n += 1;
                    let k = format!("failover/{n}");
                    attempts.spawn(async move { ms.put(k, value()).await.map(|_| Instant::now()) });
                }
                Some(done) = attempts.join_next() => {
                    if let Ok(Ok(at)) = done {
                        return at;
                    }
                }
            }
        }
    })
    .await
    .context("a write accepted after the leader stopped")?;
    attempts.abort_all();
    // the rest of the dead node goes down after the measurement
    dead.stop_components().await?;
    Ok((accepted.saturating_duration_since(killed), leader))
}

/// One node: writes [`RESTART_KEYS`] keys, stops, starts again on the same directory and
/// times until a linearizable get answers.
async fn restart_with_keys() -> Result<Duration> {
    let (cluster, _) = Cluster::start(1, false).await?;
    load_keys(&cluster.managers(), 0, RESTART_KEYS).await?;
    let Cluster { nodes, dir } = cluster;
    let node = nodes.into_iter().next().context("one node")?;
    node.stop().await?;
    let data_dir = dir.path().join(&node.name);
    drop(node);

    let started = Instant::now();
    let node = BenchNode::start("n1", &[], &data_dir).await?;
    let below = started.elapsed();
    node.start_ms().await?;
    let ms_started = started.elapsed();
    let last = key(RESTART_KEYS - 1);
    let found = node.ms.get(&last).await?;
    let serving = started.elapsed();
    println!(
        "  restart phases: vault+configuration+network+raft {}, metastorage start {}, \
         first linearizable get {}",
        crate::ms(below),
        crate::ms(ms_started - below),
        crate::ms(serving - ms_started)
    );
    if found.is_none() {
        bail!("the last of {RESTART_KEYS} keys is missing after the restart");
    }
    node.stop().await?;
    drop(dir);
    Ok(serving)
}

/// Puts `count` fresh keys from `first` on, 256 in flight spread over `managers`.
async fn load_keys(managers: &[Arc<MetaStorageManager>], first: usize, count: usize) -> Result<()> {
    let mut writers = JoinSet::new();
    for c in 0..256 {
        let ms = Arc::clone(&managers[c % managers.len()]);
        writers.spawn(async move {
            let mut i = c;
            while i < count {
                ms.put(key(first + i), value()).await?;
                i += 256;
            }
            Ok::<_, metastorage::Error>(())
        });
    }
    while let Some(joined) = writers.join_next().await {
        joined??;
    }
    Ok(())
}

/// What the catch-up cell measured.
struct CatchUp {
    /// From the fourth node's MetaStorage start to its return (caught up).
    took: Duration,
    /// Puts on n1, one at a time, while it caught up.
    latencies: Vec<Duration>,
}

/// Three nodes get [`RESTART_KEYS`] keys, then single puts until every node's Raft log
/// was cut and purged (concurrent puts share log entries); then a fourth node joins and
/// catches up from a snapshot while a client on n1 puts one key at a time. Returns how
/// long the catch-up took and the puts' latencies meanwhile: what a snapshot costs the
/// writes of the cluster that sends it.
async fn catch_up() -> Result<CatchUp> {
    let (mut cluster, _) = Cluster::start(3, false).await?;
    load_keys(&cluster.managers(), 0, RESTART_KEYS).await?;
    let groups = cluster
        .nodes
        .iter()
        .map(|n| {
            n.ms.group()
                .with_context(|| format!("{}'s metastorage group", n.name))
        })
        .collect::<Result<Vec<_>>>()?;
    let purged = Instant::now() + WAIT;
    let mut i = RESTART_KEYS;
    while groups.iter().any(|g| g.metrics().purged.is_none()) {
        if Instant::now() > purged {
            bail!("the raft logs were not purged within {WAIT:?}");
        }
        cluster.nodes[0].ms.put(key(i), value()).await?;
        i += 1;
    }
    let seeds = cluster
        .nodes
        .iter()
        .map(BenchNode::address)
        .collect::<Result<Vec<_>>>()?;
    let n4 = BenchNode::start("n4", &seeds, &cluster.dir.path().join("n4")).await?;
    let mut state = n4.ms.subscribe_cluster_state();
    tokio::time::timeout(WAIT, state.wait_for(Option::is_some))
        .await
        .context("n4 receives the cluster state")?
        .context("n4's cluster state")?;
    let writer = Arc::clone(&cluster.nodes[0].ms);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writing = {
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let t0 = Instant::now();
                writer.put(key(i), value()).await?;
                latencies.push(t0.elapsed());
                i += 1;
            }
            Ok::<_, metastorage::Error>(latencies)
        })
    };
    let started = Instant::now();
    let joined = n4.start_ms().await;
    let took = started.elapsed();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let latencies = writing.await??;
    cluster.nodes.push(n4);
    joined?;
    let n4 = &cluster.nodes[3].ms;
    let last = key(RESTART_KEYS - 1);
    if n4.get_at(&last, n4.revision())?.is_none() {
        bail!("n4 caught up without the last of the first {RESTART_KEYS} keys");
    }
    cluster.stop().await?;
    Ok(CatchUp { took, latencies })
}

/// Nearest-rank percentile (`q` in 0..=1) of sorted samples.
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

/// A goal: at least `n` per second, or below a duration.
#[derive(Clone, Copy)]
enum Goal {
    AtLeastPerSec(f64),
    Below(Duration),
}

struct Row {
    name: String,
    value: String,
    p50: String,
    p99: String,
    goal: Option<(Goal, f64)>,
}

impl Row {
    fn throughput(name: String, t: &mut Throughput, goal: Option<Goal>) -> Self {
        t.latencies.sort_unstable();
        let rate = t.ops as f64 / t.elapsed.as_secs_f64();
        Self {
            name,
            value: format!("{rate:.0}/s"),
            p50: ms(percentile(&t.latencies, 0.5)),
            p99: ms(percentile(&t.latencies, 0.99)),
            goal: goal.map(|g| (g, rate)),
        }
    }

    fn latency(name: &str, mut samples: Vec<Duration>, goal: Duration) -> Self {
        samples.sort_unstable();
        let p99 = percentile(&samples, 0.99);
        Self {
            name: format!("{name} ({} samples)", samples.len()),
            value: String::new(),
            p50: ms(percentile(&samples, 0.5)),
            p99: ms(p99),
            goal: Some((Goal::Below(goal), p99.as_secs_f64())),
        }
    }

    fn once(name: &str, took: Duration, goal: Duration) -> Self {
        Self {
            name: name.to_owned(),
            value: ms(took),
            p50: String::new(),
            p99: String::new(),
            goal: Some((Goal::Below(goal), took.as_secs_f64())),
        }
    }
}

fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{:<52} {:>12} {:>11} {:>11} {:>14} {:>14}",
        "metastorage", "result", "p50", "p99", "goal", "measured/goal"
    );
    for row in rows {
        let (goal, ratio) = match row.goal {
            Some((Goal::AtLeastPerSec(goal), measured)) => (
                format!(">= {goal:.0}/s"),
                format!(
                    "{:.2}x {}",
                    measured / goal,
                    if measured >= goal { "ok" } else { "MISS" }
                ),
            ),
            Some((Goal::Below(goal), measured)) => (
                format!("< {}", ms(goal)),
                format!(
                    "{:.2}x {}",
                    measured / goal.as_secs_f64(),
                    if measured < goal.as_secs_f64() {
                        "ok"
                    } else {
                        "MISS"
                    }
                ),
            ),
            None => (String::new(), String::new()),
        };
        let _ = writeln!(
            out,
            "{:<52} {:>12} {:>11} {:>11} {:>14} {:>14}",
            row.name, row.value, row.p50, row.p99, goal, ratio
        );
    }
    out
}

/// The cells to run: none named means all.
struct Filter(Vec<String>);

impl Filter {
    const CELLS: [&'static str; 8] = [
        "1n-put", "1n-get", "3n-put", "3n-get", "watch", "failover", "restart", "catch-up",
    ];

    fn from_env() -> Result<Self> {
        let mut names: Vec<String> = std::env::args()
            .skip(1)
            .filter(|a| !a.starts_with("--"))
            .collect();
        if let Ok(list) = std::env::var("METASTORAGE_BENCH") {
            names.extend(
                list.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            );
        }
        if let Some(unknown) = names.iter().find(|n| !Self::CELLS.contains(&n.as_str())) {
            bail!(
                "unknown bench cell {unknown}: one of {}",
                Self::CELLS.join(", ")
            );
        }
        Ok(Self(names))
    }

    fn wants(&self, cell: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|n| n == cell)
    }
}

async fn run() -> Result<()> {
    let filter = Filter::from_env()?;
    let total = Instant::now();
    let mut rows = Vec::new();
    let mut next_key = 0usize;
    let mut failover_row = None;
    let mut watch_row = None;
    for n in [1usize, 3] {
        let (put, get) = (
            filter.wants(&format!("{n}n-put")),
            filter.wants(&format!("{n}n-get")),
        );
        let (watch, fail) = (
            n > 1 && filter.wants("watch"),
            n > 1 && filter.wants("failover"),
        );
        if !(put || get || watch || fail) {
            continue;
        }
        println!("{n}-node cluster: starting");
        let (mut cluster, mut receivers) = Cluster::start(n, watch).await?;
        let managers = cluster.managers();
        // the 1-in-flight put cell writes a dense run of keys: the gets read those
        let mut dense = (0, 0);
        for in_flight in [1, IN_FLIGHT] {
            if !(put || (get && in_flight == 1)) {
                continue;
            }
            let first = next_key;
            next_key += KEYS_PER_CELL;
            let mut t = puts(&managers, in_flight, first).await?;
            if in_flight == 1 {
                dense = (first, t.ops);
            }
            let goal = (n == 3 && in_flight == IN_FLIGHT).then_some(Goal::AtLeastPerSec(12_000.0));
            let row = Row::throughput(format!("{n}-node put, {in_flight} in flight"), &mut t, goal);
            println!(
                "  {} {} p50 {} p99 {}",
                row.name, row.value, row.p50, row.p99
            );
            if put {
                rows.push(row);
            }
        }
        for in_flight in [1, IN_FLIGHT] {
            if !get {
                break;
            }
            let mut t = gets(&managers, in_flight, dense.0, dense.1).await?;
            let row = Row::throughput(
                format!("{n}-node linearizable get, {in_flight} in flight"),
                &mut t,
                None,
            );
            println!(
                "  {} {} p50 {} p99 {}",
                row.name, row.value, row.p50, row.p99
            );
            rows.push(row);
        }
        if watch {
            // put on n1, listener on the last node
            let writer = Arc::clone(&cluster.nodes[0].ms);
            let rx = receivers.last_mut().context("a watch receiver")?;
            let samples = watch_latency(&writer, rx).await?;
            let row = Row::latency(
                "watch delivery, put n1 -> listener n3",
                samples,
                Duration::from_millis(1),
            );
            println!("  {} p50 {} p99 {}", row.name, row.p50, row.p99);
            watch_row = Some(row);
        }
        drop(receivers);
        if fail {
            let (took, leader) = failover(&mut cluster).await?;
            println!("  leader failover ({leader} stopped): {}", ms(took));
            failover_row = Some(Row::once(
                &format!("leader failover ({leader}'s network stopped)"),
                took,
                Duration::from_secs(1),
            ));
        }
        cluster.stop().await?;
    }
    rows.extend(watch_row);
    rows.extend(failover_row);
    if filter.wants("restart") {
        println!("restart: writing {RESTART_KEYS} keys to one node");
        let restart = restart_with_keys().await?;
        println!("  restart to serving: {}", ms(restart));
        rows.push(Row::once(
            &format!("1-node restart to serving, {}k keys", RESTART_KEYS / 1000),
            restart,
            Duration::from_millis(300),
        ));
    }
    if filter.wants("catch-up") {
        println!("catch-up: writing {RESTART_KEYS} keys to three nodes, then a fourth joins");
        let mut c = catch_up().await?;
        c.latencies.sort_unstable();
        let max = c.latencies.last().copied().unwrap_or_default();
        println!(
            "  caught up in {}; puts meanwhile p50 {} p99 {} max {}",
            ms(c.took),
            ms(percentile(&c.latencies, 0.5)),
            ms(percentile(&c.latencies, 0.99)),
            ms(max)
        );
        rows.push(Row {
            name: format!(
                "4th node catch-up from a snapshot, {}k keys",
                RESTART_KEYS / 1000
            ),
            value: ms(c.took),
            p50: String::new(),
            p99: String::new(),
            goal: None,
        });
        rows.push(Row {
            name: format!("  puts on n1 meanwhile, max {}", ms(max)),
            value: format!("{}", c.latencies.len()),
            p50: ms(percentile(&c.latencies, 0.5)),
            p99: ms(percentile(&c.latencies, 0.99)),
            goal: None,
        });
    }
    print!("{}", table(&rows));
    println!(
        "({}-byte keys, {VALUE_BYTES}-byte values, sled, {}s per throughput cell, raft and \
         network at their defaults; bench took {:.0}s)",
        key(0).len(),
        CELL.as_secs(),
        total.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    runtime.block_on(run())
}
