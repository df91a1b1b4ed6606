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

/// The `crate::module` names a file uses, outside comments.
fn uses(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).expect("readable");
    let mut used = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !name.is_empty() {
                used.push(name);
            }
        }
    }
    used
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
    assert!(wrong.is_empty(), "{wrong:#?}");
}
