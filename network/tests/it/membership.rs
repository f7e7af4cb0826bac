//! Membership: join through seeds, crash detection, restart, graceful leave.
use std::sync::Arc;

use network::TopologyEvent;
use vault::VaultManager;

use crate::harness::{
    cluster, free_addr, init_tracing, sorted, wait_for, within, Options, TestNode, DEADLINE,
    FD_DEADLINE,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_join_through_seeds_even_if_the_seed_is_down_at_first() {
    init_tracing();
    let seed_addr = free_addr();
    let seeds = vec![seed_addr.to_string()];
    // b and c start first: their only seed is not up yet.
    let b = TestNode::launch(
        "b",
        &Options {
            seeds: seeds.clone(),
            ..Options::default()
        },
    )
    .await;
    let c = TestNode::launch(
        "c",
        &Options {
            seeds: seeds.clone(),
            ..Options::default()
        },
    )
    .await;
    assert_eq!(b.member_names(), ["b"]);
    let a = TestNode::launch(
        "a",
        &Options {
            listen: seed_addr.to_string(),
            ..Options::default()
        },
    )
    .await;
    assert_eq!(a.addr(), seed_addr);
    for node in [&a, &b, &c] {
        wait_for("three members", DEADLINE, || {
            node.member_names() == sorted(&["a", "b", "c"])
        })
        .await;
    }
    // Members carry ids, launch ids, addresses and metadata.
    let seen = a.net.topology().member_by_name("b").expect("b is a member");
    assert_eq!(seen, b.me());
    assert_eq!(seen.address, b.addr());
    assert_eq!(
        seen.metadata.get("rest").map(String::as_str),
        Some("http://b.invalid:10300")
    );
    for node in [&a, &b, &c] {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_declared_gone_by_every_other_node() {
    init_tracing();
    let nodes = cluster(4).await;
    let victim = nodes[3].me();
    let mut events: Vec<_> = nodes[..3]
        .iter()
        .map(|n| n.net.topology().subscribe())
        .collect();
    nodes[3].kill().await;
    for node in &nodes[..3] {
        wait_for("crashed node removed", FD_DEADLINE, || {
            node.member_names() == sorted(&["n0", "n1", "n2"])
        })
        .await;
    }
    for rx in &mut events {
        let ev = within("disappeared event", DEADLINE, rx.recv())
            .await
            .expect("event");
        assert_eq!(ev, TopologyEvent::Disappeared(victim.clone()));
    }
    for node in &nodes[..3] {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_reappears_with_a_new_launch_id() {
    init_tracing();
    let mut nodes = cluster(3).await;
    let old = nodes[2].me();
    let vault: Arc<VaultManager> = Arc::clone(&nodes[2].vault);
    let mut rx = nodes[0].net.topology().subscribe();
    nodes[2].kill().await;
    let seeds = vec![nodes[0].addr().to_string()];
    let restarted = TestNode::build(
        "n2",
        vault,
        &Options {
            seeds,
            ..Options::default()
        },
    )
    .start()
    .await;
    let new = restarted.me();
    assert_eq!(new.id, old.id, "the node id is stable across restarts");
    assert_ne!(new.launch_id, old.launch_id, "every start is a new launch");
    for node in &nodes[..2] {
        wait_for("new launch visible", FD_DEADLINE, || {
            node.net
                .topology()
                .member_by_name("n2")
                .is_some_and(|m| m.launch_id == new.launch_id)
        })
        .await;
    }
    // n0 saw the old launch go and the new one come, never the old one back.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        seen.push(within("events", DEADLINE, rx.recv()).await.expect("event"));
    }
    assert!(
        seen.contains(&TopologyEvent::Disappeared(old.clone())),
        "{seen:?}"
    );
    assert!(
        seen.contains(&TopologyEvent::Appeared(new.clone())),
        "{seen:?}"
    );
    assert!(!nodes[0].net.topology().contains(&old));
    nodes.push(restarted);
    for node in &nodes[..2] {
        node.stop().await;
    }
    nodes[3].stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stops_says_goodbye_and_disappears_at_once() {
    init_tracing();
    // Failure detection far beyond the deadline: only the goodbye can make this pass.
    let slow = Options {
        failure_detection_ms: 120_000,
        ..Options::default()
    };
    let a = TestNode::launch("a", &slow).await;
    let seeds = vec![a.addr().to_string()];
    let b = TestNode::launch(
        "b",
        &Options {
            seeds: seeds.clone(),
            ..slow_with(&seeds)
        },
    )
    .await;
    let c = TestNode::launch("c", &slow_with(&seeds)).await;
    for node in [&a, &b, &c] {
        wait_for("three members", DEADLINE, || node.member_names().len() == 3).await;
    }
    c.stop().await;
    for node in [&a, &b] {
        wait_for("stopped node gone", DEADLINE, || {
            node.member_names() == sorted(&["a", "b"])
        })
        .await;
    }
    a.stop().await;
    b.stop().await;
}

fn slow_with(seeds: &[String]) -> Options {
    Options {
        seeds: seeds.to_vec(),
        failure_detection_ms: 120_000,
        ..Options::default()
    }
}
