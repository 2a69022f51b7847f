//! Serving a node: what `tillmesh run` does once the store is open.

use std::future::Future;

use tokio::net::TcpListener;

use crate::api;
use crate::net::Network;
use crate::repo::Repo;

/// Serves the local API on `listener` until `shutdown` resolves; in-flight requests finish.
/// With a network, its status shows in `GET /v1/status`.
pub async fn run(
    repo: Repo,
    listener: TcpListener,
    network: Option<Network>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, api::router(repo, network))
        .with_graceful_shutdown(shutdown)
        .await
}
