//! Network benchmark (`cargo xtask bench network`): two nodes on loopback, one-way message
//! throughput with 1 and 64 senders, invoke round-trip p50/p99, and the time for a third node
//! to be seen by all. Prints a table; not a test.
use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use lifecycle::{LifecycleConfig, LifecycleManager, RunLevel};
use network::{ClusterNode, Message, NetworkConfiguration, NetworkManager};
use serde::{Deserialize, Serialize};
use vault::VaultManager;

#[derive(Serialize, Deserialize)]
struct Small(u64);
impl Message for Small {
    const GROUP: u16 = 100;
}

struct Node {
    net: Arc<NetworkManager>,
    lifecycle: LifecycleManager,
}

async fn node(name: &str, seeds: Vec<String>, counter: Arc<AtomicU64>) -> anyhow::Result<Node> {
    let config = NetworkConfiguration {
        listen: "127.0.0.1:0".into(),
        seeds,
        gossip_interval_ms: 100,
        announce_interval_ms: 100,
        ..NetworkConfiguration::default()
    };
    let vault = Arc::new(VaultManager::in_memory());
    let net = Arc::new(NetworkManager::with_config(
        name.into(),
        Arc::clone(&vault),
        config,
        BTreeMap::new(),
    ));
    net.messaging().register_handler(move |_, Small(n)| {
        counter.fetch_add(1, Ordering::Relaxed);
        async move { Ok(Small(n)) }
    })?;
    let lifecycle = LifecycleManager::new(LifecycleConfig::default());
    lifecycle.register(RunLevel::Zombie, vault)?;
    lifecycle.register(RunLevel::Zombie, net.clone())?;
    lifecycle.start().await?;
    Ok(Node { net, lifecycle })
}

async fn wait_members(nodes: &[&Node], n: usize) -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(30), async {
        while nodes.iter().any(|x| x.net.topology().members().len() < n) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await?;
    Ok(())
}

async fn one_way(
    a: &Node,
    to: &ClusterNode,
    counter: &AtomicU64,
    senders: u64,
    total: u64,
) -> anyhow::Result<f64> {
    let start_count = counter.load(Ordering::Relaxed);
    let begin = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..senders {
        let m = a.net.messaging();
        let to = to.clone();
        let each = total / senders;
        tasks.push(tokio::spawn(async move {
            for i in 0..each {
                m.send(&to, Small(i)).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let target = start_count + (total / senders) * senders;
    tokio::time::timeout(Duration::from_secs(60), async {
        while counter.load(Ordering::Relaxed) < target {
            tokio::task::yield_now().await;
        }
    })
    .await?;
    Ok(((total / senders) * senders) as f64 / begin.elapsed().as_secs_f64())
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let count_a = Arc::new(AtomicU64::new(0));
        let count_b = Arc::new(AtomicU64::new(0));
        let a = node("a", vec![], count_a.clone()).await?;
        let seeds = vec![a
            .net
            .local_address()
            .map(|x| x.to_string())
            .unwrap_or_default()];
        let b = node("b", seeds.clone(), count_b.clone()).await?;
        wait_members(&[&a, &b], 2).await?;
        let to = b.net.topology().local_member();

        // warm up the connection
        one_way(&a, &to, &count_b, 1, 10_000).await?;
        let one = one_way(&a, &to, &count_b, 1, 400_000).await?;
        let many = one_way(&a, &to, &count_b, 64, 400_000).await?;

        let m = a.net.messaging();
        let mut lat = Vec::with_capacity(20_000);
        for i in 0..2_000u64 {
            let _: Small = m.invoke(&to, Small(i), Duration::from_secs(5)).await?;
        }
        for i in 0..20_000u64 {
            let t = Instant::now();
            let _: Small = m.invoke(&to, Small(i), Duration::from_secs(5)).await?;
            lat.push(t.elapsed());
        }
        lat.sort();
        let p = |q: f64| lat[((lat.len() as f64 - 1.0) * q) as usize];

        let begin = Instant::now();
        let c = node("c", seeds, Arc::new(AtomicU64::new(0))).await?;
        wait_members(&[&a, &b, &c], 3).await?;
        let join = begin.elapsed();

        println!("| metric | value | goal |");
        println!("|---|---|---|");
        println!("| one-way msgs/s, 1 sender | {one:.0} | >= 200000 |");
        println!("| one-way msgs/s, 64 senders | {many:.0} | >= 200000 |");
        println!(
            "| invoke p50 | {:.1} us | < 100 us |",
            p(0.50).as_secs_f64() * 1e6
        );
        println!(
            "| invoke p99 | {:.1} us | < 1000 us |",
            p(0.99).as_secs_f64() * 1e6
        );
        println!(
            "| 3rd node seen by all | {:.1} ms | |",
            join.as_secs_f64() * 1e3
        );

        for n in [&c, &b, &a] {
            n.lifecycle.stop().await;
        }
        anyhow::Ok(())
    })
}
