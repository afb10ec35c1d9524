//! Where a step's output goes: a bounded channel of lines, tagged with the step and
//! the stream, read by the worker's reporter. A full channel slows the step down
//! rather than dropping lines.

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

/// The write end of a job's log, bound to one step.
#[derive(Debug, Clone)]
pub struct LogSink {
    tx: mpsc::Sender<LogLine>,
    step: Step,
}

impl LogSink {
    pub fn new(tx: mpsc::Sender<LogLine>, step: Step) -> Self {
        LogSink { tx, step }
    }

    /// The same log, for another step.
    pub fn for_step(&self, step: Step) -> Self {
        LogSink { tx: self.tx.clone(), step }
    }

    pub async fn line(&self, stream: LogStream, text: impl Into<String>) {
        // A closed channel means the job is being torn down: its lines have nowhere to go.
        let _ = self.tx.send(self.make(stream, text.into())).await;
    }

    /// A line produced at `at` (rather than now).
    pub async fn line_at(&self, stream: LogStream, text: impl Into<String>, at: SystemTime) {
        let line = LogLine { step: self.step, stream, text: text.into(), at, cursor: None };
        let _ = self.tx.send(line).await;
    }

    /// A line produced at `at`, after which the source is read up to `cursor`.
    pub async fn line_with_cursor(&self, stream: LogStream, text: impl Into<String>, at: SystemTime, cursor: String) {
        let line = LogLine { step: self.step, stream, text: text.into(), at, cursor: Some(cursor) };
        let _ = self.tx.send(line).await;
    }

    /// For steps that run on a blocking thread (git).
    pub fn blocking_line(&self, stream: LogStream, text: impl Into<String>) {
        let _ = self.tx.blocking_send(self.make(stream, text.into()));
    }

    fn make(&self, stream: LogStream, text: String) -> LogLine {
        LogLine { step: self.step, stream, text, at: SystemTime::now(), cursor: None }
    }
}

/// Splits a byte stream into lines, keeping a partial last line until it is ended.
#[derive(Debug, Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    /// Feeds bytes; returns the lines they complete, without their line ends.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(bytes);
        let mut lines = Vec::new();
        while let Some(pos) = self.pending.iter().position(|b| *b == b'\n') {
            let rest = self.pending.split_off(pos + 1);
            let mut line = std::mem::replace(&mut self.pending, rest);
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            lines.push(String::from_utf8_lossy(&line).into_owned());
        }
        lines
    }

    /// The unterminated rest, if any.
    pub fn finish(&mut self) -> Option<String> {
        if self.pending.is_empty() {
            return None;
        }
        let line = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::LineSplitter;

    #[test]
    fn splits_lines_across_chunks_and_keeps_the_unterminated_rest() {
        let mut s = LineSplitter::default();
        assert_eq!(s.push(b"hel"), Vec::<String>::new());
        assert_eq!(s.push(b"lo\r\nwor"), vec!["hello"]);
        assert_eq!(s.push(b"ld\n\nx"), vec!["world", ""]);
        assert_eq!(s.finish().as_deref(), Some("x"));
        assert_eq!(s.finish(), None);
    }
}
