//! Jobs as people read them: `list`, `get` and `events` print aligned tables (JSON
//! with `--output json`, for scripts). A job's state is coloured only when standard
//! output is a terminal; text a job put in its fields (an error, a reason) is shown
//! with its control characters escaped, as log lines are.

use std::io::IsTerminal;

use chrono::{DateTime, Utc};
use serde_json::Value;

/// How a command prints what the API answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    #[default]
    Table,
    /// The API's JSON, for scripts.
    Json,
}

/// Rows of cells, printed with each column as wide as its widest cell.
struct Table {
    rows: Vec<Vec<String>>,
    colour: bool,
}

impl Table {
    fn new(header: &[&str]) -> Self {
        Table { rows: vec![header.iter().map(|h| h.to_string()).collect()], colour: std::io::stdout().is_terminal() }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text; a `state` column's cells are coloured on a terminal.
    fn render(&self, state_column: Option<usize>) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| self.rows.iter().filter_map(|r| r.get(c)).map(|cell| cell.chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for (i, row) in self.rows.iter().enumerate() {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                let last = c + 1 == row.len();
                let pad = if last { 0 } else { widths[c] - cell.chars().count() + 2 };
                match state_column {
                    Some(s) if s == c && i > 0 && self.colour => line.push_str(&coloured(cell)),
                    _ => line.push_str(cell),
                }
                line.push_str(&" ".repeat(pad));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A state in the colour people expect of it.
fn coloured(state: &str) -> String {
    let code = match state {
        "succeeded" => "32",
        "failed" => "31",
        "cancelled" => "33",
        "queued" => "2",
        _ => "36",
    };
    format!("\u{1b}[{code}m{state}\u{1b}[0m")
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_string(),
        Value::String(s) => crate::client::printable(s).into_owned(),
        other => other.to_string(),
    }
}

/// A value that may be absent, as an empty cell when it is.
fn blank_if_null(value: &Value) -> String {
    if value.is_null() { String::new() } else { text(value) }
}

fn time(value: &Value) -> String {
    value
        .as_str()
        .and_then(|t| t.parse::<DateTime<Utc>>().ok())
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".to_string())
}

/// Seconds between two times, as `1.2s`, `3m04s`; `-` while unfinished.
fn duration(from: &Value, to: &Value) -> String {
    let parse = |v: &Value| v.as_str().and_then(|t| t.parse::<DateTime<Utc>>().ok());
    let (Some(from), Some(to)) = (parse(from), parse(to)) else { return "-".to_string() };
    let millis = (to - from).num_milliseconds().max(0);
    if millis < 60_000 {
        format!("{:.1}s", millis as f64 / 1000.0)
    } else {
        format!("{}m{:02}s", millis / 60_000, (millis % 60_000) / 1000)
    }
}

/// The first line of a message, at most `max` characters.
fn short(value: &Value, max: usize) -> String {
    let full = text(value);
    let first = full.lines().next().unwrap_or_default();
    if first.chars().count() > max {
        format!("{}…", first.chars().take(max - 1).collect::<String>())
    } else {
        first.to_string()
    }
}

/// `slipway list`: one job a row.
pub fn jobs(page: &Value) -> String {
    let mut table = Table::new(&["ID", "STATE", "ATTEMPT", "IMAGE", "CREATED", "ERROR"]);
    for job in page["jobs"].as_array().into_iter().flatten() {
        table.row(vec![
            text(&job["id"]),
            text(&job["state"]),
            text(&job["attempt"]),
            text(&job["spec"]["image"]),
            time(&job["created_at"]),
            blank_if_null(&job["error"]["code"]),
        ]);
    }
    let mut out = table.render(Some(1));
    if let Some(cursor) = page["next_cursor"].as_str() {
        out.push_str(&format!("(more: the API's next page is after {cursor})\n"));
    }
    out
}

/// `slipway get`: the job's fields, then its steps.
pub fn job(job: &Value) -> String {
    let spec = &job["spec"];
    let image = match (&job["pushed_ref"], job["local"].as_bool()) {
        (Value::String(pushed), _) => pushed.clone(),
        (_, Some(true)) => format!("{} (local: not pushed)", text(&spec["image"])),
        _ => text(&spec["image"]),
    };
    let mut fields = Table::new(&["id", &text(&job["id"])]);
    let error = match &job["error"] {
        Value::Null => "-".to_string(),
        error => format!("{}: {}", text(&error["code"]), short(&error["message"], 200)),
    };
    for (name, value) in [
        ("project", text(&job["project"])),
        ("state", text(&job["state"])),
        ("attempt", text(&job["attempt"])),
        ("repo", text(&spec["repo"])),
        ("ref", text(&spec["ref"])),
        ("commit", text(&job["commit_sha"])),
        ("image", image),
        ("image id", text(&job["image_id"])),
        ("container", text(&job["container_id"])),
        ("exit code", text(&job["exit_code"])),
        ("error", error),
        ("created", time(&job["created_at"])),
        ("finished", time(&job["finished_at"])),
    ] {
        fields.row(vec![name.to_string(), value]);
    }
    let mut out = fields.render(None);
    let mut steps = Table::new(&["ATTEMPT", "STEP", "WORKER", "STARTED", "TOOK", "OUTCOME", "ERROR"]);
    for step in job["steps"].as_array().into_iter().flatten() {
        steps.row(vec![
            text(&step["attempt"]),
            text(&step["step"]),
            text(&step["worker"]),
            time(&step["started_at"]),
            duration(&step["started_at"], &step["finished_at"]),
            text(&step["outcome"]),
            blank_if_null(&step["error_code"]),
        ]);
    }
    if steps.rows.len() > 1 {
        out.push('\n');
        out.push_str(&steps.render(None));
    }
    out
}

/// `slipway events`: the job's history, oldest first.
pub fn events(page: &Value) -> String {
    let mut table = Table::new(&["AT", "FROM", "TO", "ATTEMPT", "WORKER", "REASON"]);
    for event in page["events"].as_array().into_iter().flatten() {
        table.row(vec![
            time(&event["at"]),
            text(&event["from_state"]),
            text(&event["to_state"]),
            text(&event["attempt"]),
            text(&event["worker"]),
            if event["reason"].is_null() { String::new() } else { short(&event["reason"], 160) },
        ]);
    }
    table.render(Some(2))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn columns_line_up_and_a_job_s_text_cannot_drive_the_terminal() {
        let page = json!({ "jobs": [
            { "id": "a", "state": "failed", "attempt": 3, "spec": { "image": "hello:dev" },
              "created_at": "2026-12-02T01:00:00Z", "error": { "code": "exit_nonzero\u{1b}[2J" } },
            { "id": "bbbb", "state": "succeeded", "attempt": 1, "spec": { "image": "x" },
              "created_at": "2026-12-02T01:00:01.5Z", "error": null },
        ], "next_cursor": null });
        let printed = jobs(&page);
        let lines: Vec<&str> = printed.lines().collect();
        assert_eq!(lines[0], "ID    STATE      ATTEMPT  IMAGE      CREATED              ERROR");
        assert_eq!(lines[1], "a     failed     3        hello:dev  2026-12-02 01:00:00  exit_nonzero^[[2J");
        assert_eq!(lines[2], "bbbb  succeeded  1        x          2026-12-02 01:00:01");
    }

    #[test]
    fn durations_read_as_people_say_them() {
        let at = |t: &str| json!(t);
        assert_eq!(duration(&at("2026-12-02T01:00:00Z"), &at("2026-12-02T01:00:01.25Z")), "1.2s");
        assert_eq!(duration(&at("2026-12-02T01:00:00Z"), &at("2026-12-02T01:03:04Z")), "3m04s");
        assert_eq!(duration(&at("2026-12-02T01:00:00Z"), &Value::Null), "-");
    }
}
