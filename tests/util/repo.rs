//! Throw-away git repositories driven through the git CLI.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use tempfile::TempDir;

/// A `git` command isolated from the machine it runs on: no system or
/// global config, no prompts, a fixed identity, English messages, and none
/// of the repository-selecting variables a surrounding git (a hook, a
/// rebase) might have exported.
pub fn git_command() -> Command {
    let mut cmd = Command::new("git");
    for var in [
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_OBJECT_DIRECTORY",
        "GIT_ALTERNATE_OBJECT_DIRECTORIES",
        "GIT_COMMON_DIR",
        "GIT_NAMESPACE",
        "GIT_PROTOCOL",
        "GIT_SSH",
        "GIT_SSH_COMMAND",
        "GIT_CONFIG_PARAMETERS",
        "GIT_CONFIG_COUNT",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@t")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@t")
        // Tests match on error text; keep it untranslated.
        .env("LC_ALL", "C")
        .env("LANGUAGE", "C");
    cmd
}

/// Runs `git <args>` in `dir` and returns its stdout without the trailing
/// newline. Panics with git's stderr if it fails: a failing setup step makes
/// the test meaningless.
pub fn git_in<S: AsRef<OsStr>>(dir: &Path, args: &[S]) -> String {
    run(git_command().current_dir(dir).args(args), dir)
}

fn run(cmd: &mut Command, dir: &Path) -> String {
    let out = cmd.output().expect("spawn git (is it installed?)");
    if !out.status.success() {
        panic!(
            "{:?} in {} failed ({}):\n{}",
            cmd,
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    stdout.truncate(stdout.trim_end_matches('\n').len());
    stdout
}

/// The files every [`Remote`] starts with.
pub const INITIAL_FILES: &[(&str, &str)] = &[
    ("README.md", "gitfeed test repository\n"),
    ("src/lib.txt", "one\ntwo\nthree\n"),
];

/// A bare repository that the test servers export, plus a private work
/// clone used to create commits and push them into it.
///
/// The bare repository lives at `root()/name()`, so `root()` is what a
/// server serves and `name()` is the path in a URL. Commit timestamps come
/// from a per-repository clock that advances a minute per commit, which
/// keeps ids reproducible and guarantees that a rewritten commit never gets
/// the id of the one it replaces.
pub struct Remote {
    /// Keeps the directories alive; removed on drop.
    _dir: TempDir,
    root: PathBuf,
    name: String,
    bare: PathBuf,
    work: PathBuf,
    clock: AtomicU64,
}

impl Remote {
    /// A bare repository `repo.git` with default branch `main` holding one
    /// commit with [`INITIAL_FILES`].
    pub fn new() -> Remote {
        Remote::named("repo.git")
    }

    /// Like [`Remote::new`] with the bare repository called `name`
    /// (for example `"team/project.git"`).
    pub fn named(name: &str) -> Remote {
        let dir = super::unique_dir();
        let root = dir.path().join("srv");
        Remote::create(dir, root, name)
    }

    /// Creates the bare repository as `root/name`, next to other
    /// repositories in a directory the caller owns (for serving several
    /// repositories from one server). The work clone still lives in a
    /// temporary directory of its own.
    pub fn new_in(root: &Path, name: &str) -> Remote {
        Remote::create(super::unique_dir(), root.to_path_buf(), name)
    }

    fn create(dir: TempDir, root: PathBuf, name: &str) -> Remote {
        let bare = root.join(name);
        let work = dir.path().join("work");
        fs::create_dir_all(&bare).expect("create the bare repository directory");
        fs::create_dir_all(&work).expect("create the work clone directory");
        git_in(&bare, &["init", "-q", "--bare", "-b", "main"]);
        git_in(&work, &["init", "-q", "-b", "main"]);
        git_in(
            &work,
            &[
                OsStr::new("remote"),
                "add".as_ref(),
                "origin".as_ref(),
                bare.as_os_str(),
            ],
        );
        let remote = Remote {
            _dir: dir,
            root,
            name: name.to_string(),
            bare,
            work,
            clock: AtomicU64::new(1_700_000_000),
        };
        let initial: Vec<(&str, Option<&str>)> = INITIAL_FILES
            .iter()
            .map(|&(path, text)| (path, Some(text)))
            .collect();
        remote.commit(&initial, "initial commit");
        remote
    }

    /// Writes (`Some(text)`) or deletes (`None`) files in the work clone,
    /// commits (an empty commit if nothing changed) and pushes to `main` of
    /// the bare repository. Returns the new commit id.
    pub fn commit(&self, files: &[(&str, Option<&str>)], msg: &str) -> String {
        self.apply(files);
        let id = self.commit_local(msg);
        self.git(&["push", "-q", "origin", "HEAD:refs/heads/main"]);
        id
    }

    /// Rewrites history: drops the newest commit of `main`, commits `files`
    /// on top of its parent instead and force-pushes. Returns the new id.
    pub fn force_push_rewrite(&self, files: &[(&str, Option<&str>)], msg: &str) -> String {
        self.git(&["reset", "-q", "--hard", "HEAD~1"]);
        self.apply(files);
        let id = self.commit_local(msg);
        self.git(&["push", "-q", "--force", "origin", "HEAD:refs/heads/main"]);
        id
    }

    /// Moves `main` to an existing revision (for example `HEAD~2` to rewind)
    /// with a forced push. Returns the commit id `main` now points to.
    pub fn force_push_to(&self, rev: &str) -> String {
        self.git(&["reset", "-q", "--hard", rev]);
        self.git(&["push", "-q", "--force", "origin", "HEAD:refs/heads/main"]);
        self.head()
    }

    /// Creates or moves branch `branch` of the bare repository to `rev` (a
    /// revision of the work clone).
    pub fn push_branch(&self, branch: &str, rev: &str) {
        self.git(&[
            "push",
            "-q",
            "--force",
            "origin",
            &format!("{rev}:refs/heads/{branch}"),
        ]);
    }

    /// Commits `files` on top of `parent` (a revision of the work clone) and force-pushes the
    /// commit to branch `branch` of the bare repository, leaving `main` as it was. Returns the
    /// new commit id.
    pub fn commit_to(
        &self,
        branch: &str,
        parent: &str,
        files: &[(&str, Option<&str>)],
        msg: &str,
    ) -> String {
        self.git(&["checkout", "-q", "-B", branch, parent]);
        self.apply(files);
        let id = self.commit_local(msg);
        self.push_branch(branch, &id);
        self.git(&["checkout", "-q", "main"]);
        id
    }

    /// Deletes branch `branch` from the bare repository.
    pub fn delete_branch(&self, branch: &str) {
        self.git(&["push", "-q", "origin", "--delete", branch]);
    }

    /// The commit `main` points to in the bare repository, i.e. what a
    /// client fetching now would get.
    pub fn head(&self) -> String {
        self.git_bare(&["rev-parse", "refs/heads/main"])
    }

    /// Absolute path of the bare repository.
    pub fn bare_path(&self) -> PathBuf {
        self.bare.clone()
    }

    /// The directory the bare repository sits in; what servers export.
    pub fn root(&self) -> PathBuf {
        self.root.clone()
    }

    /// Path of the bare repository relative to [`Remote::root`]; the path
    /// part of a server URL.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Absolute path of the work clone.
    pub fn work_path(&self) -> PathBuf {
        self.work.clone()
    }

    /// A `file://` URL of the bare repository.
    pub fn file_url(&self) -> String {
        format!("file://{}", self.bare.display())
    }

    /// Runs git in the work clone, returns stdout; panics with stderr on
    /// failure.
    pub fn git(&self, args: &[&str]) -> String {
        git_in(&self.work, args)
    }

    /// Runs git in the bare repository, returns stdout; panics with stderr
    /// on failure.
    pub fn git_bare(&self, args: &[&str]) -> String {
        git_in(&self.bare, args)
    }

    fn apply(&self, files: &[(&str, Option<&str>)]) {
        for &(path, content) in files {
            let full = self.work.join(path);
            match content {
                Some(text) => {
                    if let Some(parent) = full.parent() {
                        fs::create_dir_all(parent)
                            .expect("create parent directories in the work clone");
                    }
                    fs::write(&full, text).expect("write a file in the work clone");
                }
                None => fs::remove_file(&full)
                    .expect("delete a file from the work clone (does it exist?)"),
            }
        }
    }

    fn commit_local(&self, msg: &str) -> String {
        let when = format!("@{} +0000", self.clock.fetch_add(60, Ordering::Relaxed));
        git_in(&self.work, &["add", "-A"]);
        run(
            git_command()
                .current_dir(&self.work)
                .env("GIT_AUTHOR_DATE", &when)
                .env("GIT_COMMITTER_DATE", &when)
                .args(["commit", "-q", "--allow-empty", "--no-verify", "-m", msg]),
            &self.work,
        );
        git_in(&self.work, &["rev-parse", "HEAD"])
    }
}

/// `git diff --no-renames --name-status old new` in the bare repository
/// `bare`, as `(status letter, path)` pairs in git's order: what a correct
/// change list between the two commits must contain.
pub fn name_status(bare: &Path, old: &str, new: &str) -> Vec<(char, String)> {
    // -z keeps unusual file names verbatim instead of C-quoted.
    let out = git_in(
        bare,
        &["diff", "--no-renames", "--name-status", "-z", old, new],
    );
    let mut fields = out.split('\0').filter(|f| !f.is_empty());
    let mut changes = Vec::new();
    while let (Some(status), Some(path)) = (fields.next(), fields.next()) {
        let letter = status
            .chars()
            .next()
            .expect("git prints a status letter per entry");
        changes.push((letter, path.to_string()));
    }
    changes
}
