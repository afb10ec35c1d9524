//! Listening to Postgres notifications, with reconnects: the orchestrator wakes on
//! them (a job queued, a cancel requested), live log followers read on (a report
//! committed).

use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use super::Store;

/// Calls `on_notification(channel, payload)` for each notification on `channels`
/// until `shutdown`. After every (re)connection it is called once with an empty
/// channel, since notifications sent while nobody listened are lost.
pub async fn listen(
    store: Store,
    channels: &[&str],
    on_notification: impl Fn(&str, &str),
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    // Reconnects with backoff whenever the listening connection is lost.
    loop {
        let listener = async {
            let mut listener = PgListener::connect_with(store.pool()).await?;
            listener.listen_all(channels.iter().copied()).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = tokio::select! {
            _ = shutdown.cancelled() => return,
            l = listener => match l {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for notifications; retrying");
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
        on_notification("", "");
        loop {
            tokio::select! {
                // Shutdown: stop listening.
                _ = shutdown.cancelled() => return,
                // A notification: pass it on.
                n = listener.recv() => match n {
                    Ok(n) => on_notification(n.channel(), n.payload()),
                    Err(e) => {
                        tracing::warn!(error = %e, "lost the notification connection");
                        break;
                    }
                },
            }
        }
    }
}
