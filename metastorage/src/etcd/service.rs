//! The `Maintenance/Status` and `Cluster/MemberList` services, the answer to every RPC that
//! is not served, and the gRPC server itself (bind, serve, graceful stop).
use std::{net::SocketAddr, sync::Arc, time::Duration};

use lifecycle::{spawn_supervised, BoxError, FaultReporter};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{
    service::Routes,
    transport::{server::TcpIncoming, Server},
    Request, Response, Status,
};

use super::{
    kv::KvService,
    proto::etcdserverpb::{
        cluster_server::{Cluster, ClusterServer},
        kv_server::KvServer,
        maintenance_server::{Maintenance, MaintenanceServer},
        watch_server::WatchServer,
        Member, MemberListRequest, MemberListResponse, StatusRequest, StatusResponse,
    },
    status, to_i64,
    watch::WatchService,
    Backend, MAX_REQUEST_BYTES,
};
use crate::error::{Error, Result};

/// The etcd API level the endpoint implements, reported by `Status`.
const API_VERSION: &str = "3.5.0";
/// How long a stop waits for open requests and streams before closing connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// RPCs of the served services that are not implemented: routed to [`unsupported`] so the
/// answer names them (tonic's own answer has no message).
const UNSUPPORTED: &[&str] = &[
    "/etcdserverpb.KV/RangeStream",
    "/etcdserverpb.Cluster/MemberAdd",
    "/etcdserverpb.Cluster/MemberRemove",
    "/etcdserverpb.Cluster/MemberUpdate",
    "/etcdserverpb.Cluster/MemberPromote",
    "/etcdserverpb.Maintenance/Alarm",
    "/etcdserverpb.Maintenance/Defragment",
    "/etcdserverpb.Maintenance/Hash",
    "/etcdserverpb.Maintenance/HashKV",
    "/etcdserverpb.Maintenance/Snapshot",
    "/etcdserverpb.Maintenance/MoveLeader",
    "/etcdserverpb.Maintenance/Downgrade",
];

/// What an unsupported method answers: `UNIMPLEMENTED` naming it.
pub(crate) fn unsupported_message(path: &str) -> String {
    let method = path.trim_start_matches('/');
    let what = if method.starts_with("etcdserverpb.Lease/") {
        "leases are not supported by this MetaStorage"
    } else if method.starts_with("etcdserverpb.Auth/") {
        "authentication is not supported by this MetaStorage"
    } else if method.starts_with("etcdserverpb.Cluster/") {
        "membership changes are not supported by this MetaStorage: its voters are chosen at cluster init"
    } else {
        "not supported by this MetaStorage"
    };
    format!("{method}: {what}")
}

async fn unsupported(uri: axum::http::Uri) -> axum::response::Response {
    Status::unimplemented(unsupported_message(uri.path())).into_http()
}

/// The bytes of the files under `dir` (0 for what cannot be read).
fn dir_size(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => pending.push(entry.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// `Maintenance` and `Cluster`.
pub(crate) struct AdminService(pub(crate) Arc<Backend>);

#[tonic::async_trait]
impl Maintenance for AdminService {
    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> std::result::Result<Response<StatusResponse>, Status> {
        let (_ticket, attached) = self.0.enter()?;
        let metrics = attached.client.group().metrics();
        let db_size = match attached.data_dir.clone() {
            Some(dir) => tokio::task::spawn_blocking(move || dir_size(&dir))
                .await
                .unwrap_or(0),
            None => 0,
        };
        Ok(Response::new(StatusResponse {
            header: Some(attached.header(attached.storage.revision())),
            version: API_VERSION.to_owned(),
            db_size: to_i64(db_size),
            leader: metrics.leader.as_deref().map_or(0, raft::node_id),
            raft_index: metrics.last_log_index.unwrap_or(0),
            raft_term: metrics.term,
            raft_applied_index: metrics.last_applied.map_or(0, |p| p.index),
            errors: Vec::new(),
            db_size_in_use: 0,
            is_learner: metrics.role == raft::Role::Learner,
        }))
    }
}

#[tonic::async_trait]
impl Cluster for AdminService {
    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> std::result::Result<Response<MemberListResponse>, Status> {
        let (_ticket, attached) = self.0.enter()?;
        if request.get_ref().linearizable {
            attached.client.barrier().await.map_err(status)?;
        }
        let metrics = attached.client.group().metrics();
        let topology = attached.network.topology().members();
        let own = self.0.address().map(|a| format!("http://{a}"));
        let member = |name: &String, learner: bool| Member {
            id: raft::node_id(name),
            name: name.clone(),
            peer_ur_ls: topology
                .iter()
                .filter(|m| &m.name == name)
                .map(|m| format!("http://{}", m.address))
                .collect(),
            client_ur_ls: if *name == attached.local {
                own.iter().cloned().collect()
            } else {
                Vec::new()
            },
            is_learner: learner,
        };
        let members = metrics
            .voters
            .iter()
            .map(|n| member(n, false))
            .chain(metrics.learners.iter().map(|n| member(n, true)))
            .collect();
        Ok(Response::new(MemberListResponse {
            header: Some(attached.header(attached.storage.revision())),
            members,
        }))
    }
}

/// Binds `listen` and serves every service on `tasks` until `cancel`; returns the bound
/// address.
pub(crate) async fn serve(
    backend: Arc<Backend>,
    listen: &str,
    tasks: &TaskTracker,
    faults: &FaultReporter,
    cancel: CancellationToken,
) -> Result<SocketAddr> {
    let address: SocketAddr = listen.parse().map_err(|e| {
        Error::Config(format!(
            "metastorage.etcd_listen {listen} is not a socket address: {e}"
        ))
    })?;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| Error::Config(format!("cannot bind the etcd endpoint to {address}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::Config(format!("etcd endpoint address of {address}: {e}")))?;
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let admin = Arc::new(AdminService(Arc::clone(&backend)));
    let routes = Routes::new(
        KvServer::new(KvService(Arc::clone(&backend))).max_decoding_message_size(MAX_REQUEST_BYTES),
    )
    .add_service(
        WatchServer::new(WatchService(Arc::clone(&backend)))
            .max_decoding_message_size(MAX_REQUEST_BYTES),
    )
    .add_service(ClusterServer::from_arc(Arc::clone(&admin)))
    .add_service(MaintenanceServer::from_arc(admin));
    let mut router = routes.into_axum_router();
    for path in UNSUPPORTED {
        router = router.route(path, axum::routing::any(unsupported));
    }
    let router = router.fallback(unsupported);
    let mut builder = Server::builder();
    let server = builder.add_routes(Routes::from(router));
    spawn_supervised(tasks, faults, "metastorage", "etcd endpoint", async move {
        let shutdown = cancel.clone();
        let serve = server.serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned());
        tokio::select! {
            r = serve => r.map_err(BoxError::from),
            () = async {
                cancel.cancelled().await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => {
                tracing::info!(address = %bound, "etcd endpoint closed connections still open after the grace period");
                Ok(())
            }
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_methods_are_named() {
        let m = unsupported_message("/etcdserverpb.Lease/LeaseGrant");
        assert_eq!(
            m,
            "etcdserverpb.Lease/LeaseGrant: leases are not supported by this MetaStorage"
        );
        assert!(unsupported_message("/etcdserverpb.Auth/Authenticate").contains("authentication"));
        assert!(unsupported_message("/x.Y/Z").starts_with("x.Y/Z: "));
    }
}
