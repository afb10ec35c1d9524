//! `.dockerignore`: which files of the context the build does not get, by the
//! engine's rules — one pattern a line, `#` comments, `!` re-includes, the last
//! matching pattern wins, `*`/`?`/`[…]` within a path segment, `**` across any
//! number of segments, and a pattern that matches a folder matches everything in it.

/// The patterns of one `.dockerignore`.
#[derive(Debug, Default, Clone)]
pub struct DockerIgnore {
    patterns: Vec<Pattern>,
}

#[derive(Debug, Clone)]
struct Pattern {
    exclude: bool,
    segments: Vec<String>,
}

impl DockerIgnore {
    pub fn parse(text: &str) -> Self {
        let patterns = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|line| {
                let (exclude, raw) = match line.strip_prefix('!') {
                    Some(rest) => (false, rest.trim()),
                    None => (true, line),
                };
                let segments: Vec<String> =
                    raw.split('/').filter(|s| !s.is_empty() && *s != ".").map(String::from).collect();
                (!segments.is_empty()).then_some(Pattern { exclude, segments })
            })
            .collect();
        DockerIgnore { patterns }
    }

    /// Whether a path of the context (`/`-separated, relative) is left out.
    pub fn excludes(&self, path: &str) -> bool {
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let mut excluded = false;
        for pattern in &self.patterns {
            // The path itself or one of the folders it is in.
            let hit = (1..=parts.len()).any(|n| matches(&pattern.segments, &parts[..n]));
            if hit {
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

/// Matches pattern segments against path segments, `**` standing for any number.
fn matches(pattern: &[String], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((first, rest)) if first == "**" => (0..=path.len()).any(|skip| matches(rest, &path[skip..])),
        Some((first, rest)) => match path.split_first() {
            Some((segment, path_rest)) => segment_matches(first, segment) && matches(rest, path_rest),
            None => false,
        },
    }
}

/// One segment, with `*`, `?` and `[…]` (ranges, `^`/`!` negation) as in Go's
/// `filepath.Match`.
fn segment_matches(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    glob(&p, &n)
}

fn glob(p: &[char], n: &[char]) -> bool {
    match p.first() {
        None => n.is_empty(),
        Some('*') => (0..=n.len()).any(|i| glob(&p[1..], &n[i..])),
        Some('?') => !n.is_empty() && glob(&p[1..], &n[1..]),
        Some('[') => {
            let Some(close) = p.iter().skip(1).position(|c| *c == ']').map(|i| i + 1) else {
                return n.first() == Some(&'[') && glob(&p[1..], &n[1..]);
            };
            let Some(c) = n.first() else { return false };
            let mut class = &p[1..close];
            let negated = matches!(class.first(), Some('^' | '!'));
            if negated {
                class = &class[1..];
            }
            let mut hit = false;
            let mut i = 0;
            while i < class.len() {
                if i + 2 < class.len() && class[i + 1] == '-' {
                    hit |= class[i] <= *c && *c <= class[i + 2];
                    i += 3;
                } else {
                    hit |= class[i] == *c;
                    i += 1;
                }
            }
            hit != negated && glob(&p[close + 1..], &n[1..])
        }
        Some('\\') if p.len() > 1 => n.first() == Some(&p[1]) && glob(&p[2..], &n[1..]),
        Some(c) => n.first() == Some(c) && glob(&p[1..], &n[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::DockerIgnore;

    #[test]
    fn follows_the_engine_rules() {
        let ignore = DockerIgnore::parse(
            "# comment\n\n*.log\ntarget\n/secret.txt\ndocs/**/*.md\n!docs/keep/README.md\nbuild?/\n[abc]x\n",
        );
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
        assert!(!DockerIgnore::parse("*").has_exceptions());
    }
}
