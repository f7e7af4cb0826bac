//! A recording test component.
use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use lifecycle::{spawn_supervised, BoxError, Component, StartContext};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::task::TaskTracker;

/// What a test component does when asked to start or stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Behaviour {
    Ok,
    FailStart,
    HangStart,
    HangStop,
    FailStop,
    DieAtRuntime,
}

pub(crate) type Journal = Arc<Mutex<Vec<String>>>;

pub(crate) struct TestComponent {
    name: String,
    behaviour: Behaviour,
    journal: Journal,
    pub(crate) start_entered: Arc<Notify>,
    tasks: TaskTracker,
}

impl TestComponent {
    pub(crate) fn new(name: &str, behaviour: Behaviour, journal: &Journal) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_owned(),
            behaviour,
            journal: Arc::clone(journal),
            start_entered: Arc::new(Notify::new()),
            tasks: TaskTracker::new(),
        })
    }

    fn log(&self, what: &str) {
        self.journal.lock().push(format!("{what} {}", self.name));
    }
}

#[async_trait]
impl Component for TestComponent {
    fn name(&self) -> &str {
        &self.name
    }

    async fn start(&self, ctx: &StartContext) -> Result<(), BoxError> {
        self.log("start");
        self.start_entered.notify_one();
        match self.behaviour {
            Behaviour::FailStart => Err(format!("disk of {} is on fire", self.name).into()),
            Behaviour::HangStart => {
                std::future::pending::<()>().await;
                Ok(())
            }
            Behaviour::DieAtRuntime => {
                spawn_supervised(&self.tasks, &ctx.faults, &self.name, "worker", async {
                    Err::<(), BoxError>("worker lost its socket".into())
                });
                Ok(())
            }
            _ => Ok(()),
        }
    }

    async fn before_stop(&self) {
        self.log("before_stop");
    }

    async fn stop(&self) -> Result<(), BoxError> {
        self.log("stop");
        self.tasks.close();
        self.tasks.wait().await;
        match self.behaviour {
            Behaviour::HangStop => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(())
            }
            Behaviour::FailStop => Err("flush failed".into()),
            _ => Ok(()),
        }
    }
}

pub(crate) fn entries(journal: &Journal, prefix: &str) -> Vec<String> {
    journal
        .lock()
        .iter()
        .filter(|e| e.starts_with(&format!("{prefix} ")))
        .map(|e| e[prefix.len() + 1..].to_owned())
        .collect()
}
