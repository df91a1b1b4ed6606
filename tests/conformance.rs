//! One behaviour per option, on every transport: each cell of the matrix (refs: a branch, a
//! full ref, tags by bare name, `HEAD`, pinned commits; options: depth, a change of depth,
//! filters, mirrors) runs against a path, `file://`, `git://`, `http://`, `https://` and
//! `ssh://` remote and must give the same result on each.
//!
//! Each transport is one test with one server, and each cell has a repository of its own on
//! it, so the transports, and the cells of one transport, run side by side. A failing cell
//! does not hide the others: the test runs every cell and then names each one that failed.

use std::path::{Path, PathBuf};

use gitfeed::{Source, Update, acknowledge};

use crate::harness::letters;
use crate::util::{GitDaemon, HttpServer, HttpsServer, Remote, Sshd, name_status, unique_dir};

/// The server behind one column of the matrix.
enum Server {
    Path,
    File,
    Git(GitDaemon),
    Http(HttpServer),
    Https(HttpsServer),
    Ssh(Sshd),
}

/// One transport: where the cells' repositories live and how a source reaches them.
struct Transport {
    server: Server,
    /// The directory the server serves; every cell's bare repository is made in it.
    root: PathBuf,
    _root: tempfile::TempDir,
}

impl Transport {
    fn start(make: impl FnOnce(&Path) -> Server) -> Transport {
        let dir = unique_dir();
        let root = dir.path().join("srv");
        std::fs::create_dir_all(&root).expect("create the served directory");
        Transport {
            server: make(&root),
            root,
            _root: dir,
        }
    }

    /// A repository of the cell's own on this transport's server.
    fn remote(&self, cell: &str) -> Remote {
        Remote::new_in(&self.root, &format!("{cell}.git"))
    }

    /// The URL of `remote` over this transport.
    fn url(&self, remote: &Remote) -> String {
        match &self.server {
            Server::Path => remote.bare_path().to_string_lossy().into_owned(),
            Server::File => remote.file_url(),
            Server::Git(daemon) => daemon.url(remote.name()),
            Server::Http(server) => server.url(remote.name()),
            Server::Https(server) => server.url(remote.name()),
            Server::Ssh(sshd) => sshd.url(&remote.bare_path()),
        }
    }

    /// A source following `remote` over this transport, told what the transport needs (the
    /// test CA, the ssh command).
    fn source(&self, remote: &Remote, reference: Option<&str>) -> Source {
        let mut source = Source::new("c", self.url(remote));
        source.reference = reference.map(str::to_owned);
        self.configure(&mut source);
        source
    }

    fn configure(&self, source: &mut Source) {
        match &self.server {
            Server::Https(server) => source.ca_file = Some(server.ca_file().to_owned()),
            Server::Ssh(sshd) => source.ssh_command = Some(sshd.ssh_command()),
            _ => {}
        }
    }
}

/// One attempt that must succeed, acknowledging its update as a consumer would.
fn sync(cache: &Path, source: &Source) -> Option<Update> {
    let update = gitfeed::sync_once(cache, source)
        .unwrap_or_else(|err| panic!("sync of {:?}: {err}", source.reference));
    if let Some(update) = &update {
        acknowledge(cache, source, &update.new).expect("acknowledge");
    }
    update
}

/// One attempt that must deliver an update.
fn update(cache: &Path, source: &Source) -> Update {
    sync(cache, source)
        .unwrap_or_else(|| panic!("no update for {:?}, one was due", source.reference))
}

/// Every file of `rev` as added: what a first update lists.
fn listing(remote: &Remote, rev: &str) -> Vec<(char, String)> {
    remote
        .git_bare(&["ls-tree", "-r", "--name-only", rev])
        .lines()
        .map(|path| ('A', path.to_owned()))
        .collect()
}

/// `git diff --name-status old new`, sorted by path as updates are.
fn diff(remote: &Remote, old: &str, new: &str) -> Vec<(char, String)> {
    let mut expected = name_status(&remote.bare_path(), old, new);
    expected.sort_by(|a, b| a.1.cmp(&b.1));
    expected
}

/// Creates or moves tag `name` to `rev` of the work clone and pushes it.
fn tag(remote: &Remote, name: &str, rev: &str, annotated: bool) {
    if annotated {
        remote.git(&["tag", "-f", "-a", "-m", name, name, rev]);
    } else {
        remote.git(&["tag", "-f", name, rev]);
    }
    remote.git(&["push", "-q", "-f", "origin", &format!("refs/tags/{name}")]);
}

/// The clone (`repo.git`) in the cache for `depth`: its directory ends with `-depth<N>`, or
/// has no depth in its name for a full clone.
fn clone_of_depth(cache: &Path, depth: Option<u32>) -> PathBuf {
    std::fs::read_dir(cache.join("clones"))
        .expect("the cache's clones")
        .map(|entry| entry.expect("entry").path())
        .find(|path| {
            let name = path.to_string_lossy();
            path.join("repo.git").exists()
                && match depth {
                    Some(depth) => name.ends_with(&format!("-depth{depth}")),
                    None => !name.contains("-depth"),
                }
        })
        .unwrap_or_else(|| panic!("no clone of depth {depth:?} in {}", cache.display()))
        .join("repo.git")
}

/// Commits the history of `commit` in `clone` holds, as git counts them (a `shallow` file
/// cuts the walk).
fn depth_of(clone: &Path, commit: &str) -> usize {
    crate::util::git_in(clone, &["rev-list", "--count", commit])
        .trim()
        .parse()
        .expect("a count")
}

/// Follows branch `dev` by the name `reference` (bare or full).
fn follows_branch(transport: &Transport, cell: &str, reference: &str) {
    let remote = transport.remote(cell);
    let cache = unique_dir();
    let first = remote.commit_to("dev", "main", &[("dev.txt", Some("1\n"))], "dev 1");
    let source = transport.source(&remote, Some(reference));
    let delivered = update(cache.path(), &source);
    assert_eq!(delivered.new, first);
    assert_eq!(delivered.old, None);
    assert_eq!(delivered.reference, "refs/heads/dev");
    assert_eq!(letters(&delivered), listing(&remote, &first));
    assert_eq!(sync(cache.path(), &source), None, "nothing moved");
    // Another branch moving is nothing to this source.
    remote.commit(&[("main.txt", Some("m\n"))], "main moves");
    assert_eq!(sync(cache.path(), &source), None, "only main moved");
    let second = remote.commit_to("dev", "dev", &[("dev.txt", Some("2\n"))], "dev 2");
    let delivered = update(cache.path(), &source);
    assert_eq!(delivered.old.as_deref(), Some(first.as_str()));
    assert_eq!(delivered.new, second);
    assert!(!delivered.forced);
    assert_eq!(letters(&delivered), diff(&remote, &first, &second));
}

fn branch(transport: &Transport) {
    follows_branch(transport, "branch", "dev");
}

fn full_ref(transport: &Transport) {
    follows_branch(transport, "full-ref", "refs/heads/dev");
}

/// A tag by its bare name, and the tag moved.
fn follows_tag(transport: &Transport, cell: &str, annotated: bool) {
    let remote = transport.remote(cell);
    let cache = unique_dir();
    let tagged = remote.commit(&[("a.txt", Some("a\n"))], "tagged");
    tag(&remote, "v1", &tagged, annotated);
    remote.commit(&[("b.txt", Some("b\n"))], "after the tag");
    let source = transport.source(&remote, Some("v1"));
    let delivered = update(cache.path(), &source);
    assert_eq!(delivered.new, tagged, "the tag's commit");
    assert_eq!(delivered.reference, "refs/tags/v1");
    assert_eq!(letters(&delivered), listing(&remote, &tagged));
    assert_eq!(sync(cache.path(), &source), None, "nothing moved");
    // A moved tag is an update.
    let head = remote.head();
    tag(&remote, "v1", &head, annotated);
    let delivered = update(cache.path(), &source);
    assert_eq!(delivered.old.as_deref(), Some(tagged.as_str()));
    assert_eq!(delivered.new, head);
    assert_eq!(letters(&delivered), diff(&remote, &tagged, &head));
}

fn lightweight_tag(transport: &Transport) {
    follows_tag(transport, "lightweight-tag", false);
}

fn annotated_tag(transport: &Transport) {
    follows_tag(transport, "annotated-tag", true);
}

/// A name that is both a branch and a tag resolves to the branch, as `git clone --branch`.
fn branch_before_tag(transport: &Transport) {
    let remote = transport.remote("branch-before-tag");
    let cache = unique_dir();
    let on_branch = remote.commit_to("both", "main", &[("x.txt", Some("x\n"))], "branch");
    let head = remote.head();
    tag(&remote, "both", &head, true);
    let delivered = update(cache.path(), &transport.source(&remote, Some("both")));
    assert_eq!(delivered.new, on_branch);
    assert_eq!(delivered.reference, "refs/heads/both");
}

/// `HEAD` follows the branch the remote's `HEAD` names, like no ref at all.
fn head(transport: &Transport) {
    let remote = transport.remote("head");
    remote.commit_to("trunk", "main", &[("t.txt", Some("t\n"))], "trunk");
    remote.git_bare(&["symbolic-ref", "HEAD", "refs/heads/trunk"]);
    let cache = unique_dir();
    let source = transport.source(&remote, Some("HEAD"));
    let delivered = update(cache.path(), &source);
    let old = remote.git_bare(&["rev-parse", "trunk"]);
    assert_eq!(delivered.new, old);
    assert_eq!(delivered.reference, "refs/heads/trunk");
    assert_eq!(sync(cache.path(), &source), None, "nothing moved");
    let new = remote.commit_to("trunk", "trunk", &[("t.txt", Some("u\n"))], "more");
    let delivered = update(cache.path(), &source);
    assert_eq!(delivered.old.as_deref(), Some(old.as_str()));
    assert_eq!(delivered.new, new);
    // No ref at all means the same.
    let delivered = update(unique_dir().path(), &transport.source(&remote, None));
    assert_eq!(delivered.new, new);
    assert_eq!(delivered.reference, "refs/heads/trunk");
}

/// A pinned commit is delivered once, and never again.
fn pinned(transport: &Transport, cell: &str, older: bool) {
    let remote = transport.remote(cell);
    let cache = unique_dir();
    let mut pin = remote.commit(&[("p.txt", Some("1\n"))], "one");
    if older {
        // No ref points at it any more.
        remote.commit(&[("p.txt", Some("2\n"))], "two");
        remote.commit(&[("p.txt", Some("3\n"))], "three");
    } else {
        pin = remote.head();
    }
    let source = transport.source(&remote, Some(&pin));
    let delivered = update(cache.path(), &source);
    assert_eq!(delivered.new, pin);
    assert_eq!(delivered.old, None);
    assert_eq!(letters(&delivered), listing(&remote, &pin));
    remote.commit(&[("p.txt", Some("4\n"))], "four");
    assert_eq!(sync(cache.path(), &source), None, "a pin never moves");
}

fn pinned_tip(transport: &Transport) {
    pinned(transport, "pinned-tip", false);
}

fn pinned_older(transport: &Transport) {
    pinned(transport, "pinned-older", true);
}

/// `depth` 1: one commit deep with a `shallow` file on the first sync and after each update.
fn depth_one(transport: &Transport) {
    let remote = transport.remote("depth-one");
    let cache = unique_dir();
    remote.commit(&[("d.txt", Some("1\n"))], "one");
    remote.commit(&[("d.txt", Some("2\n"))], "two");
    let mut source = transport.source(&remote, None);
    source.depth = Some(1);
    let delivered = update(cache.path(), &source);
    assert_eq!(delivered.new, remote.head());
    assert_eq!(letters(&delivered), listing(&remote, &delivered.new));
    let clone = clone_of_depth(cache.path(), Some(1));
    assert!(clone.join("shallow").is_file(), "no shallow file");
    assert_eq!(depth_of(&clone, &delivered.new), 1);
    assert_eq!(sync(cache.path(), &source), None, "nothing moved");
    let mut old = delivered.new;
    for round in 0..2 {
        // The second round brings two commits, the first of which the clone never sees.
        for step in 0..=round {
            remote.commit(
                &[(&format!("d{step}.txt"), Some(&format!("{round}\n")))],
                "next",
            );
        }
        let new = remote.head();
        let delivered = update(cache.path(), &source);
        assert_eq!(
            delivered.old.as_deref(),
            Some(old.as_str()),
            "round {round}"
        );
        assert_eq!(delivered.new, new, "round {round}");
        if round == 0 {
            // With more new commits than the depth, the clone never sees the ones between
            // `old` and `new`, so it cannot tell a fast-forward from a rewrite.
            assert!(!delivered.forced, "a fast-forward reported as forced");
        }
        assert_eq!(
            letters(&delivered),
            diff(&remote, &old, &new),
            "round {round}"
        );
        assert!(
            clone.join("shallow").is_file(),
            "round {round}: no shallow file"
        );
        assert_eq!(depth_of(&clone, &new), 1, "round {round}");
        old = new;
    }
}

/// Another depth in the next run: the history is what the new depth asks for.
fn depth_change(transport: &Transport) {
    let remote = transport.remote("depth-change");
    let cache = unique_dir();
    for i in 0..4 {
        remote.commit(&[("d.txt", Some(&format!("{i}\n")))], "more");
    }
    let head = remote.head();
    let full: usize = remote
        .git_bare(&["rev-list", "--count", "main"])
        .trim()
        .parse()
        .expect("a count");
    let mut source = transport.source(&remote, None);
    for (depth, expected) in [(Some(1), 1), (Some(3), 3), (None, full)] {
        source.depth = depth;
        let delivered = update(cache.path(), &source);
        assert_eq!(delivered.new, head, "depth {depth:?}");
        let clone = clone_of_depth(cache.path(), depth);
        assert_eq!(
            clone.join("shallow").is_file(),
            depth.is_some(),
            "depth {depth:?}: shallow file"
        );
        assert_eq!(depth_of(&clone, &head), expected, "depth {depth:?}");
    }
}

/// A filter: only matching files are delivered, and an update of others is not sent.
fn filter(transport: &Transport) {
    let remote = transport.remote("filter");
    let cache = unique_dir();
    let mut source = transport.source(&remote, None);
    source.filter.directories = vec!["src".into()];
    let delivered = update(cache.path(), &source);
    assert_eq!(letters(&delivered), vec![('A', "src/lib.txt".to_owned())]);
    remote.commit(&[("README.md", Some("changed\n"))], "outside the filter");
    assert_eq!(
        sync(cache.path(), &source),
        None,
        "a change outside the filter"
    );
    let old = remote.head();
    let new = remote.commit(
        &[("src/lib.txt", Some("x\n")), ("other.txt", Some("o\n"))],
        "inside",
    );
    let delivered = update(cache.path(), &source);
    assert_eq!(delivered.old.as_deref(), Some(old.as_str()));
    assert_eq!(delivered.new, new);
    assert_eq!(letters(&delivered), vec![('M', "src/lib.txt".to_owned())]);
}

/// A mirror serves when the URL before it refuses the connection.
fn mirror(transport: &Transport) {
    let remote = transport.remote("mirror");
    let cache = unique_dir();
    let mirror = transport.url(&remote);
    let mut source = Source::new("c", crate::util::refused_url("git"));
    source.mirrors = vec![mirror.clone()];
    transport.configure(&mut source);
    let delivered = update(cache.path(), &source);
    assert_eq!(delivered.url, mirror);
    assert_eq!(delivered.new, remote.head());
    let old = delivered.new;
    let new = remote.commit(&[("m.txt", Some("m\n"))], "m");
    let delivered = update(cache.path(), &source);
    assert_eq!(delivered.url, mirror);
    assert_eq!(delivered.old.as_deref(), Some(old.as_str()));
    assert_eq!(delivered.new, new);
}

/// One cell: it panics when the transport does not behave.
type Cell = fn(&Transport);

/// Every cell of a column of the matrix.
const CELLS: &[(&str, Cell)] = &[
    ("branch", branch),
    ("full ref", full_ref),
    ("lightweight tag", lightweight_tag),
    ("annotated tag", annotated_tag),
    ("branch before tag", branch_before_tag),
    ("HEAD", head),
    ("pinned tip", pinned_tip),
    ("pinned older commit", pinned_older),
    ("depth 1", depth_one),
    ("depth change", depth_change),
    ("filter", filter),
    ("mirror", mirror),
];

/// Cells of one transport run at once: most of a cell's time is spent waiting for git
/// processes and servers, not computing.
const WORKERS: usize = 4;

/// Runs every cell on `transport`; fails naming each cell that failed.
fn matrix(name: &str, transport: Transport) {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..WORKERS {
            scope.spawn(|| {
                loop {
                    let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((cell, run)) = CELLS.get(index) else {
                        return;
                    };
                    let run = std::panic::AssertUnwindSafe(|| run(&transport));
                    if std::panic::catch_unwind(run).is_err() {
                        failed
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push(*cell);
                    }
                }
            });
        }
    });
    let failed = failed
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    assert!(failed.is_empty(), "{name}: failed cells: {failed:?}");
}

#[test]
fn path() {
    matrix("path", Transport::start(|_| Server::Path));
}

#[test]
fn file_url() {
    matrix("file://", Transport::start(|_| Server::File));
}

#[test]
fn git_daemon() {
    matrix(
        "git://",
        Transport::start(|root| Server::Git(GitDaemon::start(root))),
    );
}

#[test]
fn http() {
    matrix(
        "http://",
        Transport::start(|root| Server::Http(HttpServer::start(root))),
    );
}

#[test]
fn https() {
    matrix(
        "https://",
        Transport::start(|root| Server::Https(HttpsServer::start(root))),
    );
}

#[test]
fn ssh() {
    matrix("ssh://", Transport::start(|_| Server::Ssh(Sshd::start())));
}
