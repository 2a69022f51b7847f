//! Serving a node: what `tillmesh run` does once the store is open.

use std::future::Future;

use tokio::net::TcpListener;

use crate::api;
use crate::repo::Repo;

/// Serves the local API on `listener` until `shutdown` resolves; in-flight requests finish.
pub async fn run(
    repo: Repo,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, api::router(repo))
        .with_graceful_shutdown(shutdown)
        .await
}
