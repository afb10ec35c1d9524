//! Live logs: `GET /v1/jobs/{id}/logs?follow=true` as Server-Sent Events.
//!
//! Each stored line is one event whose id is the line's id, so a client that
//! reconnects with `Last-Event-ID` resumes after the last line it saw, with no gap
//! and no repeat. The stream ends with an `end` event once the job has ended and
//! every line was sent. New lines are read as soon as a report commits (the
//! committer notifies the job's id): a follower touches the database only when its
//! job changed, or every [`FALLBACK_POLL`] in case a notification was missed (the
//! listening connection was re-made), so that many followers cost little. Each holds
//! a [`FollowerSlot`] while it is open: their number is capped.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde_json::json;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::clients::FollowerSlot;
use crate::job::JobId;
use crate::store::{CHANGED_CHANNEL, LogRow, Store};

/// Lines read per query.
const PAGE: i64 = 1000;
/// How long a follower waits for news before looking anyway.
const FALLBACK_POLL: Duration = Duration::from_secs(30);

/// Job ids whose reports just committed, as the database announces them.
#[derive(Debug, Clone)]
pub struct JobChanges {
    sender: broadcast::Sender<JobId>,
}

impl JobChanges {
    /// Listens until `shutdown`.
    pub fn start(store: Store, shutdown: CancellationToken) -> Self {
        let (sender, _) = broadcast::channel(4096);
        let announce = sender.clone();
        tokio::spawn(async move {
            let on_change = move |_: &str, payload: &str| {
                if let Ok(id) = payload.parse() {
                    let _ = announce.send(id);
                }
            };
            crate::store::listen(store, &[CHANGED_CHANNEL], on_change, shutdown).await
        });
        JobChanges { sender }
    }
}

struct Follower {
    store: Store,
    job: JobId,
    after: i64,
    changes: broadcast::Receiver<JobId>,
    pending: VecDeque<LogRow>,
    ended: bool,
    _slot: FollowerSlot,
}

/// The event stream of a job's lines after line `after`.
pub fn stream(
    store: Store,
    changes: JobChanges,
    job: JobId,
    after: i64,
    slot: FollowerSlot,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let changes = changes.sender.subscribe();
    let follower = Follower { store, job, after, changes, pending: VecDeque::new(), ended: false, _slot: slot };
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
                return Some(line_event(&line));
            }
            if self.ended {
                return None;
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

    /// Until this job's next committed report, or the fallback poll.
    async fn wait_for_news(&mut self) {
        let job = self.job;
        let news = async {
            loop {
                match self.changes.recv().await {
                    Ok(id) if id == job => return,
                    Ok(_) => {}
                    // Missed some: look now.
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
                }
            }
        };
        let _ = tokio::time::timeout(FALLBACK_POLL, news).await;
    }
}

fn line_event(line: &LogRow) -> Event {
    let data = serde_json::to_string(line).unwrap_or_default();
    Event::default().id(line.id.to_string()).event("line").data(data)
}
