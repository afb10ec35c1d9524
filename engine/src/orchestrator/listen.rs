//! Turns Postgres notifications (a job queued, a cancel requested) into wake-ups of
//! the dispatch loop.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::store::{CANCEL_CHANNEL, QUEUED_CHANNEL, Store};

pub(super) async fn run(store: Store, wake: Arc<Notify>, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    // Reconnects with backoff whenever the listening connection is lost.
    loop {
        let listener = async {
            let mut listener = PgListener::connect_with(store.pool()).await?;
            listener.listen_all([QUEUED_CHANNEL, CANCEL_CHANNEL]).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = tokio::select! {
            _ = shutdown.cancelled() => return,
            l = listener => match l {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for new jobs; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            },
        };
        backoff = Duration::from_millis(100);
        // Notifications sent while we were not listening are lost: look once.
        wake.notify_one();
        loop {
            tokio::select! {
                // Shutdown: stop listening.
                _ = shutdown.cancelled() => return,
                // A job was queued or a cancel requested: wake the dispatcher.
                n = listener.recv() => match n {
                    Ok(_) => wake.notify_one(),
                    Err(e) => {
                        tracing::warn!(error = %e, "lost the notification connection");
                        break;
                    }
                },
            }
        }
    }
}
