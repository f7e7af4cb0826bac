//! The management REST API (axum), run as a component right after configuration so it answers
//! from the zombie state on. Handlers only call `IgniteImpl`.
mod handlers;
mod problem;
mod tables;

use std::{net::SocketAddr, sync::Arc};

use async_trait::async_trait;
use configuration::ConfigurationManager;
use lifecycle::{spawn_supervised, BoxError, Component, StartContext};
use network::NetworkManager;
use parking_lot::Mutex;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub(crate) use self::problem::Problem;
use crate::{config::RestConfiguration, ignite::IgniteImpl};

/// Serves REST for one node.
pub(crate) struct RestComponent {
    configuration: Arc<ConfigurationManager>,
    network: Arc<NetworkManager>,
    ignite: Mutex<Option<IgniteImpl>>,
    address: Mutex<Option<SocketAddr>>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl RestComponent {
    pub(crate) fn new(
        configuration: Arc<ConfigurationManager>,
        network: Arc<NetworkManager>,
    ) -> Self {
        Self {
            configuration,
            network,
            ignite: Mutex::new(None),
            address: Mutex::new(None),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }

    /// Give the handlers their facade; the reference is dropped on stop (breaking the cycle
    /// facade -> lifecycle -> this component -> facade).
    pub(crate) fn attach(&self, ignite: IgniteImpl) {
        *self.ignite.lock() = Some(ignite);
    }

    pub(crate) fn local_address(&self) -> Option<SocketAddr> {
        *self.address.lock()
    }
}

#[async_trait]
impl Component for RestComponent {
    fn name(&self) -> &str {
        "rest"
    }

    async fn start(&self, ctx: &StartContext) -> Result<(), BoxError> {
        let cfg: RestConfiguration = self.configuration.root()?;
        let listener = tokio::net::TcpListener::bind(&cfg.listen)
            .await
            .map_err(|e| crate::Error::RestBind {
                address: cfg.listen.clone(),
                source: e,
            })?;
        let address = listener.local_addr()?;
        *self.address.lock() = Some(address);
        self.network
            .set_metadata("rest", format!("http://{address}"));
        let ignite = self
            .ignite
            .lock()
            .clone()
            .ok_or("rest started before the node facade was attached")?;
        let app = handlers::router(ignite);
        let cancel = self.cancel.clone();
        spawn_supervised(
            &self.tasks,
            &ctx.faults,
            "rest",
            "http-server",
            async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(cancel.cancelled_owned())
                    .await?;
                Ok(())
            },
        );
        tracing::info!(address = %address, "rest api listening");
        Ok(())
    }

    async fn stop(&self) -> Result<(), BoxError> {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        *self.ignite.lock() = None;
        Ok(())
    }
}
