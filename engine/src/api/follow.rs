//! Live logs: `GET /v1/jobs/{id}/logs?follow=true` as Server-Sent Events.
//!
//! Each stored line is one event whose id is the line's id, so a client that
//! reconnects with `Last-Event-ID` resumes after the last line it saw, with no gap
//! and no repeat. The stream ends with an `end` event once the job has ended and
//! every line was sent; when the server shuts down, with a `shutdown` event instead
//! (the job goes on; a client follows again, from another server or this one
//! restarted). New lines are read as soon as a report commits (the
//! committer notifies the job's id): a follower touches the database only when its
//! job changed, or every [`FALLBACK_POLL`] in case a notification was missed (the
//! listening connection was re-made), so that many followers cost little. Each holds
//! a [`FollowerSlot`] while it is open: their number is capped.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::clients::FollowerSlot;
use crate::job::JobId;
use crate::store::{CANCEL_CHANNEL, CHANGED_CHANNEL, LogRow, QUEUED_CHANNEL, Store, TOKENS_CHANNEL};

/// Lines read per query.
const PAGE: i64 = 1000;
/// The event that ends every stream when the server shuts down.
pub const SHUTDOWN_EVENT: &str = "shutdown";
/// How long a follower waits for news before looking anyway.
const FALLBACK_POLL: Duration = Duration::from_secs(30);

/// Jobs whose reports just committed, as the database announces them, told to
/// the followers of each job only: a change wakes the streams of its own job, not
/// every stream open.
#[derive(Debug, Clone)]
pub struct JobChanges {
    followed: Arc<Mutex<HashMap<JobId, watch::Sender<u64>>>>,
    /// Bumped at every change of any job (a submission, a report, a cancel request):
    /// the dashboard's lists look again.
    any: watch::Sender<u64>,
    /// Bumped at every token revocation: each stream then checks its own token.
    revocations: watch::Sender<u64>,
    /// The server's shutdown: every stream ends at once, saying so, so that a
    /// graceful shutdown never waits on a job that has not finished.
    shutdown: CancellationToken,
}

/// A follower's view of its job's changes; leaves the table with the job's last follower.
struct Subscription {
    followed: Arc<Mutex<HashMap<JobId, watch::Sender<u64>>>>,
    job: JobId,
    changes: watch::Receiver<u64>,
    revocations: watch::Receiver<u64>,
    shutdown: CancellationToken,
}

impl JobChanges {
    /// Listens until `shutdown`; a revoked token also leaves `tokens`.
    pub fn start(store: Store, shutdown: CancellationToken, tokens: Arc<super::auth::TokenCache>) -> Self {
        let followed: Arc<Mutex<HashMap<JobId, watch::Sender<u64>>>> = Arc::default();
        let revocations = watch::channel(0).0;
        let any = watch::channel(0).0;
        let (table, revoked, stop, anything) = (followed.clone(), revocations.clone(), shutdown.clone(), any.clone());
        tokio::spawn(async move {
            let on_change = move |channel: &str, payload: &str| {
                if channel == TOKENS_CHANNEL {
                    if let Ok(id) = payload.parse() {
                        tokens.forget(id);
                    }
                    revoked.send_modify(|n| *n += 1);
                    return;
                }
                anything.send_modify(|n| *n += 1);
                if let Ok(id) = payload.parse::<JobId>()
                    && let Some(changes) = lock(&table).get(&id)
                {
                    changes.send_modify(|n| *n += 1);
                }
            };
            let channels = [CHANGED_CHANNEL, TOKENS_CHANNEL, QUEUED_CHANNEL, CANCEL_CHANNEL];
            crate::store::listen(store, &channels, on_change, stop).await
        });
        JobChanges { followed, any, revocations, shutdown }
    }

    /// Bumped at every change of any job; and the server's shutdown.
    pub(crate) fn any(&self) -> (watch::Receiver<u64>, CancellationToken) {
        (self.any.subscribe(), self.shutdown.clone())
    }

    fn subscribe(&self, job: JobId) -> Subscription {
        let changes = lock(&self.followed).entry(job).or_insert_with(|| watch::channel(0).0).subscribe();
        Subscription {
            followed: self.followed.clone(),
            job,
            changes,
            revocations: self.revocations.subscribe(),
            shutdown: self.shutdown.clone(),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut followed = lock(&self.followed);
        // This receiver is still counted while it drops: it was the last one.
        if followed.get(&self.job).is_some_and(|changes| changes.receiver_count() <= 1) {
            followed.remove(&self.job);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

struct Follower {
    store: Store,
    job: JobId,
    after: i64,
    changes: Subscription,
    pending: VecDeque<LogRow>,
    ended: bool,
    /// The token that opened the stream: the stream ends when it stops working.
    token: (uuid::Uuid, Option<chrono::DateTime<chrono::Utc>>),
    /// How a line becomes an event (JSON for the API, HTML for the dashboard).
    render: fn(&LogRow) -> Event,
    _slot: FollowerSlot,
}

/// The event stream of a job's lines after line `after`.
pub fn stream(
    store: Store,
    changes: JobChanges,
    job: JobId,
    after: i64,
    slot: FollowerSlot,
    token: (uuid::Uuid, Option<chrono::DateTime<chrono::Utc>>),
    render: fn(&LogRow) -> Event,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let changes = changes.subscribe(job);
    let follower =
        Follower { store, job, after, changes, pending: VecDeque::new(), ended: false, token, render, _slot: slot };
    let events = futures_util::stream::unfold(follower, |mut f| async move {
        let event = f.next_event().await?;
        Some((Ok(event), f))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

impl Follower {
    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(line) = self.pending.pop_front() {
                return Some((self.render)(&line));
            }
            if self.ended {
                return None;
            }
            if self.changes.shutdown.is_cancelled() {
                self.ended = true;
                let why = "the server is shutting down; the job goes on: follow again (Last-Event-ID resumes)";
                return Some(Event::default().event(SHUTDOWN_EVENT).data(why));
            }
            // A token revoked or expired since the stream opened closes it.
            let expired = self.token.1.is_some_and(|at| at <= chrono::Utc::now());
            if expired || !self.store.token_works(self.token.0).await.unwrap_or(true) {
                self.ended = true;
                return Some(Event::default().event("error").data("the token of this stream was revoked or expired"));
            }
            // The state first: a job seen ended has all its lines stored already.
            let state = match self.store.job(self.job).await {
                Ok(job) => job.state,
                Err(e) => {
                    tracing::warn!(job.id = %self.job, error = %e, "log follower cannot read the job");
                    self.ended = true;
                    return Some(Event::default().event("error").data("the job cannot be read"));
                }
            };
            match self.store.logs(self.job, self.after, PAGE).await {
                Ok(lines) if !lines.is_empty() => {
                    self.after = lines.last().map_or(self.after, |l| l.id);
                    self.pending.extend(lines);
                    continue;
                }
                Ok(_) if state.is_terminal() => {
                    self.ended = true;
                    return Some(Event::default().event("end").data(json!({ "state": state }).to_string()));
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(job.id = %self.job, error = %e, "log follower cannot read lines"),
            }
            self.wait_for_news().await;
        }
    }

    /// Until this job's next committed report (or one since the last look), or the
    /// fallback poll.
    async fn wait_for_news(&mut self) {
        let until_expiry = self.token.1.and_then(|at| (at - chrono::Utc::now()).to_std().ok()).unwrap_or(FALLBACK_POLL);
        let Subscription { changes, revocations, shutdown, .. } = &mut self.changes;
        let news = async {
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { std::future::pending::<()>().await },
                revoked = revocations.changed() => if revoked.is_err() { std::future::pending::<()>().await },
                _ = shutdown.cancelled() => {}
            }
        };
        let _ = tokio::time::timeout(until_expiry.min(FALLBACK_POLL), news).await;
    }
}

/// A line as the API sends it: its JSON, with its id as the event's.
pub fn line_event(line: &LogRow) -> Event {
    let data = serde_json::to_string(line).unwrap_or_default();
    Event::default().id(line.id.to_string()).event("line").data(data)
}
