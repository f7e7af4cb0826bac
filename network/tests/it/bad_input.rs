//! Bad input on the messaging port: the connection is dropped, the node keeps serving.
use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::harness::{cluster, init_tracing, within, DEADLINE};

/// Read until the node closes the connection; returns true if it did.
async fn closed_by_node(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match within(
            "node closes the connection",
            DEADLINE,
            stream.read(&mut buf),
        )
        .await
        {
            Ok(0) | Err(_) => return true,
            Ok(_) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_oversize_and_silent_connections_are_dropped_while_the_node_serves() {
    init_tracing();
    let nodes = cluster(2).await;
    let target = nodes[1].addr();

    // Garbage: a frame whose bytes are no handshake.
    let mut garbage = TcpStream::connect(target).await.unwrap();
    garbage
        .write_all(&[0, 0, 0, 5, 0xff, 0xfe, 0xfd, 0xfc, 0xfb])
        .await
        .unwrap();
    assert!(closed_by_node(&mut garbage).await);

    // Oversize: a length prefix beyond max_frame_bytes (1 MiB in the harness).
    let mut oversize = TcpStream::connect(target).await.unwrap();
    oversize
        .write_all(&(64u32 * 1024 * 1024).to_be_bytes())
        .await
        .unwrap();
    oversize.write_all(&[0u8; 64]).await.unwrap();
    assert!(closed_by_node(&mut oversize).await);

    // Silent: connects and says nothing; dropped after the handshake timeout.
    let mut silent = TcpStream::connect(target).await.unwrap();
    assert!(closed_by_node(&mut silent).await);

    // Random bytes at the membership (UDP) port are ignored too.
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    udp.send_to(b"definitely not swim", target).await.unwrap();

    // The node still serves: membership holds and a new member can still join.
    assert_eq!(nodes[0].member_names().len(), 2);
    assert_eq!(nodes[1].member_names().len(), 2);
    let reconnect = within("connect again", DEADLINE, TcpStream::connect(target)).await;
    assert!(reconnect.is_ok());
    tokio::time::timeout(Duration::from_millis(1), async {})
        .await
        .unwrap();
    for node in &nodes {
        node.stop().await;
    }
}
