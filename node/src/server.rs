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
    run_with(repo, listener, network, None, Vec::new(), shutdown).await
}

/// As [`run`], with more routes beside the node's own (the bridge's `GET /v1/bridge`).
pub async fn run_with(
    repo: Repo,
    listener: TcpListener,
    network: Option<Network>,
    extra: Option<axum::Router>,
    allow_origins: Vec<String>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Every route, the bridge's included, behind the node's token (see `api::auth`).
    let token = api::auth::ensure_token(repo.dir())?;
    let guard = api::auth::Guard::new(token, listener.local_addr()?, allow_origins);
    let mut app = api::router(repo, network);
    if let Some(extra) = extra {
        app = app.merge(extra);
    }
    let app = app.layer(axum::middleware::from_fn_with_state(
        guard,
        api::auth::guard,
    ));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
