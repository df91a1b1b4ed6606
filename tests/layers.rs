//! The layers of the crate depend one way (ARCHITECTURE.md): the git layer and the leaf types
//! it uses never reach back into the modules built on them.

use std::path::{Path, PathBuf};

/// Modules built on the git layer; nothing in it, nor the leaves it uses, may name them.
const ABOVE_GIT: &[&str] = &[
    "source", "feed", "driver", "work", "failure", "reader", "snapshot", "cache", "exec", "tracker",
];

/// The modules the git layer may use besides itself: leaf types that use nothing above them.
const LEAVES: &[&str] = &[
    "reason", "machine", "error", "event", "auth", "progress", "clock",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a source directory") {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// The `crate::module` names the file at `path` uses.
fn uses(path: &Path) -> Vec<String> {
    uses_in(&std::fs::read_to_string(path).expect("readable"))
}

/// The `crate::module` names `text` uses, outside comments, grouped imports
/// (`crate::{a::X, b}`, over several lines too) included.
fn uses_in(text: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    let mut used = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        match rest.strip_prefix('{') {
            Some(group) => {
                for item in top_level_items(group) {
                    used.extend(module_name(item.trim_start()));
                }
            }
            None => used.extend(module_name(rest)),
        }
    }
    used
}

/// The items of a `{…}` group that `group` starts (just after the brace), split at its own
/// commas: nested groups stay inside their item.
fn top_level_items(group: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (at, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&group[start..at]);
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    items
}

/// The module name `path` starts with, if it starts with one.
fn module_name(path: &str) -> Option<String> {
    let name: String = path
        .chars()
        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

#[test]
fn the_git_layer_and_its_leaves_never_use_what_is_built_on_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src.join("git"), &mut files);
    files.extend(LEAVES.iter().map(|leaf| src.join(format!("{leaf}.rs"))));
    let mut wrong = Vec::new();
    for file in &files {
        for name in uses(file) {
            if ABOVE_GIT.contains(&name.as_str()) {
                wrong.push(format!("{} uses crate::{name}", file.display()));
            }
        }
    }
    // The check sees what it checks: the git layer does use its leaves.
    let git_uses: Vec<String> = files
        .iter()
        .filter(|file| file.starts_with(src.join("git")))
        .flat_map(|file| uses(file))
        .collect();
    assert!(git_uses.iter().any(|name| name == "reason"), "{git_uses:?}");
    // Grouped imports are read too, over several lines.
    let found = uses_in(
        "use crate::{\n    reason::Reason, // a comment\n    feed::{Feed, x},\n    work,\n};\n",
    );
    assert_eq!(found, ["reason", "feed", "work"]);
    assert!(wrong.is_empty(), "{wrong:#?}");
}
