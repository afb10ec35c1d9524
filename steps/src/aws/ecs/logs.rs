//! A task's output, read from CloudWatch Logs.
//!
//! `GetLogEvents` from the head, page after page, each page's forward token handed
//! on with the page's last line: the orchestrator stores the token with the lines
//! in one transaction, so a worker that takes over resumes where the stored lines
//! end — no gap and no repeat. The stream appears only once the task has started
//! and written; until then there is nothing to read.

use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::Ecs;
use crate::aws::{aws_error, service_code};
use crate::{ErrorCode, LogSink, LogStream, StepError};

/// How often a running task's stream is read while it writes.
pub const LOG_POLL: Duration = Duration::from_secs(1);
/// The longest pause between reads of a quiet stream: `GetLogEvents` is limited per
/// account and region (25 calls a second by default), and many tasks share that.
pub const LOG_POLL_QUIET: Duration = Duration::from_secs(8);
/// How long after the task stopped its last lines are waited for.
const LAST_LINES_GRACE: Duration = Duration::from_secs(2);

impl Ecs {
    /// Reads the task's stream until `stop`, then once more after a short grace
    /// for lines still on their way.
    pub(crate) async fn follow_logs(&self, task_arn: &str, cursor: LogCursor, logs: LogSink, stop: CancellationToken) {
        let stream = self.log_stream_of(task_arn);
        let mut cursor = cursor;
        let mut pause = LOG_POLL;
        loop {
            let stopping = stop.is_cancelled();
            // A stream that writes is read every second; a quiet or throttled one
            // ever less often.
            pause = match self.read_new(&stream, &mut cursor, &logs).await {
                Ok(read) if read > 0 => LOG_POLL,
                Ok(_) => (pause * 2).min(LOG_POLL_QUIET),
                Err(e) => {
                    tracing::warn!(log.stream = %stream, error = %e, "cannot read the task's log");
                    (pause * 2).min(LOG_POLL_QUIET)
                }
            };
            if stopping {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.cancelled() => tokio::time::sleep(LAST_LINES_GRACE.min(self.settings.poll_max)).await,
            }
        }
    }

    /// Reads every event after `cursor`, advancing it; returns the lines read.
    pub async fn read_new(&self, stream: &str, cursor: &mut LogCursor, sink: &LogSink) -> Result<usize, StepError> {
        let mut read = 0;
        loop {
            let cloudwatch = &self.cloudwatch;
            let page = cloudwatch
                .get_log_events()
                .log_group_name(&self.settings.log_group)
                .log_stream_name(stream)
                .start_from_head(true)
                .set_next_token(cursor.token.clone())
                .send()
                .await;
            let page = match page {
                Ok(page) => page,
                Err(e) if service_code(&e) == Some("ResourceNotFoundException") => return Ok(read),
                Err(e) => return Err(aws_error(e, ErrorCode::RunFailed, "cannot read the task's log")),
            };
            let next = page.next_forward_token().map(str::to_string);
            let events = page.events();
            if events.len() <= cursor.skip {
                // Nothing new on this page. A page that was read to its end leads on.
                if events.is_empty() || next.is_none() || next == cursor.token {
                    return Ok(read);
                }
                *cursor = LogCursor { token: next, skip: cursor.skip - events.len() };
                continue;
            }
            let page_start = cursor.token.clone();
            for (i, event) in events.iter().enumerate().skip(cursor.skip) {
                let at = event
                    .timestamp()
                    .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
                    .unwrap_or_else(SystemTime::now);
                let text = event.message().unwrap_or_default().trim_end_matches(['\n', '\r']);
                *cursor = match &next {
                    Some(token) if i + 1 == events.len() => LogCursor { token: Some(token.clone()), skip: 0 },
                    _ => LogCursor { token: page_start.clone(), skip: i + 1 },
                };
                sink.line_with_cursor(LogStream::Stdout, text, at, cursor.to_string()).await;
                read += 1;
            }
            if next.is_none() || next == page_start {
                return Ok(read);
            }
        }
    }
}

/// Where a stream has been read up to: a page's forward token (none: the stream's
/// head) and how many events of that page are already read. Tokens name pages, not
/// events; the count lets a reader resume after any line, not just a page's last.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogCursor {
    pub token: Option<String>,
    pub skip: usize,
}

impl std::fmt::Display for LogCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.skip, self.token.as_deref().unwrap_or_default())
    }
}

impl std::str::FromStr for LogCursor {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (skip, token) = s.split_once(' ').ok_or_else(|| format!("`{s}` is not a log cursor"))?;
        let skip = skip.parse().map_err(|_| format!("`{s}` is not a log cursor"))?;
        Ok(LogCursor { token: (!token.is_empty()).then(|| token.to_string()), skip })
    }
}

#[cfg(test)]
mod tests {
    use super::LogCursor;

    #[test]
    fn a_cursor_reads_back_as_written() {
        for cursor in [
            LogCursor::default(),
            LogCursor { token: Some("f/00000000000000000000000000000000000000000000000000000042/s".into()), skip: 0 },
            LogCursor { token: None, skip: 7 },
        ] {
            assert_eq!(cursor.to_string().parse::<LogCursor>().unwrap(), cursor);
        }
        assert!("nonsense".parse::<LogCursor>().is_err());
    }
}
