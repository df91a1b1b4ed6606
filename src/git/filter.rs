//! Which files of a tree a source delivers: directories, globs with gitignore semantics and
//! extensions.

use gix::bstr::{BStr, ByteSlice};
use gix::glob::{Pattern, pattern::Case, wildmatch};

/// A [`Filter`] compiled for matching. A path passes when it lies under one of the
/// directories (if any are given), has one of the extensions or matches the include patterns
/// (if either is given: they add up), and does not match the exclude patterns.
#[derive(Debug, Default)]
pub(crate) struct Matcher {
    directories: Vec<String>,
    extensions: Vec<String>,
    include: Vec<Pattern>,
    exclude: Vec<Pattern>,
}

/// What a [`Matcher`] is compiled from: the git layer's own view of a source's filter, so
/// that this layer depends on nothing above it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Patterns<'a> {
    pub directories: &'a [String],
    pub include: &'a [String],
    pub exclude: &'a [String],
    pub extensions: &'a [String],
}

impl Matcher {
    /// Compiles `filter`; an invalid pattern is reported with its text.
    pub fn new(filter: Patterns<'_>) -> Result<Self, String> {
        let compile = |patterns: &[String]| -> Result<Vec<Pattern>, String> {
            patterns
                .iter()
                .map(|text| {
                    Pattern::from_bytes(text.as_bytes())
                        .ok_or_else(|| format!("invalid pattern `{text}`"))
                })
                .collect()
        };
        Ok(Self {
            directories: filter
                .directories
                .iter()
                .map(|dir| dir.trim_matches('/').to_owned())
                .filter(|dir| !dir.is_empty())
                .collect(),
            extensions: filter
                .extensions
                .iter()
                .map(|ext| ext.trim_start_matches('.').to_owned())
                .collect(),
            include: compile(filter.include)?,
            exclude: compile(filter.exclude)?,
        })
    }

    /// True when the file at `path` (`/`-separated, relative to the root) is delivered.
    pub fn accepts(&self, path: &str) -> bool {
        let in_directory = self.directories.is_empty()
            || self.directories.iter().any(|dir| {
                path.strip_prefix(dir.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
            });
        let has_extension = self.extensions.iter().any(|ext| {
            path.rsplit('/').next().is_some_and(|name| {
                name.len() > ext.len() + 1
                    && name.ends_with(ext.as_str())
                    && name[..name.len() - ext.len()].ends_with('.')
            })
        });
        let wanted = (self.extensions.is_empty() && self.include.is_empty())
            || has_extension
            || matches(&self.include, path);
        in_directory && wanted && !matches(&self.exclude, path)
    }
}

/// gitignore semantics: the last pattern that matches the path or one of its parent
/// directories decides, and a `!pattern` that decides means "not matched".
fn matches(patterns: &[Pattern], path: &str) -> bool {
    let path = BStr::new(path);
    let mut decision = false;
    for pattern in patterns {
        if matches_path_or_parent(pattern, path) {
            decision = !pattern.is_negative();
        }
    }
    decision
}

fn matches_path_or_parent(pattern: &Pattern, path: &BStr) -> bool {
    let mode = wildmatch::Mode::NO_MATCH_SLASH_LITERAL;
    let basename = |p: &BStr| p.rfind_byte(b'/').map(|slash| slash + 1);
    if pattern.matches_repo_relative_path(path, basename(path), Some(false), Case::Sensitive, mode)
    {
        return true;
    }
    // A pattern naming a directory matches every file beneath it.
    let mut end = path.len();
    while let Some(slash) = path[..end].rfind_byte(b'/') {
        let parent = BStr::new(&path[..slash]);
        if pattern.matches_repo_relative_path(
            parent,
            basename(parent),
            Some(true),
            Case::Sensitive,
            mode,
        ) {
            return true;
        }
        end = slash;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(
        directories: &[&str],
        include: &[&str],
        exclude: &[&str],
        extensions: &[&str],
    ) -> Matcher {
        let owned = |list: &[&str]| -> Vec<String> { list.iter().map(|s| s.to_string()).collect() };
        let (directories, include) = (owned(directories), owned(include));
        let (exclude, extensions) = (owned(exclude), owned(extensions));
        Matcher::new(Patterns {
            directories: &directories,
            include: &include,
            exclude: &exclude,
            extensions: &extensions,
        })
        .unwrap()
    }

    #[test]
    fn empty_filter_accepts_everything() {
        let all = matcher(&[], &[], &[], &[]);
        assert!(all.accepts("a"));
        assert!(all.accepts("deep/down/file.rego"));
    }

    #[test]
    fn directories_are_subtrees() {
        let m = matcher(&["policies/", "/data"], &[], &[], &[]);
        assert!(m.accepts("policies/a.rego"));
        assert!(m.accepts("data/x/y.json"));
        assert!(!m.accepts("policies.txt"));
        assert!(!m.accepts("policiesx/a.rego"));
        assert!(!m.accepts("other/policies/a.rego"));
    }

    #[test]
    fn extensions() {
        let m = matcher(&[], &[], &[], &["rego", ".json"]);
        assert!(m.accepts("a.rego"));
        assert!(m.accepts("x/b.json"));
        assert!(!m.accepts("rego"));
        assert!(!m.accepts(".rego"));
        assert!(!m.accepts("a.rego.bak"));
        assert!(!m.accepts("arego"));
    }

    #[test]
    fn globs_follow_gitignore_rules() {
        let m = matcher(
            &[],
            &["*.rego", "/top.json", "docs/"],
            &["*_test.rego", "!keep_test.rego", "vendor/"],
            &[],
        );
        assert!(m.accepts("a.rego"), "basename pattern matches at any depth");
        assert!(m.accepts("x/y/a.rego"));
        assert!(m.accepts("top.json"), "anchored pattern");
        assert!(
            !m.accepts("x/top.json"),
            "anchored pattern only at the root"
        );
        assert!(
            m.accepts("docs/guide/intro.md"),
            "directory pattern covers its files"
        );
        assert!(!m.accepts("a_test.rego"), "excluded");
        assert!(
            m.accepts("keep_test.rego"),
            "re-included by a later negation"
        );
        assert!(!m.accepts("vendor/lib.rego"), "excluded directory");
        assert!(!m.accepts("readme.md"));
        let doublestar = matcher(&[], &["a/**/z.txt"], &[], &[]);
        assert!(doublestar.accepts("a/z.txt"));
        assert!(doublestar.accepts("a/b/c/z.txt"));
        assert!(!doublestar.accepts("b/a/z.txt"));
    }

    /// Extensions and include patterns add up; directories narrow both; exclusions win.
    #[test]
    fn extensions_and_includes_add_up() {
        let m = matcher(&["policies"], &["data.json"], &["*_test.rego"], &["rego"]);
        assert!(m.accepts("policies/a.rego"));
        assert!(m.accepts("policies/data.json"));
        assert!(m.accepts("policies/sub/data.json"));
        assert!(!m.accepts("data.json"), "outside the directory");
        assert!(!m.accepts("policies/other.json"));
        assert!(!m.accepts("policies/a_test.rego"));
        let m = matcher(&[], &["data.json"], &[], &["rego"]);
        assert!(m.accepts("a.rego") && m.accepts("data.json"));
        assert!(!m.accepts("README.md"));
    }
}
