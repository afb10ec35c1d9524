//! Where a step's output goes: a bounded channel of lines, tagged with the step and
//! the stream, read by the worker's reporter. A full channel slows the step down
//! rather than dropping lines. No line is longer than the sink's limit: a longer one
//! keeps its start and says, at its end, how many bytes were cut.

use std::time::SystemTime;

use tokio::sync::mpsc;

use crate::Step;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
    /// Slipway's own progress: clone progress, build and push output.
    System,
}

#[derive(Debug, Clone)]
pub struct LogLine {
    pub step: Step,
    pub stream: LogStream,
    pub text: String,
    pub at: SystemTime,
    /// Where the source is read up to once this line is stored (a CloudWatch
    /// forward token): stored with the line, so that a later reader resumes after it.
    pub cursor: Option<String>,
}

/// The longest line kept by default (`SLIPWAY_MAX_LINE_BYTES`).
pub const DEFAULT_MAX_LINE_BYTES: usize = 64 * 1024;
/// The most `SLIPWAY_MAX_LINE_BYTES` may be, so that a batch of lines sent to the
/// orchestrator stays under the gRPC message limit by construction.
pub const MAX_LINE_BYTES_LIMIT: usize = 1 << 20;

/// The write end of a job's log, bound to one step.
#[derive(Debug, Clone)]
pub struct LogSink {
    tx: mpsc::Sender<LogLine>,
    step: Step,
    max_line_bytes: usize,
}

impl LogSink {
    /// Lines longer than `max_line_bytes` are cut, with a marker.
    pub fn new(tx: mpsc::Sender<LogLine>, step: Step, max_line_bytes: usize) -> Self {
        LogSink { tx, step, max_line_bytes }
    }

    /// The same log, for another step.
    pub fn for_step(&self, step: Step) -> Self {
        LogSink { step, ..self.clone() }
    }

    /// A splitter for a byte stream written to this log, bounded as its lines are.
    pub fn splitter(&self) -> LineSplitter {
        LineSplitter::new(self.max_line_bytes)
    }

    pub async fn line(&self, stream: LogStream, text: impl Into<String>) {
        // A closed channel means the job is being torn down: its lines have nowhere to go.
        let _ = self.tx.send(self.make(stream, text.into(), SystemTime::now(), None)).await;
    }

    /// A line produced at `at` (rather than now).
    pub async fn line_at(&self, stream: LogStream, text: impl Into<String>, at: SystemTime) {
        let _ = self.tx.send(self.make(stream, text.into(), at, None)).await;
    }

    /// A line produced at `at`, after which the source is read up to `cursor`.
    pub async fn line_with_cursor(&self, stream: LogStream, text: impl Into<String>, at: SystemTime, cursor: String) {
        let _ = self.tx.send(self.make(stream, text.into(), at, Some(cursor))).await;
    }

    /// For steps that run on a blocking thread (git).
    pub fn blocking_line(&self, stream: LogStream, text: impl Into<String>) {
        let _ = self.tx.blocking_send(self.make(stream, text.into(), SystemTime::now(), None));
    }

    fn make(&self, stream: LogStream, text: String, at: SystemTime, cursor: Option<String>) -> LogLine {
        // A line a splitter cut already carries its marker past the limit.
        let text =
            if text.len() > self.max_line_bytes + MARKER_ROOM { cut(text, self.max_line_bytes, 0) } else { text };
        LogLine { step: self.step, stream, text, at, cursor }
    }
}

/// Bytes a cut line may have past the limit: its marker.
const MARKER_ROOM: usize = 96;

/// `text` with at most `max` bytes kept (at a character boundary); when bytes are
/// dropped, here or `dropped_before` by a splitter, the line says how many.
fn cut(mut text: String, max: usize, dropped_before: usize) -> String {
    let mut dropped = dropped_before;
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        dropped += text.len() - end;
        text.truncate(end);
    }
    if dropped > 0 {
        text.push_str(&format!(" [slipway: {dropped} more bytes of this line cut at {max} bytes]"));
    }
    text
}

/// Splits a byte stream into lines, keeping a partial last line until it is ended.
/// Each byte is looked at once, and no more than the line limit is held: the rest
/// of a longer line is counted, not kept, and the line says so when it ends.
#[derive(Debug)]
pub struct LineSplitter {
    pending: Vec<u8>,
    /// Bytes of the current line not kept.
    dropped: usize,
    max_line_bytes: usize,
}

impl LineSplitter {
    pub fn new(max_line_bytes: usize) -> Self {
        LineSplitter { pending: Vec::new(), dropped: 0, max_line_bytes }
    }

    /// Feeds bytes; returns the lines they complete, without their line ends.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        for piece in bytes.split_inclusive(|b| *b == b'\n') {
            let (body, ended) = match piece.strip_suffix(b"\n") {
                Some(body) => (body, true),
                None => (piece, false),
            };
            // Keep one byte past the limit so that the cut knows it cut.
            let room = (self.max_line_bytes + 1).saturating_sub(self.pending.len());
            let kept = body.len().min(room);
            self.pending.extend_from_slice(&body[..kept]);
            self.dropped += body.len() - kept;
            if ended {
                lines.push(self.take());
            }
        }
        lines
    }

    /// Whether no line is begun.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.dropped == 0
    }

    /// The unterminated rest, if any.
    pub fn finish(&mut self) -> Option<String> {
        if self.is_empty() {
            return None;
        }
        Some(self.take())
    }

    fn take(&mut self) -> String {
        let mut line = std::mem::take(&mut self.pending);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let text = String::from_utf8_lossy(&line).into_owned();
        cut(text, self.max_line_bytes, std::mem::take(&mut self.dropped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_across_chunks_and_keeps_the_unterminated_rest() {
        let mut s = LineSplitter::new(DEFAULT_MAX_LINE_BYTES);
        assert_eq!(s.push(b"hel"), Vec::<String>::new());
        assert_eq!(s.push(b"lo\r\nwor"), vec!["hello"]);
        assert_eq!(s.push(b"ld\n\nx"), vec!["world", ""]);
        assert_eq!(s.finish().as_deref(), Some("x"));
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn a_long_line_keeps_its_start_says_what_was_cut_and_the_next_line_survives() {
        let mut s = LineSplitter::new(10);
        assert!(s.push(&[b'x'; 7]).is_empty());
        let lines = s.push(b"xxxxxxxxxxxxxxxxxxxxxxx\nnext\n");
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0], "xxxxxxxxxx [slipway: 20 more bytes of this line cut at 10 bytes]");
        assert_eq!(lines[1], "next");
        // A multi-byte character is never cut in half.
        let mut s = LineSplitter::new(4);
        assert_eq!(s.push("abcé\n".as_bytes()), vec!["abc [slipway: 2 more bytes of this line cut at 4 bytes]"]);
    }

    #[test]
    fn a_50_mb_line_without_a_newline_is_read_in_linear_time_and_bounded_memory() {
        let mut s = LineSplitter::new(DEFAULT_MAX_LINE_BYTES);
        let chunk = vec![b'y'; 16 * 1024];
        let started = std::time::Instant::now();
        for _ in 0..(50 << 20) / chunk.len() {
            assert!(s.push(&chunk).is_empty());
            assert!(s.pending.len() <= DEFAULT_MAX_LINE_BYTES + 1);
        }
        let line = s.finish().unwrap();
        eprintln!("50 MiB line in 16 KiB chunks: {:?}", started.elapsed());
        assert!(
            line.ends_with(&format!(
                "[slipway: {} more bytes of this line cut at {DEFAULT_MAX_LINE_BYTES} bytes]",
                (50 << 20) - DEFAULT_MAX_LINE_BYTES
            )),
            "{}",
            &line[line.len() - 80..]
        );
    }

    #[tokio::test]
    async fn every_line_a_sink_passes_on_is_within_its_limit() {
        let (tx, mut rx) = mpsc::channel(4);
        let sink = LogSink::new(tx, Step::Run, 8);
        sink.line(LogStream::Stdout, "0123456789abcdef".repeat(10)).await;
        let line = rx.recv().await.unwrap();
        assert_eq!(line.text, "01234567 [slipway: 152 more bytes of this line cut at 8 bytes]");
        // A line a splitter cut keeps its marker.
        let mut splitter = sink.splitter();
        let cut = splitter.push(&[b'x'; 1000]).pop().or_else(|| splitter.finish()).unwrap();
        sink.line(LogStream::Stdout, cut.clone()).await;
        assert_eq!(rx.recv().await.unwrap().text, cut);
        assert!(cut.ends_with("[slipway: 992 more bytes of this line cut at 8 bytes]"), "{cut}");
    }

    proptest::proptest! {
        /// However the bytes arrive, the same lines come out, each within the limit.
        #[test]
        fn lines_do_not_depend_on_how_the_bytes_are_cut(
            bytes in proptest::collection::vec(proptest::prelude::prop_oneof![
                proptest::prelude::Just(b'\n'), proptest::prelude::Just(b'\r'), 0x20u8..0x7f, 0x80u8..=0xff
            ], 0..600),
            cuts in proptest::collection::vec(0usize..600, 0..12),
            max in 8usize..64,
        ) {
            let whole = {
                let mut s = LineSplitter::new(max);
                let mut lines = s.push(&bytes);
                lines.extend(s.finish());
                lines
            };
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort_unstable();
            let mut s = LineSplitter::new(max);
            let (mut pieces, mut from) = (Vec::new(), 0);
            for cut in cuts.into_iter().chain([bytes.len()]) {
                pieces.extend(s.push(&bytes[from..cut]));
                from = cut;
            }
            pieces.extend(s.finish());
            proptest::prop_assert_eq!(&pieces, &whole);
            for line in &whole {
                // The kept start (at most `max` bytes) and the marker saying what was cut.
                proptest::prop_assert!(line.len() <= max + 96, "{} bytes: {line:?}", line.len());
            }
        }
    }
}
