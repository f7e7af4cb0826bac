//! Helpers shared by the vault integration tests.
use std::{future::Future, time::Duration};

use lifecycle::{Component, FaultReporter, StartContext};
use vault::VaultManager;

/// Every wait in these tests is bounded by this.
pub(crate) const DEADLINE: Duration = Duration::from_secs(30);

pub(crate) fn ctx() -> StartContext {
    StartContext {
        faults: FaultReporter::detached(),
    }
}

/// Run `fut` with the test deadline.
pub(crate) async fn bounded<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .expect("operation did not finish before the test deadline")
}

/// Start `vault`, returning its typed error on failure.
pub(crate) async fn start(vault: &VaultManager) -> Result<(), vault::Error> {
    bounded(vault.start(&ctx())).await.map_err(into_vault_error)
}

/// Stop `vault`, which must succeed.
pub(crate) async fn stop(vault: &VaultManager) {
    bounded(vault.stop()).await.expect("vault stops cleanly");
}

pub(crate) fn into_vault_error(e: lifecycle::BoxError) -> vault::Error {
    match e.downcast::<vault::Error>() {
        Ok(e) => *e,
        Err(other) => panic!("not a vault error: {other}"),
    }
}
