//! A log line as a terminal would show it, in HTML: ANSI colours and weights as
//! classes (or a colour of the 256 or RGB palettes as a style), carriage returns
//! overwriting the line from its start the way progress bars expect, backspaces
//! stepping back, every other escape sequence and control character left out. The
//! page renders stored lines with this, and the live stream sends each new line
//! rendered by it too, so that there is one renderer.

use maud::{Markup, html};

use crate::store::LogRow;

/// How a run of characters looks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Style {
    bold: bool,
    dim: bool,
    italic: bool,
    underline: bool,
    fg: Option<Colour>,
    bg: Option<Colour>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Colour {
    /// One of the 16 terminal colours (0-7 normal, 8-15 bright).
    Basic(u8),
    Rgb(u8, u8, u8),
}

/// One stored line, rendered.
pub(super) fn line(row: &LogRow) -> Markup {
    html! {
        div class=(format!("line {}", row.stream)) data-id=(row.id) data-attempt=(row.attempt) data-step=(row.step) {
            (text(&row.line))
        }
    }
}

/// The line's text as spans of one style each.
pub(super) fn text(raw: &str) -> Markup {
    let cells = cells(raw);
    let mut runs: Vec<(Style, String)> = Vec::new();
    for (ch, style) in cells {
        match runs.last_mut() {
            Some((last, text)) if *last == style => text.push(ch),
            _ => runs.push((style, ch.to_string())),
        }
    }
    html! {
        @for (style, text) in runs {
            @if style == Style::default() { (text) } @else {
                span class=[classes(&style)] style=[inline(&style)] { (text) }
            }
        }
    }
}

/// The characters left on the line, each with its style, once carriage returns,
/// backspaces and escape sequences have done what a terminal does with them.
fn cells(raw: &str) -> Vec<(char, Style)> {
    let mut cells: Vec<(char, Style)> = Vec::new();
    let mut cursor = 0usize;
    let mut style = Style::default();
    let mut chars = raw.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '\r' => cursor = 0,
            '\u{8}' => cursor = cursor.saturating_sub(1),
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    let mut params = String::new();
                    let mut end = None;
                    for c in chars.by_ref() {
                        if ('\u{40}'..='\u{7e}').contains(&c) {
                            end = Some(c);
                            break;
                        }
                        // A sequence is short; a runaway one ends here.
                        if params.len() > 64 {
                            break;
                        }
                        params.push(c);
                    }
                    if end == Some('m') {
                        apply_sgr(&mut style, &params);
                    }
                } else {
                    // Another escape: its next character belongs to it.
                    chars.next();
                }
            }
            '\t' => put(&mut cells, &mut cursor, ' ', &style),
            c if c.is_control() => {}
            c => put(&mut cells, &mut cursor, c, &style),
        }
    }
    cells
}

fn put(cells: &mut Vec<(char, Style)>, cursor: &mut usize, ch: char, style: &Style) {
    if *cursor < cells.len() {
        cells[*cursor] = (ch, style.clone());
    } else {
        cells.push((ch, style.clone()));
    }
    *cursor += 1;
}

/// Select Graphic Rendition: `ESC [ p ; p … m`.
fn apply_sgr(style: &mut Style, params: &str) {
    let numbers: Vec<u16> = params.split(';').map(|p| p.parse().unwrap_or(0)).collect();
    let mut i = 0;
    while i < numbers.len() {
        match numbers[i] {
            0 => *style = Style::default(),
            1 => style.bold = true,
            2 => style.dim = true,
            3 => style.italic = true,
            4 => style.underline = true,
            22 => (style.bold, style.dim) = (false, false),
            23 => style.italic = false,
            24 => style.underline = false,
            n @ 30..=37 => style.fg = Some(Colour::Basic((n - 30) as u8)),
            n @ 90..=97 => style.fg = Some(Colour::Basic((n - 90 + 8) as u8)),
            39 => style.fg = None,
            n @ 40..=47 => style.bg = Some(Colour::Basic((n - 40) as u8)),
            n @ 100..=107 => style.bg = Some(Colour::Basic((n - 100 + 8) as u8)),
            49 => style.bg = None,
            n @ (38 | 48) => {
                let colour = match numbers.get(i + 1) {
                    Some(5) => {
                        i += 2;
                        numbers.get(i).map(|&c| palette(c.min(255) as u8))
                    }
                    Some(2) => {
                        i += 4;
                        let part = |k: usize| numbers.get(i + k - 2).map_or(0, |&v| v.min(255) as u8);
                        Some(Colour::Rgb(part(0), part(1), part(2)))
                    }
                    _ => None,
                };
                if n == 38 { style.fg = colour } else { style.bg = colour }
            }
            _ => {}
        }
        i += 1;
    }
}

/// A colour of the 256-colour palette.
fn palette(n: u8) -> Colour {
    match n {
        0..=15 => Colour::Basic(n),
        16..=231 => {
            let n = n - 16;
            let level = |v: u8| if v == 0 { 0 } else { 55 + v * 40 };
            Colour::Rgb(level(n / 36), level((n / 6) % 6), level(n % 6))
        }
        _ => {
            let grey = 8 + (n - 232) * 10;
            Colour::Rgb(grey, grey, grey)
        }
    }
}

fn classes(style: &Style) -> Option<String> {
    let mut classes = Vec::new();
    for (on, name) in [(style.bold, "b"), (style.dim, "dim"), (style.italic, "i"), (style.underline, "u")] {
        if on {
            classes.push(name.to_string());
        }
    }
    if let Some(Colour::Basic(n)) = style.fg {
        classes.push(format!("fg{n}"));
    }
    if let Some(Colour::Basic(n)) = style.bg {
        classes.push(format!("bg{n}"));
    }
    (!classes.is_empty()).then(|| classes.join(" "))
}

fn inline(style: &Style) -> Option<String> {
    let mut css = String::new();
    if let Some(Colour::Rgb(r, g, b)) = style.fg {
        css.push_str(&format!("color:#{r:02x}{g:02x}{b:02x};"));
    }
    if let Some(Colour::Rgb(r, g, b)) = style.bg {
        css.push_str(&format!("background:#{r:02x}{g:02x}{b:02x};"));
    }
    (!css.is_empty()).then_some(css)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(raw: &str) -> String {
        cells(raw).into_iter().map(|(c, _)| c).collect()
    }

    #[test]
    fn carriage_returns_overwrite_the_line_as_a_terminal_does() {
        assert_eq!(shown("10%\r20%\r30%"), "30%");
        assert_eq!(shown("downloading 1/3\rdone"), "doneloading 1/3");
        assert_eq!(shown("abc\u{8}\u{8}XY"), "aXY");
        assert_eq!(shown("tail\r"), "tail");
    }

    #[test]
    fn colours_become_classes_and_other_escapes_vanish() {
        let html =
            text("\u{1b}[1;31merror\u{1b}[0m: \u{1b}[2Kbad \u{1b}[38;5;208morange\u{1b}[38;2;1;2;3mrgb").into_string();
        assert!(html.contains(r#"<span class="b fg1">error</span>"#), "{html}");
        assert!(html.contains(": bad "), "{html}");
        assert!(html.contains("color:#ff8700"), "{html}");
        assert!(html.contains("color:#010203"), "{html}");
        assert!(!html.contains('\u{1b}'), "{html}");
    }

    #[test]
    fn markup_in_a_line_is_text() {
        let html = text("<script>alert(1)</script> & \u{7}bell").into_string();
        assert_eq!(html, "&lt;script&gt;alert(1)&lt;/script&gt; &amp; bell");
    }

    #[test]
    fn a_runaway_sequence_ends() {
        let raw = format!("\u{1b}[{}mtext", "1;".repeat(10_000));
        assert!(shown(&raw).len() < raw.len());
    }
}
