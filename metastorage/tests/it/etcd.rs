//! The etcd v3 endpoint against the `etcd-client` crate on a 3-node in-process cluster:
//! KV (put/get/range/prefix, limits, sorting, delete with prev_kv), transactions (table of
//! compares with both branches, compare-and-swap, nested), compaction errors, unsupported
//! RPCs, Status, MemberList, `UNAVAILABLE` before init, and watches (replay from a past
//! revision, across a leader change without gap or duplicate, compacted start revision).
use anyhow::{anyhow, bail, Context, Result};
use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, EventType, GetOptions, PutOptions, SortOrder,
    SortTarget, Txn, TxnOp, TxnOpResponse, WatchOptions, WatchResponse, WatchStream,
};
use lifecycle::Component;
use serde_json::json;

use crate::harness::{ctx, Options, TestCluster, TestNode, WAIT};

const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
const FUTURE: &str = "etcdserver: mvcc: required revision is a future revision";

fn options() -> Options {
    Options {
        settings: vec![("metastorage.etcd_listen".into(), json!("127.0.0.1:0"))],
        ..Options::default()
    }
}

async fn connect(node: &TestNode) -> Result<Client> {
    let address = node
        .ms
        .etcd_address()
        .ok_or_else(|| anyhow!("no etcd endpoint on {}", node.name))?;
    Ok(Client::connect([format!("http://{address}")], None).await?)
}

/// The gRPC status of a failed call.
fn status<T: std::fmt::Debug>(r: Result<T, etcd_client::Error>) -> tonic::Status {
    match r {
        Err(etcd_client::Error::GRpcStatus(s)) => s,
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

fn rev(header: Option<&etcd_client::ResponseHeader>) -> i64 {
    header.map_or(0, |h| h.revision())
}

async fn next(stream: &mut WatchStream) -> Result<WatchResponse> {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .context("waiting for a watch response")??
        .ok_or_else(|| anyhow!("watch stream ended"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kv_range_delete_status_and_errors() -> Result<()> {
    let cluster = TestCluster::start(3, false, options()).await?;
    // before init: the endpoint answers, but UNAVAILABLE naming the reason
    let early = cluster.node("n1").ms.serve_etcd(&ctx()).await?;
    let mut c1 = connect(cluster.node("n1")).await?;
    let s = status(c1.get("a", None).await);
    assert_eq!(s.code(), tonic::Code::Unavailable);
    assert!(s.message().contains("not initialized"), "{}", s.message());

    cluster.init_and_start("n1").await?;
    assert_eq!(
        cluster.node("n1").ms.etcd_address(),
        early,
        "same endpoint after start"
    );
    let mut c2 = connect(cluster.node("n2")).await?;
    let mut c3 = connect(cluster.node("n3")).await?;

    // put / get with version, create and mod revisions
    let r1 = rev(c1.put("k", "v1", None).await?.header());
    let got = c2.get("k", None).await?;
    let kv = &got.kvs()[0];
    assert_eq!((kv.value(), kv.version()), (&b"v1"[..], 1));
    assert_eq!((kv.create_revision(), kv.mod_revision()), (r1, r1));
    let put = c2
        .put("k", "v2", Some(PutOptions::new().with_prev_key()))
        .await?;
    let r2 = rev(put.header());
    assert!(r2 > r1);
    assert_eq!(put.prev_key().map(|p| p.value()), Some(&b"v1"[..]));
    let kv = c3.get("k", None).await?.kvs()[0].clone();
    assert_eq!(
        (kv.version(), kv.create_revision(), kv.mod_revision()),
        (2, r1, r2)
    );
    // ignore_value keeps the value and bumps the version
    c1.put("k", "", Some(PutOptions::new().with_ignore_value()))
        .await?;
    let kv = c1.get("k", None).await?.kvs()[0].clone();
    assert_eq!((kv.value(), kv.version()), (&b"v2"[..], 3));
    let s = status(
        c1.put("nothing", "", Some(PutOptions::new().with_ignore_value()))
            .await,
    );
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    // the version at an old revision, and a future one
    let old = c2
        .get("k", Some(GetOptions::new().with_revision(r1)))
        .await?;
    assert_eq!(old.kvs()[0].value(), b"v1");
    let s = status(
        c2.get("k", Some(GetOptions::new().with_revision(1 << 40)))
            .await,
    );
    assert_eq!((s.code(), s.message()), (tonic::Code::OutOfRange, FUTURE));

    // prefix, keys_only, count_only, limit + more, sort, from-key
    for (k, v) in [("p/a", "3"), ("p/b", "1"), ("p/c", "2"), ("q", "x")] {
        c1.put(k, v, None).await?;
    }
    let all = c2.get("p/", Some(GetOptions::new().with_prefix())).await?;
    let keys: Vec<&[u8]> = all.kvs().iter().map(|kv| kv.key()).collect();
    assert_eq!(keys, [&b"p/a"[..], b"p/b", b"p/c"]);
    assert_eq!((all.count(), all.more()), (3, false));
    let keys_only = c2
        .get("p/", Some(GetOptions::new().with_prefix().with_keys_only()))
        .await?;
    assert!(keys_only.kvs().iter().all(|kv| kv.value().is_empty()));
    assert_eq!(keys_only.kvs().len(), 3);
    let counted = c2
        .get(
            "p/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await?;
    assert_eq!((counted.count(), counted.kvs().len()), (3, 0));
    let limited = c2
        .get("p/", Some(GetOptions::new().with_prefix().with_limit(2)))
        .await?;
    assert_eq!(
        (limited.kvs().len(), limited.more(), limited.count()),
        (2, true, 3)
    );
    let sorted = c3
        .get(
            "p/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Value, SortOrder::Descend),
            ),
        )
        .await?;
    let values: Vec<&[u8]> = sorted.kvs().iter().map(|kv| kv.value()).collect();
    assert_eq!(values, [&b"3"[..], b"2", b"1"]);
    let from = c3
        .get("p/b", Some(GetOptions::new().with_from_key()))
        .await?;
    let keys: Vec<&[u8]> = from.kvs().iter().map(|kv| kv.key()).collect();
    assert_eq!(keys, [&b"p/b"[..], b"p/c", b"q"]);
    let ranged = c3
        .get("p/a", Some(GetOptions::new().with_range("p/c")))
        .await?;
    assert_eq!(ranged.count(), 2);
    let p_c = c3.get("p/c", None).await?.kvs()[0].mod_revision();
    let newest = c3
        .get(
            "p/",
            Some(GetOptions::new().with_prefix().with_min_mod_revision(p_c)),
        )
        .await?;
    let keys: Vec<&[u8]> = newest.kvs().iter().map(|kv| kv.key()).collect();
    assert_eq!(keys, [&b"p/c"[..]], "filters apply, count does not change");
    assert_eq!(newest.count(), 3);
    let by_key_desc = c3
        .get(
            "p/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Key, SortOrder::Descend)
                    .with_limit(1),
            ),
        )
        .await?;
    assert_eq!(by_key_desc.kvs()[0].key(), b"p/c");
    assert!(by_key_desc.more());
    // serializable reads are local: wait until n3 applied the last write
    let last = rev(c1.get("q", None).await?.header());
    tokio::time::timeout(WAIT, async {
        loop {
            let r = c3
                .get("q", Some(GetOptions::new().with_serializable()))
                .await?;
            if rev(r.header()) >= last {
                assert_eq!(r.kvs()[0].value(), b"x");
                return anyhow::Ok(());
            }
            tokio::task::yield_now().await;
        }
    })
    .await??;

    // delete with prev_kv: one revision for the whole range
    let before = rev(c1.get("q", None).await?.header());
    let deleted = c2
        .delete(
            "p/",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await?;
    assert_eq!(deleted.deleted(), 3);
    assert_eq!(deleted.prev_kvs().len(), 3);
    assert_eq!(rev(deleted.header()), before + 1, "one revision");
    assert_eq!(
        c1.get("p/", Some(GetOptions::new().with_prefix()))
            .await?
            .count(),
        0
    );
    let at_before = c1
        .get(
            "p/",
            Some(GetOptions::new().with_prefix().with_revision(before)),
        )
        .await?;
    assert_eq!(at_before.count(), 3);
    let nothing = c1
        .delete("p/", Some(DeleteOptions::new().with_prefix()))
        .await?;
    assert_eq!(nothing.deleted(), 0);
    // a put after a delete starts a new life: version 1, new create revision
    let r = rev(c1.put("p/a", "again", None).await?.header());
    let kv = c1.get("p/a", None).await?.kvs()[0].clone();
    assert_eq!((kv.version(), kv.create_revision()), (1, r));

    // compaction: reads below fail with etcd's message, watches from below are cancelled
    let compact_at = rev(c1.put("k", "v3", None).await?.header());
    c1.put("k", "v4", None).await?;
    c2.compact(compact_at, None).await?;
    let s = status(c1.get("k", Some(GetOptions::new().with_revision(r1))).await);
    assert_eq!(
        (s.code(), s.message()),
        (tonic::Code::OutOfRange, COMPACTED)
    );
    let s = status(c1.compact(compact_at, None).await);
    assert_eq!(s.code(), tonic::Code::OutOfRange);
    let at = c3
        .get("k", Some(GetOptions::new().with_revision(compact_at)))
        .await?;
    assert_eq!(at.kvs()[0].value(), b"v3");
    let mut w = c3
        .watch("k", Some(WatchOptions::new().with_start_revision(r1)))
        .await?;
    let created = next(&mut w).await?;
    assert!(created.created());
    let cancelled = next(&mut w).await?;
    assert!(cancelled.canceled());
    assert_eq!(cancelled.compact_revision(), compact_at + 1);
    // watching again from the revision it names replays from there
    let mut w = c3
        .watch(
            "k",
            Some(WatchOptions::new().with_start_revision(compact_at + 1)),
        )
        .await?;
    assert!(next(&mut w).await?.created());
    let replay = next(&mut w).await?;
    assert_eq!(
        replay.events()[0].kv().map(|kv| kv.value()),
        Some(&b"v4"[..])
    );

    // requests above the size limit are refused, nothing is written
    let huge = vec![b'x'; 3 * 1024 * 1024];
    let s = status(c1.put("huge", huge, None).await);
    assert_eq!(s.code(), tonic::Code::OutOfRange, "{}", s.message());
    assert_eq!(c1.get("huge", None).await?.count(), 0);

    // unsupported: leases, auth, other maintenance RPCs answer UNIMPLEMENTED naming them
    let s = status(c1.lease_grant(10, None).await);
    assert_eq!(s.code(), tonic::Code::Unimplemented);
    assert!(
        s.message().contains("LeaseGrant") && s.message().contains("leases"),
        "{}",
        s.message()
    );
    let s = status(
        c1.put("l", "v", Some(PutOptions::new().with_lease(7)))
            .await,
    );
    assert_eq!(s.code(), tonic::Code::Unimplemented);
    assert!(s.message().contains("lease"), "{}", s.message());
    let s = status(c1.defragment().await);
    assert_eq!(s.code(), tonic::Code::Unimplemented);
    assert!(s.message().contains("Defragment"), "{}", s.message());
    let s = status(c1.auth_enable().await);
    assert_eq!(s.code(), tonic::Code::Unimplemented);

    // Status and MemberList
    let st = c2.status().await?;
    assert_eq!(st.version(), "3.5.0");
    let group = cluster.node("n2").ms.group().context("n2 group")?;
    let leader = group.leader().context("a leader")?;
    assert_eq!(st.leader(), raft::node_id(&leader));
    assert!(rev(st.header()) >= compact_at);
    let header = st.header().context("status header")?;
    assert_eq!(header.member_id(), raft::node_id("n2"));
    let members = c2.member_list().await?;
    let mut names: Vec<&str> = members.members().iter().map(|m| m.name()).collect();
    names.sort_unstable();
    assert_eq!(names, ["n1", "n2", "n3"]);
    let own = members
        .members()
        .iter()
        .find(|m| m.name() == "n2")
        .context("n2 listed")?;
    let address = cluster.node("n2").ms.etcd_address().context("n2 address")?;
    assert_eq!(own.client_urls(), [format!("http://{address}")]);
    let c1_header = c1.status().await?;
    assert_eq!(
        c1_header.header().map(|h| h.cluster_id()),
        Some(header.cluster_id()),
        "one cluster id everywhere"
    );
    cluster.stop().await
}

/// One row of the transaction table: compares, expected outcome.
struct Case {
    name: &'static str,
    compares: Vec<Compare>,
    succeeds: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transactions_compare_and_swap_and_nest() -> Result<()> {
    let cluster = TestCluster::start(3, false, options()).await?;
    cluster.init_and_start("n1").await?;
    let mut c = connect(cluster.node("n2")).await?;
    let create = rev(c.put("t", "1", None).await?.header());
    let modified = rev(c.put("t", "5", None).await?.header());
    c.put("u/1", "a", None).await?;
    c.put("u/2", "b", None).await?;
    use CompareOp::{Equal, Greater, Less, NotEqual};
    let cases = vec![
        Case {
            name: "value equal",
            compares: vec![Compare::value("t", Equal, "5")],
            succeeds: true,
        },
        Case {
            name: "value equal, other",
            compares: vec![Compare::value("t", Equal, "1")],
            succeeds: false,
        },
        Case {
            name: "value not equal",
            compares: vec![Compare::value("t", NotEqual, "1")],
            succeeds: true,
        },
        Case {
            name: "value greater",
            compares: vec![Compare::value("t", Greater, "4")],
            succeeds: true,
        },
        Case {
            name: "value less",
            compares: vec![Compare::value("t", Less, "4")],
            succeeds: false,
        },
        Case {
            name: "version equal",
            compares: vec![Compare::version("t", Equal, 2)],
            succeeds: true,
        },
        Case {
            name: "version greater",
            compares: vec![Compare::version("t", Greater, 2)],
            succeeds: false,
        },
        Case {
            name: "create equal",
            compares: vec![Compare::create_revision("t", Equal, create)],
            succeeds: true,
        },
        Case {
            name: "create less",
            compares: vec![Compare::create_revision("t", Less, create)],
            succeeds: false,
        },
        Case {
            name: "mod equal",
            compares: vec![Compare::mod_revision("t", Equal, modified)],
            succeeds: true,
        },
        Case {
            name: "mod not equal",
            compares: vec![Compare::mod_revision("t", NotEqual, modified)],
            succeeds: false,
        },
        Case {
            name: "missing: create 0",
            compares: vec![Compare::create_revision("none", Equal, 0)],
            succeeds: true,
        },
        Case {
            name: "missing: version 0",
            compares: vec![Compare::version("none", Equal, 0)],
            succeeds: true,
        },
        Case {
            name: "missing: value never matches",
            compares: vec![Compare::value("none", Equal, "")],
            succeeds: false,
        },
        Case {
            name: "range: all versions 1",
            compares: vec![Compare::version("u/", Equal, 1).with_prefix()],
            succeeds: true,
        },
        Case {
            name: "range: one value differs",
            compares: vec![Compare::value("u/", Equal, "a").with_prefix()],
            succeeds: false,
        },
        Case {
            name: "all compares must hold",
            compares: vec![
                Compare::value("t", Equal, "5"),
                Compare::version("t", Equal, 9),
            ],
            succeeds: false,
        },
        Case {
            name: "no compares",
            compares: vec![],
            succeeds: true,
        },
    ];
    for case in cases {
        let txn = Txn::new()
            .when(case.compares)
            .and_then([TxnOp::put("branch", "success", None), TxnOp::get("t", None)])
            .or_else([TxnOp::put("branch", "failure", None), TxnOp::get("t", None)]);
        let resp = c.txn(txn).await?;
        assert_eq!(resp.succeeded(), case.succeeds, "{}", case.name);
        let branch = c.get("branch", None).await?;
        let expected: &[u8] = if case.succeeds {
            b"success"
        } else {
            b"failure"
        };
        assert_eq!(branch.kvs()[0].value(), expected, "{}", case.name);
        assert_eq!(
            branch.kvs()[0].mod_revision(),
            rev(resp.header()),
            "{}",
            case.name
        );
        match &resp.op_responses()[1] {
            TxnOpResponse::Get(g) => assert_eq!(g.kvs()[0].value(), b"5", "{}", case.name),
            other => bail!("{}: expected a get response, got {other:?}", case.name),
        }
    }

    // compare-and-swap: the second swap from the same value fails and reads the winner
    let cas = |from: &str, to: &str| {
        Txn::new()
            .when([Compare::value("t", Equal, from)])
            .and_then([TxnOp::put("t", to, None)])
            .or_else([TxnOp::get("t", None)])
    };
    assert!(c.txn(cas("5", "6")).await?.succeeded());
    let lost = c.txn(cas("5", "7")).await?;
    assert!(!lost.succeeded());
    match &lost.op_responses()[0] {
        TxnOpResponse::Get(g) => assert_eq!(g.kvs()[0].value(), b"6"),
        other => bail!("expected a get response, got {other:?}"),
    }
    // concurrent swaps through different nodes: exactly one wins each round
    let mut c1 = connect(cluster.node("n1")).await?;
    let mut c3 = connect(cluster.node("n3")).await?;
    c.put("counter", "0", None).await?;
    for round in 0..5 {
        let (from, to) = (round.to_string(), (round + 1).to_string());
        let a = c1.txn(
            Txn::new()
                .when([Compare::value("counter", Equal, from.as_str())])
                .and_then([TxnOp::put("counter", to.as_str(), None)]),
        );
        let b = c3.txn(
            Txn::new()
                .when([Compare::value("counter", Equal, from.as_str())])
                .and_then([TxnOp::put("counter", to.as_str(), None)]),
        );
        let (a, b) = tokio::join!(a, b);
        let wins = [a?.succeeded(), b?.succeeded()]
            .iter()
            .filter(|w| **w)
            .count();
        assert_eq!(wins, 1, "round {round}");
    }
    let counter = c.get("counter", None).await?;
    assert_eq!(counter.kvs()[0].value(), b"5");
    assert_eq!(counter.kvs()[0].version(), 6);

    // 32 clients contend for one key through one node: each request commits, none starves
    c.put("hot", "0", None).await?;
    let contenders = (0..32).map(|i| {
        let mut c = c.clone();
        async move {
            c.txn(
                Txn::new()
                    .when([Compare::version("hot", Greater, 0)])
                    .and_then([TxnOp::put("hot", i.to_string(), None)]),
            )
            .await
        }
    });
    for r in futures::future::join_all(contenders).await {
        assert!(r?.succeeded());
    }
    assert_eq!(c.get("hot", None).await?.kvs()[0].version(), 33);

    // nested: the inner branch runs, every write of the request lands in one revision
    let nested = Txn::new()
        .when([Compare::version("t", Greater, 0)])
        .and_then([
            TxnOp::put("outer", "1", None),
            TxnOp::txn(
                Txn::new()
                    .when([Compare::value("t", Equal, "nope")])
                    .and_then([TxnOp::put("inner", "success", None)])
                    .or_else([
                        TxnOp::put("inner", "failure", None),
                        TxnOp::delete("u/", Some(DeleteOptions::new().with_prefix())),
                    ]),
            ),
        ]);
    let resp = c.txn(nested).await?;
    assert!(resp.succeeded());
    let revision = rev(resp.header());
    match &resp.op_responses()[1] {
        TxnOpResponse::Txn(inner) => {
            assert!(!inner.succeeded());
            match &inner.op_responses()[1] {
                TxnOpResponse::Delete(d) => assert_eq!(d.deleted(), 2),
                other => bail!("expected a delete response, got {other:?}"),
            }
        }
        other => bail!("expected a txn response, got {other:?}"),
    }
    for key in ["outer", "inner"] {
        let kv = c.get(key, None).await?.kvs()[0].clone();
        assert_eq!(kv.mod_revision(), revision, "{key} in the txn's revision");
    }
    assert_eq!(c.get("inner", None).await?.kvs()[0].value(), b"failure");
    assert_eq!(
        c.get("u/", Some(GetOptions::new().with_prefix()))
            .await?
            .count(),
        0
    );

    // one key written twice in a request is refused, nothing is written
    let before = rev(c.get("t", None).await?.header());
    let s = status(
        c.txn(Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)]))
            .await,
    );
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    assert!(s.message().contains("duplicate key"), "{}", s.message());
    assert_eq!(rev(c.get("t", None).await?.header()), before);
    // reading a key the request already wrote is refused, never answered from the old state
    c.put("rw", "0", None).await?;
    for ops in [
        vec![TxnOp::put("rw", "1", None), TxnOp::get("rw", None)],
        vec![
            TxnOp::delete("rw", None),
            TxnOp::txn(Txn::new().when([Compare::version("rw", Equal, 0)])),
        ],
    ] {
        let s = status(c.txn(Txn::new().and_then(ops)).await);
        assert_eq!(s.code(), tonic::Code::Unimplemented);
        assert!(s.message().contains("key rw"), "{}", s.message());
    }
    let many: Vec<TxnOp> = (0..129)
        .map(|i| TxnOp::put(format!("many/{i}"), "v", None))
        .collect();
    let s = status(c.txn(Txn::new().and_then(many)).await);
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    assert!(
        s.message().contains("too many operations"),
        "{}",
        s.message()
    );
    // a read-only txn writes nothing
    let before = rev(c.get("t", None).await?.header());
    let ro = c.txn(Txn::new().and_then([TxnOp::get("t", None)])).await?;
    assert_eq!(rev(ro.header()), before);

    // the metastorage level stops and starts again: the endpoint goes away and comes back
    let n3 = cluster.node("n3");
    n3.ms
        .stop()
        .await
        .map_err(|e| anyhow!("stopping n3: {e}"))?;
    assert_eq!(n3.ms.etcd_address(), None);
    // the connection is gone: refused, or cut while the client still held it
    let s = status(c3.get("t", None).await);
    assert!(
        matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Cancelled),
        "{s:?}"
    );
    n3.start_ms().await?;
    let mut again = connect(n3).await?;
    assert_eq!(again.get("counter", None).await?.kvs()[0].value(), b"5");
    cluster.stop().await
}

/// Reads watch responses until one reaches `last`; checks one revision per response.
async fn collect(stream: &mut WatchStream, last: i64, seen: &mut Vec<i64>) -> Result<()> {
    while seen.last().is_none_or(|r| *r < last) {
        let resp = next(stream).await?;
        if resp.canceled() {
            bail!("watch cancelled: {}", resp.cancel_reason());
        }
        if resp.events().is_empty() {
            continue;
        }
        let revs: Vec<i64> = resp
            .events()
            .iter()
            .map(|e| e.kv().map_or(0, |kv| kv.mod_revision()))
            .collect();
        assert!(
            revs.iter().all(|r| *r == revs[0]),
            "one revision per response: {revs:?}"
        );
        seen.push(revs[0]);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_replays_and_survives_a_leader_change() -> Result<()> {
    // persistent nodes: Status reports the size of the database on disk
    let mut cluster = TestCluster::start(3, true, options()).await?;
    cluster.init_and_start("n1").await?;
    let leader = cluster
        .node("n1")
        .ms
        .group()
        .context("group")?
        .leader()
        .context("a leader")?;
    let survivor = cluster
        .nodes
        .iter()
        .find(|n| n.name != leader)
        .context("a follower")?
        .name
        .clone();
    let mut writer = connect(cluster.node(&survivor)).await?;
    assert!(
        writer.status().await?.db_size() > 0,
        "database size on disk"
    );
    let mut watcher = connect(cluster.node(&survivor)).await?;
    let mut written = Vec::new();
    for i in 0..4 {
        written.push(rev(writer.put(format!("w/{i}"), "v", None).await?.header()));
    }
    let multi = writer
        .txn(Txn::new().and_then([
            TxnOp::put("w/a", "1", None),
            TxnOp::put("w/b", "2", None),
            TxnOp::put("other", "x", None),
        ]))
        .await?;
    written.push(rev(multi.header()));
    let del = writer.delete("w/0", None).await?;
    written.push(rev(del.header()));

    // replay from the first write, with prev_kv, then live
    let mut w = watcher
        .watch(
            "w/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(written[0])
                    .with_prev_key(),
            ),
        )
        .await?;
    let created = next(&mut w).await?;
    assert!(created.created());
    let mut by_rev = Vec::new();
    while by_rev.len() < written.len() {
        let resp = next(&mut w).await?;
        if !resp.events().is_empty() {
            by_rev.push(resp);
        }
    }
    let revs: Vec<i64> = by_rev
        .iter()
        .map(|r| r.events()[0].kv().map_or(0, |kv| kv.mod_revision()))
        .collect();
    assert_eq!(revs, written);
    let txn_events = by_rev[4].events();
    assert_eq!(
        txn_events.len(),
        2,
        "both w/ keys of the txn in one response, 'other' filtered"
    );
    let delete = &by_rev[5].events()[0];
    assert_eq!(delete.event_type(), EventType::Delete);
    assert_eq!(delete.prev_kv().map(|kv| kv.key()), Some(&b"w/0"[..]));

    // a second watch on the same stream, filtered: deletes only
    w.watch(
        "w/",
        Some(
            WatchOptions::new()
                .with_prefix()
                .with_filters([etcd_client::WatchFilterType::NoPut]),
        ),
    )
    .await?;
    let second = next(&mut w).await?;
    assert!(second.created());
    let second_id = second.watch_id();
    assert_ne!(second_id, created.watch_id());

    // writes before and after the leader stops: every revision exactly once, in order
    let mut seen: Vec<i64> = Vec::new();
    let mut expected = Vec::new();
    for i in 0..5 {
        expected.push(rev(writer
            .put(format!("w/x{i}"), "1", None)
            .await?
            .header()));
    }
    // a watch on the node that stops ends with UNAVAILABLE, and does not hold the stop up
    let mut on_leader = connect(cluster.node(&leader)).await?;
    let mut doomed = on_leader
        .watch("w/", Some(WatchOptions::new().with_prefix()))
        .await?;
    assert!(next(&mut doomed).await?.created());
    cluster.stop_node(&leader).await?;
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match doomed.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await?;
    let s = status(end);
    assert_eq!(s.code(), tonic::Code::Unavailable);
    assert!(s.message().contains("stopping"), "{}", s.message());
    for i in 0..5 {
        expected.push(rev(writer
            .put(format!("w/y{i}"), "2", None)
            .await?
            .header()));
    }
    let last_delete = rev(writer.delete("w/x0", None).await?.header());
    expected.push(last_delete);
    let mut deletes_seen = Vec::new();
    tokio::time::timeout(WAIT * 2, async {
        while seen.last().is_none_or(|r| *r < last_delete) || deletes_seen.is_empty() {
            let resp = next(&mut w).await?;
            if resp.canceled() {
                bail!("watch cancelled: {}", resp.cancel_reason());
            }
            if resp.events().is_empty() {
                continue;
            }
            let r = resp.events()[0].kv().map_or(0, |kv| kv.mod_revision());
            if resp.watch_id() == second_id {
                assert!(resp
                    .events()
                    .iter()
                    .all(|e| e.event_type() == EventType::Delete));
                deletes_seen.push(r);
            } else {
                seen.push(r);
            }
        }
        anyhow::Ok(())
    })
    .await??;
    assert_eq!(
        seen, expected,
        "no gap, no duplicate across the leader change"
    );
    assert_eq!(deletes_seen, [last_delete]);

    // cancel: acknowledged, then nothing more for that watch
    w.cancel(second_id).await?;
    loop {
        let resp = next(&mut w).await?;
        if resp.canceled() {
            assert_eq!(resp.watch_id(), second_id);
            break;
        }
    }
    // progress request answers with a header revision
    w.request_progress().await?;
    let progress = next(&mut w).await?;
    assert!(rev(progress.header()) >= last_delete);
    let mut tail = Vec::new();
    let after = rev(writer.put("w/z", "3", None).await?.header());
    collect(&mut w, after, &mut tail).await?;
    assert_eq!(tail, [after]);
    cluster.stop().await
}
