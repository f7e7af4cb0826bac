//! Property test: arbitrary JSON given to `change` never panics; it is applied or refused
//! with a typed error, and a refused change leaves the storage as it was.
use configuration::{ConfigurationStorage, Error};
use proptest::{prelude::*, test_runner::TestRunner};
use serde_json::{Map, Number, Value};

use crate::support::{start_vault, Local, TestNode, TestRest};

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("name".to_owned()),
        Just("port".to_owned()),
        Just("seeds".to_owned()),
        Just("limits".to_owned()),
        Just("tags".to_owned()),
        Just("timeout_ms".to_owned()),
        Just("enabled".to_owned()),
        "[a-z_.]{0,5}",
    ]
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| Value::Number(n.into())),
        (0u64..70_000).prop_map(|n| Value::Number(n.into())),
        any::<f64>().prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "[a-z0-9:.]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn path() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "",
        "node",
        "node.name",
        "node.port",
        "node.seeds",
        "node.limits",
        "node.limits.tags",
        "node.limits.tags.x",
        "rest",
        "rest.enabled",
        "nope",
        "node.nope.deeper",
    ])
}

#[test]
fn arbitrary_json_changes_never_panic() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let local = rt.block_on(async {
        let local = Local::new(start_vault(None).await, None);
        local.start().await.expect("start");
        local
    });
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 200,
        ..ProptestConfig::default()
    });
    let applied = std::sync::atomic::AtomicUsize::new(0);
    runner
        .run(&(path(), json()), |(path, value)| {
            let before = rt.block_on(local.storage.read_all()).expect("read");
            let result = rt.block_on(local.manager.change(path, value.clone()));
            let after = rt.block_on(local.storage.read_all()).expect("read");
            match result {
                Ok(()) => {
                    applied.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Err(Error::UnknownKey { .. } | Error::InvalidValue { .. }) => {
                    prop_assert_eq!(&after, &before, "refused {} = {} wrote", path, value);
                }
                Err(other) => prop_assert!(false, "unexpected error {other}"),
            }
            // whatever happened, the roots still read back as valid typed values
            prop_assert!(local.manager.root::<TestNode>().is_ok());
            prop_assert!(local.manager.root::<TestRest>().is_ok());
            Ok(())
        })
        .expect("property holds");
    assert!(applied.into_inner() > 0, "some generated changes are valid");
    rt.block_on(local.stop());
}
