//! A job's timeline as SVG: the wait in the queue, then a bar for every step of
//! every attempt, placed on one time axis from the submission to the end (or now),
//! each labelled with its step, attempt and duration and coloured by its outcome.

use chrono::{DateTime, Utc};
use maud::{Markup, html};

use super::jobs_page::seconds;
use crate::store::StepRow;

const ROW: f64 = 24.0;
const LABEL: f64 = 150.0;
const WIDTH: f64 = 900.0;

pub(super) fn svg(created_at: DateTime<Utc>, finished_at: Option<DateTime<Utc>>, steps: &[StepRow]) -> Markup {
    let now = Utc::now();
    let latest_step = steps.iter().map(|s| s.finished_at.unwrap_or(now)).max();
    let end = finished_at.unwrap_or(now).max(latest_step.unwrap_or(created_at));
    let span = ((end - created_at).num_milliseconds() as f64 / 1000.0).max(0.001);
    let x = |at: DateTime<Utc>| {
        LABEL + (WIDTH - LABEL - 10.0) * ((at - created_at).num_milliseconds() as f64 / 1000.0 / span).clamp(0.0, 1.0)
    };
    let mut bars: Vec<(String, f64, f64, String, String)> = Vec::new();
    if let Some(first) = steps.first() {
        let wait = (first.started_at - created_at).num_milliseconds() as f64 / 1000.0;
        bars.push(("queued".into(), x(created_at), x(first.started_at), "queue".into(), seconds(wait.max(0.0))));
    }
    for step in steps {
        let stop = step.finished_at.unwrap_or(now);
        let took = (stop - step.started_at).num_milliseconds() as f64 / 1000.0;
        let outcome = step.outcome.clone().unwrap_or_else(|| "running".into());
        let label = format!("{} · attempt {}", step.step, step.attempt);
        bars.push((label, x(step.started_at), x(stop), outcome, seconds(took.max(0.0))));
    }
    let height = ROW * bars.len() as f64 + 24.0;
    html! {
        svg.timeline viewBox=(format!("0 0 {WIDTH} {height}")) role="img"
            aria-label="Timeline of the job's steps" xmlns="http://www.w3.org/2000/svg" {
            @for (i, (label, from, to, class, took)) in bars.iter().enumerate() {
                @let y = 4.0 + ROW * i as f64;
                g class=(format!("bar {class}")) {
                    title { (label) ": " (took) " (" (class) ")" }
                    text x="4" y=(y + 15.0) { (label) }
                    rect x=(from) y=(y) width=((to - from).max(2.0)) height=(ROW - 6.0) rx="3" {}
                    // Beside the bar, or inside its end when the bar reaches the edge.
                    @if *to + 60.0 < WIDTH {
                        text.took x=(to + 4.0) y=(y + 15.0) { (took) }
                    } @else {
                        text.took.inside x=(to - 4.0) y=(y + 15.0) text-anchor="end" { (took) }
                    }
                }
            }
            text.axis x=(LABEL) y=(height - 4.0) { "submitted" }
            text.axis x=(WIDTH - 10.0) y=(height - 4.0) text-anchor="end" { (seconds(span)) }
        }
    }
}
