//! Serving the API over HTTP/1.1 within bounds a stranger cannot stretch: at most
//! `max_connections` connections at once (at the cap a new one takes the place of
//! the oldest idle one, or is closed at once when all are busy: see
//! [`super::connections`]), and a connection that sends no complete request head within
//! `header_timeout` (a slow or idle client, a keep-alive left open) is closed, so
//! that descriptors stay free for those who use them. Bodies have their own limit
//! and deadline where they are read ([`super::jobs`]). On shutdown no connection is
//! taken and those open finish what they are answering.

use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::clients::{ClientAddr, ClientLimits, Clients};
use super::connections::{Connections, Counted};
use super::{AppState, router};

/// How much of itself the HTTP server gives to clients.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Connections open at once (`SLIPWAY_HTTP_MAX_CONNECTIONS`).
    pub max_connections: usize,
    /// How long a connection may take to send a request's head, or stay idle
    /// between requests (`SLIPWAY_HTTP_HEADER_TIMEOUT`).
    pub header_timeout: Duration,
    /// What one client may take: request rate, live-log streams.
    pub clients: ClientLimits,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits { max_connections: 1024, header_timeout: Duration::from_secs(10), clients: ClientLimits::default() }
    }
}

/// Serves until `shutdown`, then finishes the requests under way.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: CancellationToken,
    limits: HttpLimits,
) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, max_connections = limits.max_connections, "http api listening");
    let state = AppState { clients: Clients::new(limits.clients), ..state };
    let service = TowerToHyperService::new(router(state));
    let open = Connections::new(limits.max_connections);
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, say: wait a moment rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        while connections.try_join_next().is_some() {}
        let Some(admitted) = open.admit() else {
            drop(stream);
            continue;
        };
        let (service, shutdown) = (service.clone(), shutdown.clone());
        let requests = admitted.requests.clone();
        // Every request carries the address of its connection, for per-client
        // limits, and counts its connection busy until its response is sent.
        let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(ClientAddr(peer.ip()));
            let busy = Counted::begin(&requests);
            let answer = hyper::service::Service::call(&service, request);
            async move { answer.await.map(|response| response.map(|body| Counted::wrap(body, busy))) }
        });
        connections.spawn(async move {
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
                // Made room for a newer connection while idle.
                _ = admitted.evict.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            drop(admitted);
        });
    }
    // No new connection waits in the backlog for an answer that will not come.
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}
