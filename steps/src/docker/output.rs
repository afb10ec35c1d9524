//! A container's output, read into the job's log: followed while the container
//! runs, read to its end after, each line stamped with the time the engine read it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::query_parameters::LogsOptionsBuilder;
use futures_util::StreamExt;

use crate::logs::LineSplitter;
use crate::{LogSink, LogStream};

/// How long the output of an ended container may stay silent before it is given up on.
const OUTPUT_IDLE: Duration = Duration::from_secs(5);

/// Starts reading the output of `container_id` into `logs`, after the line
/// stamped `after`; [`finish_reading`] waits for it to end.
pub(super) fn start_reading(
    docker: &Docker,
    container_id: &str,
    after: Option<chrono::DateTime<chrono::FixedOffset>>,
    logs: &LogSink,
) -> (tokio::task::JoinHandle<()>, Arc<AtomicU64>) {
    let read = Arc::new(AtomicU64::new(0));
    let follower =
        tokio::spawn(follow_output(docker.clone(), container_id.to_string(), after, logs.clone(), read.clone()));
    (follower, read)
}

/// Waits for the output to be read to its end, which comes soon after the
/// container's (the log is finite), however long that takes while bytes keep
/// coming: the run's end is reported only after its last line. An engine that
/// keeps the stream open and silent is given up on, and the log says so.
pub(super) async fn finish_reading(mut follower: tokio::task::JoinHandle<()>, read: &AtomicU64, logs: &LogSink) {
    loop {
        let before = read.load(Ordering::Relaxed);
        match tokio::time::timeout(OUTPUT_IDLE, &mut follower).await {
            Ok(_) => return,
            Err(_) if read.load(Ordering::Relaxed) > before => continue,
            Err(_) => {
                follower.abort();
                let why = format!("[slipway] stopped reading the container's output: nothing came for {OUTPUT_IDLE:?}");
                logs.line(LogStream::System, why).await;
                return;
            }
        }
    }
}

/// Follows the container's output. The engine stamps each line with the time it
/// read it from the container, in nanoseconds: that stamp becomes the line's time
/// (not the time this worker got around to it) and its cursor, so that a worker
/// re-attaching after a crash asks for the output from that second on and drops
/// every line up to the stamp already stored: no line twice.
///
/// The engine cuts lines longer than 16 KiB into parts, each a message of its own
/// with its own stamp; the stamps are taken off every part, and a line is stamped
/// with the stamp of its first part. An engine may end a follow before the last
/// messages of a container that just exited (Docker 20.10 does, under load): once
/// the follow ends, what was written since the last message seen is read once
/// more, without following, skipping what was seen.
async fn follow_output(
    docker: Docker,
    container_id: String,
    after: Option<chrono::DateTime<chrono::FixedOffset>>,
    logs: LogSink,
    read: Arc<AtomicU64>,
) {
    let mut reader = OutputReader {
        out: Stamped { splitter: logs.splitter(), stamp: None, stream: LogStream::Stdout },
        err: Stamped { splitter: logs.splitter(), stamp: None, stream: LogStream::Stderr },
        last: None,
        skip: None,
        after,
        logs: logs.clone(),
        read,
    };
    let since = |at: Option<chrono::DateTime<chrono::FixedOffset>>| {
        at.map_or(0, |at| i32::try_from(at.timestamp()).unwrap_or(0))
    };
    let options = |follow: bool, from: i32| {
        LogsOptionsBuilder::default().follow(follow).stdout(true).stderr(true).timestamps(true).since(from).build()
    };
    let followed = reader.read_all(docker.logs(&container_id, Some(options(true, since(after))))).await;
    if followed.is_ok() {
        // What the follow may have missed: from the last second seen, skipping what was.
        reader.skip = reader.last.take();
        let from = since(reader.skip.as_ref().map(|(at, _)| *at).or(after));
        let _ = reader.read_all(docker.logs(&container_id, Some(options(false, from)))).await;
    }
    for output in [&mut reader.out, &mut reader.err] {
        if let Some(rest) = output.splitter.finish() {
            emit(&logs, after, output.stream, rest, output.stamp.take()).await;
        }
    }
}

/// Lines made of the container's output messages, and where reading got to.
struct OutputReader {
    out: Stamped,
    err: Stamped,
    /// The stamp of the last message read, and how many messages carried it.
    last: Option<(chrono::DateTime<chrono::FixedOffset>, usize)>,
    /// On a second read: messages up to this stamp (and this many with it) were read.
    skip: Option<(chrono::DateTime<chrono::FixedOffset>, usize)>,
    after: Option<chrono::DateTime<chrono::FixedOffset>>,
    logs: LogSink,
    read: Arc<AtomicU64>,
}

impl OutputReader {
    /// Reads a stream of messages to its end; a broken stream is said in the log.
    async fn read_all(
        &mut self,
        mut stream: impl futures_util::Stream<Item = Result<LogOutput, DockerError>> + Unpin,
    ) -> Result<(), ()> {
        while let Some(item) = stream.next().await {
            match item {
                Ok(chunk) => self.message(chunk).await,
                Err(e) => {
                    let why = format!("[slipway] the engine's log stream broke off; later output may be missing: {e}");
                    self.logs.line(LogStream::System, why).await;
                    return Err(());
                }
            }
        }
        Ok(())
    }

    async fn message(&mut self, chunk: LogOutput) {
        let is_err = matches!(chunk, LogOutput::StdErr { .. });
        let bytes = chunk.into_bytes();
        self.read.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let (stamp, text) = match stamped(&bytes) {
            Some((at, stamp, text)) => (Some((at, stamp.to_string())), text),
            None => (None, &bytes[..]),
        };
        if let Some((at, _)) = &stamp {
            let seen = match &self.last {
                Some((last, n)) if last == at => n + 1,
                _ => 1,
            };
            self.last = Some((*at, seen));
            // Read before: older than where the first read stopped, or as old and
            // among the messages it read with that stamp.
            if let Some((skip_at, skip_n)) = &self.skip
                && (at < skip_at || (at == skip_at && seen <= *skip_n))
            {
                return;
            }
        }
        let output = if is_err { &mut self.err } else { &mut self.out };
        if output.splitter.is_empty() || output.stamp.is_none() {
            output.stamp = stamp.clone();
        }
        for line in output.splitter.push(text) {
            // A line after the first of one message (if the engine ever sends two)
            // begins in this message.
            let line_stamp = std::mem::replace(&mut output.stamp, stamp.clone());
            emit(&self.logs, self.after, output.stream, line, line_stamp).await;
        }
        if output.splitter.is_empty() {
            output.stamp = None;
        }
    }
}

/// One stream of the container's output, and the stamp of the line it is in.
struct Stamped {
    splitter: LineSplitter,
    stamp: Option<(chrono::DateTime<chrono::FixedOffset>, String)>,
    stream: LogStream,
}

/// Passes one line on with its stamp as the cursor, unless it is at or before
/// `after` (already stored by an earlier attempt).
async fn emit(
    logs: &LogSink,
    after: Option<chrono::DateTime<chrono::FixedOffset>>,
    which: LogStream,
    line: String,
    stamp: Option<(chrono::DateTime<chrono::FixedOffset>, String)>,
) {
    match stamp {
        Some((at, _)) if after.is_some_and(|after| at <= after) => {}
        Some((at, stamp)) => logs.line_with_cursor(which, line, at.into(), stamp).await,
        None => logs.line(which, line).await,
    }
}

/// Splits `2026-11-27T16:00:00.123456789Z text` into the time, the stamp and the
/// text (bytes: a part of a long line may end inside a character); `None` for a
/// message without a stamp.
fn stamped(message: &[u8]) -> Option<(chrono::DateTime<chrono::FixedOffset>, &str, &[u8])> {
    let end = message.iter().take(64).position(|b| *b == b' ').unwrap_or(message.len().min(64));
    let stamp = std::str::from_utf8(&message[..end]).ok()?;
    let at = chrono::DateTime::parse_from_rfc3339(stamp).ok()?;
    Some((at, stamp, message.get(end + 1..).unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::stamped;

    #[test]
    fn engine_timestamps_become_the_line_time_and_cursor() {
        let (at, stamp, text) = stamped(b"2026-11-27T16:00:00.123456789Z hello world").unwrap();
        assert_eq!((stamp, text), ("2026-11-27T16:00:00.123456789Z", &b"hello world"[..]));
        assert_eq!(at.timestamp_subsec_nanos(), 123_456_789);
        assert_eq!(stamped(b"2026-11-27T16:00:00Z").unwrap().2, b"");
        assert!(stamped(b"no stamp here").is_none());
        // A part of a long line may end inside a character: the stamp still parses.
        let part = [&b"2026-11-27T16:00:00Z "[..], "é".as_bytes().split_at(1).0].concat();
        assert_eq!(stamped(&part).unwrap().2.len(), 1);
    }
}
