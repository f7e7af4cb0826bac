//! Messaging: invoke, timeouts, ordering, handler failures, stop.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use network::{Error, Message};
use serde::{Deserialize, Serialize};
use vault::VaultManager;

use crate::harness::{init_tracing, wait_for, within, Options, TestNode, DEADLINE};

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Ping(u64);
impl Message for Ping {
    const GROUP: u16 = 1;
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Pong(u64);
impl Message for Pong {
    const GROUP: u16 = 2;
}

#[derive(Serialize, Deserialize, Debug)]
struct Seq {
    sender: u32,
    n: u32,
}
impl Message for Seq {
    const GROUP: u16 = 3;
}

#[derive(Serialize, Deserialize, Debug)]
struct Never;
impl Message for Never {
    const GROUP: u16 = 4;
}

#[derive(Serialize, Deserialize, Debug)]
struct Boom(bool);
impl Message for Boom {
    const GROUP: u16 = 5;
}

#[derive(Serialize, Deserialize, Debug)]
struct Unhandled;
impl Message for Unhandled {
    const GROUP: u16 = 999;
}

type Log = Arc<Mutex<Vec<(u32, u32)>>>;

/// Two nodes with every test handler registered on both.
async fn pair() -> (TestNode, TestNode, Log) {
    let log: Log = Arc::new(Mutex::new(Vec::new()));
    let a = register(
        TestNode::build(
            "a",
            Arc::new(VaultManager::in_memory()),
            &Options::default(),
        ),
        &log,
    )
    .start()
    .await;
    let opts = Options {
        seeds: vec![a.addr().to_string()],
        ..Options::default()
    };
    let b = register(
        TestNode::build("b", Arc::new(VaultManager::in_memory()), &opts),
        &log,
    )
    .start()
    .await;
    for node in [&a, &b] {
        wait_for("two members", DEADLINE, || node.member_names().len() == 2).await;
    }
    (a, b, log)
}

/// `from` invokes `to` and gets the right reply.
async fn ping(from: &TestNode, to: &TestNode) {
    let reply: Pong = from
        .net
        .messaging()
        .invoke(&to.me(), Ping(1), DEADLINE)
        .await
        .unwrap();
    assert_eq!(reply, Pong(2));
}

fn register(node: TestNode, log: &Log) -> TestNode {
    let m = node.net.messaging();
    m.register_handler(|_, Ping(n)| async move { Ok(Pong(n + 1)) })
        .unwrap();
    let log = Arc::clone(log);
    m.register_one_way(move |_, s: Seq| {
        log.lock().unwrap().push((s.sender, s.n));
        async {}
    })
    .unwrap();
    m.register_handler(|_, Never| async {
        std::future::pending::<()>().await;
        Ok(())
    })
    .unwrap();
    m.register_handler(|_, Boom(panic)| async move {
        if panic {
            panic!("handler exploded");
        }
        Err::<(), _>("handler refused".to_owned())
    })
    .unwrap();
    assert!(matches!(
        m.register_handler(|_, Ping(n)| async move { Ok(Pong(n)) }),
        Err(Error::DuplicateHandler(1))
    ));
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_returns_the_reply_and_local_invoke_works_too() {
    init_tracing();
    let (a, b, _) = pair().await;
    let m = a.net.messaging();
    let reply: Pong = m.invoke(&b.me(), Ping(41), DEADLINE).await.unwrap();
    assert_eq!(reply, Pong(42));
    let reply: Pong = m.invoke(&a.me(), Ping(1), DEADLINE).await.unwrap();
    assert_eq!(reply, Pong(2), "a node can invoke itself");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_times_out_when_no_reply_comes() {
    init_tracing();
    let (a, b, _) = pair().await;
    let err = a
        .net
        .messaging()
        .invoke::<_, ()>(&b.me(), Never, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Timeout { ref peer, timeout_ms: 200 } if peer == "b"),
        "{err}"
    );
    // The connection is still fine.
    ping(&a, &b).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_from_concurrent_senders_arrive_in_order_per_sender() {
    init_tracing();
    let (a, b, log) = pair().await;
    const SENDERS: u32 = 8;
    const EACH: u32 = 500;
    let to = b.me();
    let mut tasks = Vec::new();
    for sender in 0..SENDERS {
        let m = a.net.messaging();
        let to = to.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..EACH {
                m.send(&to, Seq { sender, n }).await.unwrap();
            }
        }));
    }
    for t in tasks {
        within("senders", DEADLINE, t).await.unwrap();
    }
    let total = (SENDERS * EACH) as usize;
    wait_for("all messages", DEADLINE, || {
        log.lock().unwrap().len() == total
    })
    .await;
    let mut next: HashMap<u32, u32> = HashMap::new();
    for (sender, n) in log.lock().unwrap().iter() {
        let expected = next.entry(*sender).or_insert(0);
        assert_eq!(n, expected, "sender {sender} out of order");
        *expected += 1;
    }
    assert_eq!(next.len(), SENDERS as usize);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_or_panicking_handler_fails_only_its_request() {
    init_tracing();
    let (a, b, _) = pair().await;
    let m = a.net.messaging();
    let err = m
        .invoke::<_, ()>(&b.me(), Boom(true), DEADLINE)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Remote { reason, group: 5, .. } if reason.contains("handler exploded")),
        "{err}"
    );
    let err = m
        .invoke::<_, ()>(&b.me(), Boom(false), DEADLINE)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Remote { reason, .. } if reason == "handler refused"),
        "{err}"
    );
    let reply: Pong = m.invoke(&b.me(), Ping(7), DEADLINE).await.unwrap();
    assert_eq!(reply, Pong(8), "the connection and the node survived");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_group_drops_the_connection_and_messaging_recovers() {
    init_tracing();
    let (a, b, _) = pair().await;
    let m = a.net.messaging();
    let err = m
        .invoke::<_, ()>(&b.me(), Unhandled, DEADLINE)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ConnectionLost { .. }), "{err}");
    let reply: Pong = m.invoke(&b.me(), Ping(1), DEADLINE).await.unwrap();
    assert_eq!(reply, Pong(2), "reconnected");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_fails_pending_invokes_and_refuses_new_sends() {
    init_tracing();
    let (a, b, _) = pair().await;
    let m = a.net.messaging();
    let to = b.me();
    let pending = tokio::spawn({
        let m = m.clone();
        async move { m.invoke::<_, ()>(&to, Never, Duration::from_secs(60)).await }
    });
    // Wait until the request is in flight (the peer connection is up).
    let probe: Pong = m.invoke(&b.me(), Ping(1), DEADLINE).await.unwrap();
    assert_eq!(probe, Pong(2));
    a.stop().await;
    let err = within("pending invoke fails", DEADLINE, pending)
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, Error::Stopping(_)), "{err}");
    let err = m.send(&b.me(), Ping(1)).await.unwrap_err();
    assert!(matches!(err, Error::Stopping(_)), "{err}");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_id_mismatch_refuses_the_connection() {
    init_tracing();
    let (a, b, _) = pair().await;
    a.net.set_cluster_id(Some(uuid::Uuid::from_u128(1)));
    b.net.set_cluster_id(Some(uuid::Uuid::from_u128(2)));
    let err = a
        .net
        .messaging()
        .invoke::<_, Pong>(&b.me(), Ping(1), DEADLINE)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cluster id mismatch"), "{err}");
    b.net.set_cluster_id(Some(uuid::Uuid::from_u128(1)));
    // Once the ids agree a new connection is accepted (the refused one may still be winding
    // down, so retry until the deadline).
    let m = a.net.messaging();
    let to = b.me();
    let reply: Pong = within("invoke after the ids agree", DEADLINE, async {
        loop {
            if let Ok(p) = m.invoke(&to, Ping(1), Duration::from_secs(1)).await {
                return p;
            }
        }
    })
    .await;
    assert_eq!(reply, Pong(2));
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_peer_is_reported_lost_and_its_port_refuses() {
    init_tracing();
    let (a, b, _) = pair().await;
    let m = b.net.messaging();
    let mut losses = m.connection_losses();
    // a dials b: b now holds an incoming connection from a
    ping(&a, &b).await;
    let peer_a = a.me();
    assert_eq!(
        m.probe(&peer_a, DEADLINE).await,
        network::Reachability::Listening
    );
    assert!(losses.try_recv().is_err(), "no loss while both run");
    a.stop().await;
    let lost = within("loss of a reported on b", DEADLINE, async {
        loop {
            match losses.recv().await {
                Ok(node) if node.name == "a" => return node,
                Ok(_) => {}
                Err(e) => panic!("loss channel: {e}"),
            }
        }
    })
    .await;
    assert_eq!(lost.launch_id, peer_a.launch_id);
    assert_eq!(
        m.probe(&peer_a, DEADLINE).await,
        network::Reachability::Refused
    );
    b.stop().await;
}
