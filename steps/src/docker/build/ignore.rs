//! `.dockerignore`: which files of the context the build does not get, by the
//! engine's rules — one pattern a line, `#` comments, `!` re-includes, the last
//! matching pattern wins, `*`/`?`/`[…]` within a path segment, `**` across any
//! number of segments, and a pattern that matches a folder matches everything in it.
//!
//! The file comes from the repository, so from anyone: it is read with a size limit
//! and never through a link, its lines are bounded, and matching takes time linear
//! in pattern × name with no recursion (a star remembers one place to come back
//! to, at most, so `*a*a*a*b` against a long name cannot backtrack exponentially).

use std::io::Read;
use std::path::Path;

use crate::{ErrorCode, StepError};

/// The largest `.dockerignore` read.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// The longest pattern: no path on Linux is longer.
pub const MAX_PATTERN_BYTES: usize = 4096;

/// The patterns of one `.dockerignore`.
#[derive(Debug, Default, Clone)]
pub struct DockerIgnore {
    patterns: Vec<Pattern>,
}

#[derive(Debug, Clone)]
struct Pattern {
    exclude: bool,
    segments: Vec<Segment>,
}

/// One `/`-separated part of a pattern.
#[derive(Debug, Clone, PartialEq)]
enum Segment {
    /// `**`: any number of path segments.
    AnyDepth,
    Glob(Vec<Token>),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Char(char),
    /// `?`
    One,
    /// `*` (a run of them is one).
    Star,
    /// `[…]`: ranges and single characters, negated by a leading `^` or `!`.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl DockerIgnore {
    /// Reads the context's `.dockerignore`, if it has one. It must be a regular
    /// file (a link could point anywhere, `/dev/zero` included) of at most
    /// [`MAX_FILE_BYTES`], with no pattern longer than [`MAX_PATTERN_BYTES`].
    pub fn read(context: &Path) -> Result<Self, StepError> {
        let path = context.join(".dockerignore");
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DockerIgnore::default()),
            Err(e) => return Err(invalid(format!("cannot read it: {e}"))),
        };
        if !meta.is_file() {
            return Err(invalid("it is not a regular file (a link or a device is not followed)".into()));
        }
        let mut text = String::new();
        std::fs::File::open(&path)
            .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_string(&mut text))
            .map_err(|e| invalid(format!("cannot read it as text: {e}")))?;
        if text.len() as u64 > MAX_FILE_BYTES {
            return Err(invalid(format!("it is larger than {MAX_FILE_BYTES} bytes")));
        }
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Self, StepError> {
        let mut patterns = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.len() > MAX_PATTERN_BYTES {
                return Err(invalid(format!("line {} is longer than {MAX_PATTERN_BYTES} bytes", number + 1)));
            }
            let (exclude, raw) = match line.strip_prefix('!') {
                Some(rest) => (false, rest.trim()),
                None => (true, line),
            };
            let segments: Vec<Segment> =
                raw.split('/').filter(|s| !s.is_empty() && *s != ".").map(Segment::parse).collect();
            if !segments.is_empty() {
                patterns.push(Pattern { exclude, segments });
            }
        }
        Ok(DockerIgnore { patterns })
    }

    /// Whether a path of the context (`/`-separated, relative) is left out.
    pub fn excludes(&self, path: &str) -> bool {
        let parts: Vec<Vec<char>> = path.split('/').filter(|s| !s.is_empty()).map(|s| s.chars().collect()).collect();
        let mut excluded = false;
        for pattern in &self.patterns {
            // The path itself or one of the folders it is in.
            if (1..=parts.len()).any(|n| matches_path(&pattern.segments, &parts[..n])) {
                excluded = pattern.exclude;
            }
        }
        excluded
    }

    /// Whether some pattern re-includes paths: then an excluded folder must still be
    /// walked, since something inside it may come back.
    pub fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|p| !p.exclude)
    }
}

fn invalid(why: String) -> StepError {
    StepError::new(ErrorCode::DockerignoreInvalid, format!("the context's .dockerignore is refused: {why}"))
}

impl Segment {
    fn parse(text: &str) -> Segment {
        if text == "**" {
            return Segment::AnyDepth;
        }
        let chars: Vec<char> = text.chars().collect();
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            let token = match chars[i] {
                '*' => {
                    while chars.get(i + 1) == Some(&'*') {
                        i += 1;
                    }
                    Token::Star
                }
                '?' => Token::One,
                '\\' if i + 1 < chars.len() => {
                    i += 1;
                    Token::Char(chars[i])
                }
                '[' => match chars[i + 1..].iter().position(|c| *c == ']') {
                    Some(len) => {
                        let token = class(&chars[i + 1..i + 1 + len]);
                        i += len + 1;
                        token
                    }
                    // An unclosed `[` stands for itself.
                    None => Token::Char('['),
                },
                c => Token::Char(c),
            };
            tokens.push(token);
            i += 1;
        }
        Segment::Glob(tokens)
    }
}

fn class(inside: &[char]) -> Token {
    let negated = matches!(inside.first(), Some('^' | '!'));
    let inside = if negated { &inside[1..] } else { inside };
    let mut ranges = Vec::new();
    let mut i = 0;
    while i < inside.len() {
        if i + 2 < inside.len() && inside[i + 1] == '-' {
            ranges.push((inside[i], inside[i + 2]));
            i += 3;
        } else {
            ranges.push((inside[i], inside[i]));
            i += 1;
        }
    }
    Token::Class { negated, ranges }
}

impl Token {
    /// Whether this token, not a star, takes the character `c`.
    fn takes(&self, c: char) -> bool {
        match self {
            Token::Char(expected) => *expected == c,
            Token::One => true,
            Token::Class { negated, ranges } => ranges.iter().any(|(lo, hi)| *lo <= c && c <= *hi) != *negated,
            Token::Star => false,
        }
    }
}

/// The wildcard matching both levels share: `items` against `pattern`, where a
/// "star" element takes any run of items and any other element takes exactly one
/// (when `takes` says so). Greedy, with one place to return to, the last star seen:
/// a later star makes any earlier choice final, so time is O(pattern × items).
fn wildcard<P, I>(pattern: &[P], items: &[I], is_star: impl Fn(&P) -> bool, takes: impl Fn(&P, &I) -> bool) -> bool {
    let (mut p, mut i) = (0, 0);
    let mut back: Option<(usize, usize)> = None;
    while i < items.len() {
        if p < pattern.len() && is_star(&pattern[p]) {
            back = Some((p, i));
            p += 1;
        } else if p < pattern.len() && takes(&pattern[p], &items[i]) {
            p += 1;
            i += 1;
        } else if let Some((star, from)) = back {
            // The star takes one more item; try the rest again after it.
            p = star + 1;
            i = from + 1;
            back = Some((star, from + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(is_star)
}

/// A pattern's segments against a path's, `**` standing for any number.
fn matches_path(pattern: &[Segment], path: &[Vec<char>]) -> bool {
    wildcard(
        pattern,
        path,
        |s| *s == Segment::AnyDepth,
        |segment, name| match segment {
            Segment::Glob(tokens) => matches_name(tokens, name),
            Segment::AnyDepth => false,
        },
    )
}

/// One segment's tokens against one name.
fn matches_name(tokens: &[Token], name: &[char]) -> bool {
    wildcard(tokens, name, |t| *t == Token::Star, |t, c| t.takes(*c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> DockerIgnore {
        DockerIgnore::parse(text).unwrap()
    }

    #[test]
    fn follows_the_engine_rules() {
        let ignore =
            parse("# comment\n\n*.log\ntarget\n/secret.txt\ndocs/**/*.md\n!docs/keep/README.md\nbuild?/\n[abc]x\n");
        assert!(ignore.excludes("app.log"));
        assert!(!ignore.excludes("src/app.log"), "a pattern without ** matches at the root only");
        assert!(ignore.excludes("target"));
        assert!(ignore.excludes("target/debug/app"), "a folder's contents go with it");
        assert!(ignore.excludes("secret.txt"));
        assert!(ignore.excludes("docs/a/b/c.md"));
        assert!(ignore.excludes("docs/c.md"), "** matches no folder too");
        assert!(!ignore.excludes("docs/keep/README.md"), "re-included");
        assert!(ignore.excludes("build1/x"));
        assert!(ignore.excludes("bx") && !ignore.excludes("dx"));
        assert!(!ignore.excludes("src/main.rs"));
        assert!(ignore.has_exceptions());
        assert!(!parse("*").has_exceptions());
    }

    #[test]
    fn wildcards_classes_and_escapes_match_as_go_s_filepath_match() {
        let cases = [
            ("a*b", "ab", true),
            ("a*b", "axxb", true),
            ("a*b", "axxbc", false),
            ("*a*a*b", "xaxab", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("[^a]x", "bx", true),
            ("[!a]x", "ax", false),
            ("[a-c]", "b", true),
            ("[a-c]", "d", false),
            ("\\*", "*", true),
            ("\\*", "a", false),
            ("[", "[", true),
            ("**/x", "a/b/x", true),
            ("a/**", "a/b/c", true),
            ("**", "anything/at/all", true),
            ("a/**/b/**/c", "a/b/x/c", true),
            ("a/**/b/**/c", "a/x/c", false),
        ];
        for (pattern, path, expected) in cases {
            let ignore = parse(pattern);
            let parts: Vec<Vec<char>> = path.split('/').map(|s| s.chars().collect()).collect();
            let whole = matches_path(&ignore.patterns[0].segments, &parts);
            assert_eq!(whole, expected, "{pattern} against {path}");
        }
    }

    #[test]
    fn hostile_patterns_take_linear_time_and_no_stack() {
        // 200,000 stars on one line: refused by length, and a run of stars is one.
        let stars = "*".repeat(200_000);
        assert_eq!(DockerIgnore::parse(&stars).unwrap_err().code, ErrorCode::DockerignoreInvalid);
        assert!(parse(&"*".repeat(MAX_PATTERN_BYTES)).excludes("anything"));
        // The classic exponential case, against a long name.
        let ignore = parse(&format!("{}b", "*a".repeat(2000)));
        let name = "a".repeat(3000);
        let started = std::time::Instant::now();
        assert!(!ignore.excludes(&name));
        eprintln!("`*a` × 2000 + `b` against 3,000 `a`: {:?}", started.elapsed());
        let deep = parse(&"**/".repeat(1000));
        assert!(deep.excludes(&"d/".repeat(1000)));
    }

    #[test]
    fn the_file_is_read_with_a_limit_and_never_through_a_link() {
        let context = tempfile::tempdir().unwrap();
        assert!(DockerIgnore::read(context.path()).unwrap().patterns.is_empty(), "no file, no patterns");
        std::os::unix::fs::symlink("/dev/zero", context.path().join(".dockerignore")).unwrap();
        let e = DockerIgnore::read(context.path()).unwrap_err();
        assert_eq!(e.code, ErrorCode::DockerignoreInvalid);
        assert!(e.message.contains("not a regular file"), "{}", e.message);
        std::fs::remove_file(context.path().join(".dockerignore")).unwrap();
        std::fs::write(context.path().join(".dockerignore"), "x\n".repeat(MAX_FILE_BYTES as usize)).unwrap();
        let e = DockerIgnore::read(context.path()).unwrap_err();
        assert!(e.message.contains("larger than"), "{}", e.message);
        std::fs::write(context.path().join(".dockerignore"), "*.log\n").unwrap();
        assert!(DockerIgnore::read(context.path()).unwrap().excludes("a.log"));
    }

    /// What a wildcard means, by plain recursion: exponential, so for small inputs
    /// only, and obviously right.
    fn naive<P, I>(pattern: &[P], items: &[I], is_star: &dyn Fn(&P) -> bool, takes: &dyn Fn(&P, &I) -> bool) -> bool {
        match pattern.split_first() {
            None => items.is_empty(),
            Some((first, rest)) if is_star(first) => {
                (0..=items.len()).any(|skip| naive(rest, &items[skip..], is_star, takes))
            }
            Some((first, rest)) => {
                items.split_first().is_some_and(|(item, more)| takes(first, item) && naive(rest, more, is_star, takes))
            }
        }
    }

    fn token() -> impl proptest::strategy::Strategy<Value = Token> {
        use proptest::prelude::*;
        prop_oneof![
            Just(Token::Char('a')),
            Just(Token::Char('b')),
            Just(Token::One),
            Just(Token::Star),
            Just(Token::Class { negated: false, ranges: vec![('a', 'a')] }),
            Just(Token::Class { negated: true, ranges: vec![('a', 'a')] }),
        ]
    }

    proptest::proptest! {
        #[test]
        fn the_linear_matcher_agrees_with_plain_recursion(
            tokens in proptest::collection::vec(token(), 0..8),
            name in "[ab]{0,10}",
        ) {
            let name: Vec<char> = name.chars().collect();
            let linear = matches_name(&tokens, &name);
            let reference = naive(&tokens, &name, &|t: &Token| *t == Token::Star, &|t: &Token, c: &char| t.takes(*c));
            proptest::prop_assert_eq!(linear, reference, "{:?} against {:?}", tokens, name);
        }

        #[test]
        fn any_dockerignore_and_any_path_are_matched_without_a_panic(
            text in "[ab*?!/\\\\\\[\\]^.#\n-]{0,200}",
            path in "[ab/.]{0,40}",
        ) {
            if let Ok(ignore) = DockerIgnore::parse(&text) {
                let _ = ignore.excludes(&path);
            }
        }

        #[test]
        fn a_literal_pattern_excludes_its_own_path_and_what_is_inside(name in "[a-z]{1,12}", inner in "[a-z]{1,12}") {
            let ignore = DockerIgnore::parse(&name).unwrap();
            proptest::prop_assert!(ignore.excludes(&name));
            let inside = format!("{}/{}", name, inner);
            proptest::prop_assert!(ignore.excludes(&inside));
            let reincluded = DockerIgnore::parse(&format!("{}\n!{}", name, name)).unwrap();
            proptest::prop_assert!(!reincluded.excludes(&name));
        }
    }
}
