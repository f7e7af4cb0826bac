//! `LifecycleManager`: order, failure, interruption, timeouts and runtime faults.
use std::{sync::Arc, time::Duration};

use lifecycle::{
    LifecycleConfig, LifecycleManager, NodeState, RunLevel, StartError, StopFailureKind, Stopping,
};

use crate::support::{entries, Behaviour, Journal, TestComponent};

const DEADLINE: Duration = Duration::from_secs(10);

fn manager(stop_timeout: Duration) -> LifecycleManager {
    LifecycleManager::new(LifecycleConfig { stop_timeout })
}

fn register(
    lm: &LifecycleManager,
    journal: &Journal,
    spec: &[(&str, Behaviour)],
) -> Vec<Arc<TestComponent>> {
    spec.iter()
        .map(|(name, b)| {
            let c = TestComponent::new(name, *b, journal);
            lm.register(RunLevel::Zombie, c.clone()).unwrap();
            c
        })
        .collect()
}

#[tokio::test]
async fn starts_in_order_and_stops_in_reverse() {
    let journal = Journal::default();
    let lm = manager(Duration::from_secs(5));
    register(
        &lm,
        &journal,
        &[
            ("vault", Behaviour::Ok),
            ("configuration", Behaviour::Ok),
            ("network", Behaviour::Ok),
        ],
    );
    let mut states = lm.subscribe();
    assert_eq!(lm.state(), NodeState::Starting);
    lm.start().await.unwrap();
    assert_eq!(lm.state(), NodeState::Started);
    assert_eq!(
        entries(&journal, "start"),
        ["vault", "configuration", "network"]
    );

    let report = lm.stop().await;
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(
        entries(&journal, "before_stop"),
        ["network", "configuration", "vault"]
    );
    assert_eq!(
        entries(&journal, "stop"),
        ["network", "configuration", "vault"]
    );
    assert_eq!(report.stopped, ["network", "configuration", "vault"]);
    assert_eq!(lm.state(), NodeState::Stopped);
    assert!(states.has_changed().unwrap());
    assert_eq!(*states.borrow_and_update(), NodeState::Stopped);
}

#[tokio::test]
async fn failure_of_third_of_five_stops_the_started_ones_in_reverse() {
    let journal = Journal::default();
    let lm = manager(Duration::from_secs(5));
    register(
        &lm,
        &journal,
        &[
            ("c1", Behaviour::Ok),
            ("c2", Behaviour::FailStop),
            ("c3", Behaviour::FailStart),
            ("c4", Behaviour::Ok),
            ("c5", Behaviour::Ok),
        ],
    );
    let err = lm.start().await.unwrap_err();
    assert_eq!(
        entries(&journal, "start"),
        ["c1", "c2", "c3"],
        "c4 and c5 never start"
    );
    // the failed component is stopped too (it may have spawned tasks), then 2 and 1 in reverse
    assert_eq!(entries(&journal, "stop"), ["c3", "c2", "c1"]);
    match &err {
        StartError::ComponentFailed {
            component,
            cause,
            stop_failures,
        } => {
            assert_eq!(component, "c3");
            assert_eq!(cause.to_string(), "disk of c3 is on fire");
            assert_eq!(stop_failures.len(), 1);
            assert_eq!(stop_failures[0].component, "c2");
            assert_eq!(
                stop_failures[0].kind,
                StopFailureKind::Error("flush failed".into())
            );
        }
        other => panic!("unexpected error {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("c3") && msg.contains("on fire") && msg.contains("c2 failed to stop"),
        "{msg}"
    );
    assert_eq!(lm.state(), NodeState::Stopped);
    // a later stop is a no-op
    let report = lm.stop().await;
    assert_eq!(entries(&journal, "stop").len(), 3, "{report:?}");
}

#[tokio::test]
async fn stop_while_starting_interrupts_the_start() {
    let journal = Journal::default();
    let lm = Arc::new(manager(Duration::from_secs(5)));
    let comps = register(
        &lm,
        &journal,
        &[
            ("c1", Behaviour::Ok),
            ("c2", Behaviour::HangStart),
            ("c3", Behaviour::Ok),
        ],
    );
    let entered = comps[1].start_entered.clone();
    let lm2 = Arc::clone(&lm);
    let start = tokio::spawn(async move { lm2.start().await });
    tokio::time::timeout(DEADLINE, entered.notified())
        .await
        .unwrap();

    let report = tokio::time::timeout(DEADLINE, lm.stop()).await.unwrap();
    let res = tokio::time::timeout(DEADLINE, start)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(res, Err(StartError::Interrupted)), "{res:?}");
    assert_eq!(entries(&journal, "start"), ["c1", "c2"]);
    assert_eq!(report.stopped, ["c2", "c1"]);
    assert_eq!(lm.state(), NodeState::Stopped);
}

#[tokio::test]
async fn stop_is_idempotent() {
    let journal = Journal::default();
    let lm = Arc::new(manager(Duration::from_secs(5)));
    register(&lm, &journal, &[("a", Behaviour::Ok), ("b", Behaviour::Ok)]);
    lm.start().await.unwrap();
    let (r1, r2) = tokio::join!(lm.stop(), lm.stop());
    let r3 = lm.stop().await;
    assert_eq!(
        entries(&journal, "stop"),
        ["b", "a"],
        "each component stopped once"
    );
    assert_eq!(r1, r2);
    assert_eq!(r1, r3);
    assert!(matches!(lm.start().await, Err(StartError::InvalidState(_))));
}

#[tokio::test]
async fn in_flight_operation_completes_while_new_ones_are_refused() {
    let journal = Journal::default();
    let lm = Arc::new(manager(Duration::from_secs(5)));
    register(&lm, &journal, &[("a", Behaviour::Ok)]);
    lm.start().await.unwrap();
    let ticket = lm.guard().enter().unwrap();
    let lm2 = Arc::clone(&lm);
    let stop = tokio::spawn(async move { lm2.stop().await });
    tokio::time::timeout(DEADLINE, async {
        while lm.state() != NodeState::Stopping {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    assert_eq!(lm.guard().enter().unwrap_err(), Stopping::NodeStopping);
    assert!(
        entries(&journal, "stop").is_empty(),
        "components wait for the operation inside"
    );
    drop(ticket);
    let report = tokio::time::timeout(DEADLINE, stop).await.unwrap().unwrap();
    assert!(report.is_clean());
    assert_eq!(entries(&journal, "stop"), ["a"]);
}

#[tokio::test]
async fn stop_that_overruns_is_reported_and_the_rest_still_stop() {
    let journal = Journal::default();
    let lm = manager(Duration::from_millis(200));
    register(
        &lm,
        &journal,
        &[
            ("a", Behaviour::Ok),
            ("slow", Behaviour::HangStop),
            ("c", Behaviour::Ok),
        ],
    );
    lm.start().await.unwrap();
    let report = tokio::time::timeout(DEADLINE, lm.stop()).await.unwrap();
    assert_eq!(report.stopped, ["c", "slow", "a"]);
    assert_eq!(report.failures.len(), 1);
    assert_eq!(report.failures[0].component, "slow");
    assert_eq!(
        report.failures[0].kind,
        StopFailureKind::TimedOut(Duration::from_millis(200))
    );
    assert!(report.failures[0].to_string().contains("slow did not stop"));
}

#[tokio::test]
async fn a_dying_task_stops_the_node_with_a_fault() {
    let journal = Journal::default();
    let lm = manager(Duration::from_secs(5));
    register(
        &lm,
        &journal,
        &[
            ("a", Behaviour::Ok),
            ("net", Behaviour::DieAtRuntime),
            ("c", Behaviour::Ok),
        ],
    );
    lm.start().await.unwrap();
    let outcome = tokio::time::timeout(DEADLINE, lm.run(std::future::pending()))
        .await
        .unwrap();
    let fault = outcome.fault.as_ref().expect("a fault stops the node");
    assert_eq!(fault.component, "net");
    assert!(fault.reason.contains("lost its socket"));
    assert_eq!(outcome.exit_code(), 1);
    assert_eq!(entries(&journal, "stop"), ["c", "net", "a"]);
    assert_eq!(lm.state(), NodeState::Stopped);
}

#[tokio::test]
async fn shutdown_signal_stops_cleanly_with_exit_zero() {
    let journal = Journal::default();
    let lm = manager(Duration::from_secs(5));
    register(&lm, &journal, &[("a", Behaviour::Ok)]);
    lm.start().await.unwrap();
    let outcome = lm.run(async {}).await;
    assert!(outcome.fault.is_none());
    assert_eq!(outcome.exit_code(), 0);
    assert_eq!(entries(&journal, "stop"), ["a"]);
}

#[tokio::test]
async fn components_are_registered_with_their_run_level() {
    let journal = Journal::default();
    let lm = manager(Duration::from_secs(5));
    let v = TestComponent::new("vault", Behaviour::Ok, &journal);
    let m = TestComponent::new("metastorage", Behaviour::Ok, &journal);
    let t = TestComponent::new("table", Behaviour::Ok, &journal);
    lm.register(RunLevel::Zombie, v).unwrap();
    lm.register(RunLevel::Metastorage, m).unwrap();
    lm.register(RunLevel::Ready, t).unwrap();
    assert_eq!(lm.components_at(RunLevel::Zombie), ["vault"]);
    assert_eq!(lm.components_at(RunLevel::Metastorage), ["metastorage"]);
    assert_eq!(lm.components_at(RunLevel::Ready), ["table"]);
    assert!(RunLevel::Zombie < RunLevel::Metastorage && RunLevel::Metastorage < RunLevel::Ready);
    lm.start().await.unwrap();
    let late = TestComponent::new("late", Behaviour::Ok, &journal);
    assert!(
        lm.register(RunLevel::Ready, late).is_err(),
        "no registration after start"
    );
    lm.stop().await;
}

#[tokio::test]
async fn run_levels_start_in_steps_and_move_down_and_up() {
    let journal = Journal::default();
    let lm = manager(Duration::from_secs(5));
    for (name, level) in [
        ("vault", RunLevel::Zombie),
        ("network", RunLevel::Zombie),
        ("metastorage", RunLevel::Metastorage),
        ("table", RunLevel::Ready),
    ] {
        lm.register(level, TestComponent::new(name, Behaviour::Ok, &journal))
            .unwrap();
    }
    assert_eq!(lm.run_level(), None);
    lm.start_up_to(RunLevel::Zombie, NodeState::Zombie)
        .await
        .unwrap();
    assert_eq!(lm.state(), NodeState::Zombie);
    assert_eq!(lm.run_level(), Some(RunLevel::Zombie));
    assert_eq!(entries(&journal, "start"), ["vault", "network"]);

    lm.start_up_to(RunLevel::Ready, NodeState::Started)
        .await
        .unwrap();
    assert_eq!(lm.state(), NodeState::Started);
    assert_eq!(lm.run_level(), Some(RunLevel::Ready));
    assert_eq!(
        entries(&journal, "start"),
        ["vault", "network", "metastorage", "table"],
        "each started once"
    );

    let report = lm
        .stop_above(RunLevel::Zombie, NodeState::Zombie)
        .await
        .unwrap();
    assert_eq!(report.stopped, ["table", "metastorage"]);
    assert_eq!(lm.run_level(), Some(RunLevel::Zombie));

    lm.start_up_to(RunLevel::Ready, NodeState::Started)
        .await
        .unwrap();
    assert_eq!(
        entries(&journal, "start"),
        [
            "vault",
            "network",
            "metastorage",
            "table",
            "metastorage",
            "table"
        ]
    );

    let report = lm.stop().await;
    assert_eq!(report.stopped, ["table", "metastorage", "network", "vault"]);
}
