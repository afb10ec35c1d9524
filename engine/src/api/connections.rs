//! The HTTP connections open at once, and which of them may make room for a new
//! one. At the cap (`SLIPWAY_HTTP_MAX_CONNECTIONS`) a new connection closes the
//! oldest *idle* one (no request being answered: a client that connected and sent
//! nothing, or a keep-alive between requests), so that a crowd of idle connections
//! cannot keep out those who make requests; when every connection is busy, the new
//! one is closed at once, never queued. A request counts as busy until its response
//! body has been sent (a live-log stream stays busy while it is open).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::body::Bytes;
use tokio_util::sync::CancellationToken;

/// The open connections, oldest first.
#[derive(Debug)]
pub(super) struct Connections {
    max: usize,
    table: Mutex<(u64, BTreeMap<u64, Connection>)>,
}

#[derive(Debug)]
struct Connection {
    requests: Arc<AtomicUsize>,
    evict: CancellationToken,
}

/// One admitted connection: its requests in flight, and the token that asks it to
/// close. Leaves the table when dropped.
#[derive(Debug)]
pub(super) struct Admitted {
    connections: Arc<Connections>,
    id: u64,
    pub requests: Arc<AtomicUsize>,
    pub evict: CancellationToken,
}

impl Connections {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Connections { max, table: Mutex::new((0, BTreeMap::new())) })
    }

    /// Admits a new connection, closing the oldest idle one when at the cap;
    /// `None` when every open connection is busy.
    pub fn admit(self: &Arc<Self>) -> Option<Admitted> {
        let mut guard = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let (next, open) = &mut *guard;
        if open.len() >= self.max {
            let idle = open.iter().find(|(_, c)| c.requests.load(Ordering::Acquire) == 0).map(|(id, _)| *id)?;
            if let Some(evicted) = open.remove(&idle) {
                evicted.evict.cancel();
            }
        }
        *next += 1;
        let id = *next;
        let connection = Connection { requests: Arc::new(AtomicUsize::new(0)), evict: CancellationToken::new() };
        let admitted = Admitted {
            connections: self.clone(),
            id,
            requests: connection.requests.clone(),
            evict: connection.evict.clone(),
        };
        open.insert(id, connection);
        Some(admitted)
    }

    #[cfg(test)]
    fn open(&self) -> usize {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).1.len()
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.connections.table.lock().unwrap_or_else(|p| p.into_inner()).1.remove(&self.id);
    }
}

/// A response body that counts its request busy until it is sent or dropped.
pub(super) struct Counted {
    inner: Body,
    requests: Arc<AtomicUsize>,
}

impl Counted {
    /// Counts a request in: busy from now until the returned body is done.
    pub fn begin(requests: &Arc<AtomicUsize>) -> Arc<AtomicUsize> {
        requests.fetch_add(1, Ordering::AcqRel);
        requests.clone()
    }

    pub fn wrap(inner: Body, requests: Arc<AtomicUsize>) -> Body {
        Body::new(Counted { inner, requests })
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.requests.fetch_sub(1, Ordering::AcqRel);
    }
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_cap_the_oldest_idle_connection_makes_room_and_busy_ones_never_do() {
        let connections = Connections::new(2);
        let first = connections.admit().unwrap();
        let second = connections.admit().unwrap();
        let busy = Counted::begin(&second.requests);
        let third = connections.admit().expect("the idle first connection makes room");
        assert!(first.evict.is_cancelled() && !second.evict.is_cancelled());
        assert_eq!(connections.open(), 2);
        let _also_busy = Counted::begin(&third.requests);
        assert!(connections.admit().is_none(), "every connection is busy: the new one is refused");
        drop(Counted { inner: Body::empty(), requests: busy });
        assert!(connections.admit().is_some(), "a sent response makes its connection idle again");
        drop(first);
    }
}
