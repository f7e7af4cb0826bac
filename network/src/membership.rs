//! SWIM membership: `foca` driven by a tokio loop over UDP on the messaging port.
//!
//! Why UDP: SWIM's probes must not queue behind bulk messages (a busy TCP connection would
//! delay acks and cause false suspicions), and a probe to a crashed node must fail by silence,
//! which is what datagrams give. The UDP socket is bound on the same port as the TCP listener,
//! so one address names a node.
//!
//! Identity: a [`Member`] carries the whole [`ClusterNode`] (name, node id, launch id,
//! address, metadata) plus the launch sequence number kept in the vault. A restarted node is a
//! new identity; when it reuses the address, foca's address conflict resolution lets the later
//! launch win, and the topology keeps only the newest launch per node id in any case.
use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    net::SocketAddr,
    num::{NonZeroU8, NonZeroUsize},
    sync::Arc,
    time::Duration,
};

use foca::{AccumulatingRuntime, Config, Foca, Identity, OwnedNotification, PostcardCodec, Timer};
use rand::{rngs::StdRng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::{
    net::UdpSocket,
    sync::{mpsc, oneshot},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    config::NetworkConfiguration,
    messaging::MessagingService,
    topology::{ClusterNode, TopologyEvent, TopologyService},
};

/// Largest SWIM datagram (identities carry metadata, so more than the usual 1400).
const MAX_PACKET: usize = 8 * 1024;

/// A foca identity: one launch of one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Member {
    pub(crate) node: ClusterNode,
    /// Increases with every start of the node (kept in the vault).
    pub(crate) launch_seq: u64,
    /// Increases when this launch rejoins after being declared down.
    pub(crate) bump: u16,
}

impl Member {
    fn rank(&self) -> (u64, u16, Uuid) {
        (self.launch_seq, self.bump, self.node.launch_id)
    }

    /// The identity used to announce to a seed we only know the address of.
    fn probe(address: SocketAddr) -> Self {
        Self {
            node: ClusterNode {
                name: String::new(),
                id: Uuid::nil(),
                launch_id: Uuid::nil(),
                address,
                metadata: Default::default(),
            },
            launch_seq: 0,
            bump: 0,
        }
    }
}

impl Identity for Member {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            bump: self.bump.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.node.address
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.rank() > adversary.rank()
    }
}

/// foca's settings derived from the configured failure-detection bound `fd`: a probe period
/// of fd/6 and a suspicion of fd/3 leave room for one missed probe cycle and gossip.
pub(crate) fn foca_config(config: &NetworkConfiguration) -> Config {
    let fd = Duration::from_millis(config.failure_detection_ms);
    let probe_period = fd / 6;
    let gossip = Duration::from_millis(config.gossip_interval_ms);
    Config {
        probe_period,
        probe_rtt: (probe_period / 3).max(Duration::from_millis(20)),
        num_indirect_probes: NonZeroUsize::MIN.saturating_add(2),
        max_transmissions: NonZeroU8::new(10).unwrap_or(NonZeroU8::MIN),
        suspect_to_down_after: fd / 3,
        remove_down_after: (fd * 5).max(Duration::from_secs(15)),
        max_packet_size: NonZeroUsize::new(MAX_PACKET).unwrap_or(NonZeroUsize::MIN),
        notify_down_members: true,
        periodic_announce: Some(foca::PeriodicParams {
            frequency: (fd * 3).max(Duration::from_secs(5)),
            num_members: NonZeroUsize::MIN,
        }),
        periodic_announce_to_down_members: Some(foca::PeriodicParams {
            frequency: (fd * 3).max(Duration::from_secs(5)),
            num_members: NonZeroUsize::MIN,
        }),
        periodic_gossip: Some(foca::PeriodicParams {
            frequency: gossip,
            num_members: NonZeroUsize::MIN.saturating_add(2),
        }),
    }
}

/// Commands for the membership loop.
pub(crate) enum Command {
    /// Say goodbye to the cluster; acknowledged once the datagrams are sent.
    Leave(oneshot::Sender<()>),
}

type Swim = Foca<Member, PostcardCodec, StdRng, foca::NoCustomBroadcast>;

pub(crate) struct MembershipLoop {
    pub(crate) local: Member,
    pub(crate) config: NetworkConfiguration,
    pub(crate) socket: Arc<UdpSocket>,
    pub(crate) topology: TopologyService,
    pub(crate) messaging: MessagingService,
    pub(crate) commands: mpsc::Receiver<Command>,
    pub(crate) cancel: CancellationToken,
}

struct Timers {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    events: HashMap<u64, Timer<Member>>,
    next: u64,
}

impl Timers {
    fn push(&mut self, after: Duration, timer: Timer<Member>) {
        let id = self.next;
        self.next += 1;
        self.heap.push(Reverse((Instant::now() + after, id)));
        self.events.insert(id, timer);
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    fn pop_due(&mut self, now: Instant) -> Option<Timer<Member>> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => {
                let Reverse((_, id)) = self.heap.pop()?;
                self.events.remove(&id)
            }
            _ => None,
        }
    }
}

impl MembershipLoop {
    pub(crate) async fn run(mut self) {
        let mut foca: Swim = Foca::new(
            self.local.clone(),
            foca_config(&self.config),
            StdRng::from_os_rng(),
            PostcardCodec,
        );
        let mut rt = AccumulatingRuntime::new();
        let mut timers = Timers {
            heap: BinaryHeap::new(),
            events: HashMap::new(),
            next: 0,
        };
        let mut buf = vec![0u8; 64 * 1024];
        let announce_every = Duration::from_millis(self.config.announce_interval_ms);
        let mut next_announce = Instant::now();
        let mut left = false;
        loop {
            if !left && Instant::now() >= next_announce {
                self.announce_to_seeds(&mut foca, &mut rt).await;
                let alone = foca.num_members() == 0;
                next_announce = Instant::now()
                    + if alone {
                        announce_every
                    } else {
                        announce_every * 10
                    };
            }
            self.drain(&mut foca, &mut rt, &mut timers).await;
            let timer_at = timers
                .next_deadline()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            let wake = timer_at.min(next_announce);
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => return,
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Leave(ack)) => {
                        if !left {
                            self.leave(&mut foca, &mut rt).await;
                            left = true;
                        }
                        let _ = ack.send(());
                    }
                    None => return,
                },
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, from)) => {
                        if let Some(data) = buf.get(..n) {
                            if let Err(e) = foca.handle_data(data, &mut rt) {
                                tracing::debug!(from = %from, error = %e, "dropped membership datagram");
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "membership socket receive failed"),
                },
                () = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    while let Some(timer) = timers.pop_due(now) {
                        if let Err(e) = foca.handle_timer(timer, &mut rt) {
                            tracing::debug!(error = %e, "membership timer failed");
                        }
                    }
                }
            }
        }
    }

    async fn announce_to_seeds(&self, foca: &mut Swim, rt: &mut AccumulatingRuntime<Member>) {
        let known: Vec<SocketAddr> = foca.iter_members().map(|m| m.id().node.address).collect();
        for seed in &self.config.seeds {
            let addrs = match tokio::net::lookup_host(seed.as_str()).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(seed = %seed, error = %e, "cannot resolve seed");
                    continue;
                }
            };
            for addr in addrs {
                if addr == self.local.node.address || known.contains(&addr) {
                    continue;
                }
                if let Err(e) = foca.announce(Member::probe(addr), &mut *rt) {
                    tracing::debug!(seed = %addr, error = %e, "announce failed");
                }
            }
        }
    }

    async fn leave(&self, foca: &mut Swim, rt: &mut AccumulatingRuntime<Member>) {
        // Tell every member directly rather than a random few: they drop us at once.
        let members = foca.num_members().max(1);
        let mut cfg = foca_config(&self.config);
        cfg.num_indirect_probes = NonZeroUsize::new(members).unwrap_or(NonZeroUsize::MIN);
        if let Err(e) = foca.set_config(cfg) {
            tracing::debug!(error = %e, "cannot widen the goodbye fan-out");
        }
        if let Err(e) = foca.leave_cluster(&mut *rt) {
            tracing::warn!(error = %e, "leaving the cluster failed");
        }
        while let Some((to, data)) = rt.to_send() {
            self.send(to.node.address, &data).await;
        }
        tracing::info!(members, "said goodbye to the cluster");
    }

    async fn send(&self, to: SocketAddr, data: &[u8]) {
        if let Err(e) = self.socket.send_to(data, to).await {
            tracing::debug!(to = %to, error = %e, "membership datagram not sent");
        }
    }

    async fn drain(
        &self,
        foca: &mut Swim,
        rt: &mut AccumulatingRuntime<Member>,
        timers: &mut Timers,
    ) {
        while let Some((to, data)) = rt.to_send() {
            self.send(to.node.address, &data).await;
        }
        while let Some((after, timer)) = rt.to_schedule() {
            timers.push(after, timer);
        }
        let mut changed = false;
        while let Some(n) = rt.to_notify() {
            match n {
                OwnedNotification::MemberUp(_)
                | OwnedNotification::MemberDown(_)
                | OwnedNotification::Rename(_, _) => changed = true,
                OwnedNotification::Rejoin(id) => {
                    tracing::warn!(bump = id.bump, "this node was declared down; rejoined");
                }
                OwnedNotification::Defunct => tracing::debug!("membership defunct"),
                OwnedNotification::Idle => tracing::debug!("no other members"),
                OwnedNotification::Active => tracing::debug!("membership active"),
            }
        }
        if changed {
            self.publish(foca);
        }
    }

    /// Push foca's active members into the topology (newest launch per node id).
    fn publish(&self, foca: &Swim) {
        let mut newest: HashMap<Uuid, &Member> = HashMap::new();
        for m in foca.iter_members() {
            let id = m.id();
            if id.node.id == self.local.node.id {
                continue;
            }
            newest
                .entry(id.node.id)
                .and_modify(|cur| {
                    if id.rank() > cur.rank() {
                        *cur = id;
                    }
                })
                .or_insert(id);
        }
        let current = newest.into_values().map(|m| m.node.clone()).collect();
        for event in self.topology.update(current) {
            if let TopologyEvent::Disappeared(node) = event {
                self.messaging.forget_peer(&node);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(seq: u64, bump: u16) -> Member {
        let mut m = Member::probe("127.0.0.1:1".parse().unwrap());
        m.node.id = Uuid::from_u128(1);
        m.node.launch_id = Uuid::from_u128(u128::from(seq));
        m.launch_seq = seq;
        m.bump = bump;
        m
    }

    #[test]
    fn later_launch_wins_the_address_and_renew_bumps() {
        assert!(member(2, 0).win_addr_conflict(&member(1, 5)));
        assert!(!member(1, 5).win_addr_conflict(&member(2, 0)));
        let renewed = member(1, 0).renew().unwrap();
        assert_eq!(renewed.bump, 1);
        assert!(renewed.win_addr_conflict(&member(1, 0)));
    }

    #[test]
    fn foca_config_fits_the_failure_bound() {
        let config = NetworkConfiguration::default();
        let c = foca_config(&config);
        let worst = c.probe_period * 2 + c.suspect_to_down_after;
        assert!(
            worst < Duration::from_millis(config.failure_detection_ms),
            "{worst:?}"
        );
    }
}
