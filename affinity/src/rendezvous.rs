//! Rendezvous (highest random weight) hashing of partition replicas onto nodes, with
//! stratified weights.
//!
//! A partition's replicas are the `min(replicas, nodes)` nodes with the highest weight for
//! it. The weight of a node for a partition depends only on (table, partition count,
//! partition, node), never on the other nodes, so each partition ranks every possible node
//! in one fixed order: adding a node only moves the partitions where it enters the top
//! `replicas`, removing one only moves the partitions it held. (For one replica this is the
//! only way to get that property: a choice that never moves a partition between two old
//! nodes when a node comes or goes is a fixed per-partition ranking.)
//!
//! Plain rendezvous hashing draws every weight independently, so a node's load is binomial.
//! Here the high 32 bits of a node's weights over the partitions of a table are a random
//! *permutation* of `0..partitions` (one per node, seeded by table and node name): every
//! node ranks high on exactly as many partitions as low, which about halves the spread of
//! the loads (see `tests/it/rendezvous.rs` for the bounds tested). The low 32 bits are an
//! independent hash that breaks ties. Everything is SipHash-1-3 with fixed keys: stable
//! across processes, platforms and releases (never std's randomized hasher).
use std::{collections::BTreeSet, hash::Hasher};

use siphasher::sip::SipHasher13;

/// The fixed SipHash keys: changing them reshuffles every assignment of every cluster.
const KEY0: u64 = 0x6967_6e69_7465_2d61; // "ignite-a"
const KEY1: u64 = 0x6666_696e_6974_7931; // "ffinity1"

/// Domain separators of the two hash uses.
const SHUFFLE: u8 = 1;
const TIE_BREAK: u8 = 2;

fn hash(domain: u8, table_id: &str, partitions: u32, node: &str, n: u64) -> u64 {
    let mut h = SipHasher13::new_with_keys(KEY0, KEY1);
    h.write_u8(domain);
    // length-prefixed, so no two distinct (table, node) pairs hash the same bytes
    h.write_u64(table_id.len() as u64);
    h.write(table_id.as_bytes());
    h.write_u32(partitions);
    h.write_u64(node.len() as u64);
    h.write(node.as_bytes());
    h.write_u64(n);
    h.finish()
}

/// The rank of `node` on each partition of a table: a permutation of `0..partitions`
/// (Fisher-Yates driven by a SipHash counter stream).
fn ranks(table_id: &str, partitions: u32, node: &str) -> Vec<u32> {
    let mut ranks: Vec<u32> = (0..partitions).collect();
    for i in (1..ranks.len()).rev() {
        let draw = hash(SHUFFLE, table_id, partitions, node, i as u64);
        // `i + 1 <= u32::MAX + 1`; the modulo bias is below 2^-31 and the same everywhere
        let j = (draw % (i as u64 + 1)) as usize;
        ranks.swap(i, j);
    }
    ranks
}

/// The weight of `node` for `partition` of a table with `partitions` partitions: a fixed
/// function of these four values. Higher wins.
pub fn weight(table_id: &str, partitions: u32, partition: u32, node: &str) -> u64 {
    let rank = ranks(table_id, partitions, node)
        .get(partition as usize)
        .copied()
        .unwrap_or(0);
    combine(rank, table_id, partitions, partition, node)
}

fn combine(rank: u32, table_id: &str, partitions: u32, partition: u32, node: &str) -> u64 {
    let tie = hash(TIE_BREAK, table_id, partitions, node, u64::from(partition)) >> 32;
    (u64::from(rank) << 32) | tie
}

/// The replicas of every partition of `table_id`: entry `p` lists partition `p`'s
/// `min(replicas, nodes.len())` distinct nodes, highest weight first (equal weights by name).
/// A pure, deterministic function of its arguments.
pub fn assign(
    table_id: &str,
    partitions: u32,
    replicas: u32,
    nodes: &BTreeSet<String>,
) -> Vec<Vec<String>> {
    let per_node: Vec<(&String, Vec<u32>)> = nodes
        .iter()
        .map(|n| (n, ranks(table_id, partitions, n)))
        .collect();
    let take = (replicas as usize).min(nodes.len());
    (0..partitions)
        .map(|p| {
            let mut ranked: Vec<(u64, &String)> = per_node
                .iter()
                .map(|(n, r)| (combine(r[p as usize], table_id, partitions, p, n), *n))
                .collect();
            ranked.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
            ranked
                .into_iter()
                .take(take)
                .map(|(_, n)| n.clone())
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn ranks_are_a_permutation() {
        let mut r = ranks("t", 100, "n1");
        r.sort_unstable();
        assert_eq!(r, (0..100).collect::<Vec<_>>());
        assert_ne!(ranks("t", 100, "n1"), ranks("t", 100, "n2"));
        assert_ne!(ranks("ab", 100, "c"), ranks("a", 100, "bc"));
    }

    #[test]
    fn assign_follows_the_weights() {
        let all = nodes(&["n1", "n2", "n3", "n4"]);
        let out = assign("people", 16, 2, &all);
        for (p, replicas) in out.iter().enumerate() {
            let mut by_weight: Vec<(u64, &String)> = all
                .iter()
                .map(|n| (weight("people", 16, p as u32, n), n))
                .collect();
            by_weight.sort_by(|a, b| b.cmp(a));
            let expect: Vec<String> = by_weight
                .iter()
                .take(2)
                .map(|(_, n)| (*n).clone())
                .collect();
            assert_eq!(replicas, &expect, "partition {p}");
        }
    }

    #[test]
    fn pinned_assignment_never_changes() {
        // A change here reassigns every partition of every existing cluster: do it only on
        // purpose, with a migration.
        let out = assign("people", 4, 2, &nodes(&["n1", "n2", "n3"]));
        let pinned: Vec<Vec<&str>> = out
            .iter()
            .map(|p| p.iter().map(String::as_str).collect())
            .collect();
        assert_eq!(pinned, PINNED);
    }

    const PINNED: [[&str; 2]; 4] = [["n2", "n1"], ["n3", "n1"], ["n1", "n3"], ["n1", "n2"]];

    #[test]
    fn fewer_nodes_than_replicas_uses_every_node() {
        let all = nodes(&["a", "b"]);
        for p in assign("t", 8, 3, &all) {
            assert_eq!(p.len(), 2);
            assert_eq!(p.iter().cloned().collect::<BTreeSet<_>>(), all);
        }
    }

    #[test]
    fn no_nodes_or_no_replicas_gives_empty_partitions() {
        assert_eq!(
            assign("t", 3, 2, &BTreeSet::new()),
            vec![Vec::<String>::new(); 3]
        );
        assert_eq!(
            assign("t", 2, 0, &nodes(&["a"])),
            vec![Vec::<String>::new(); 2]
        );
        assert!(assign("t", 0, 2, &nodes(&["a"])).is_empty());
    }
}
