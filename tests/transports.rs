//! The same scenario over every transport: first sync, add/modify/delete, nothing new, force
//! push, missing branch. Each update is compared with the git CLI's view of the same commits.

use gitfeed::{ErrorKind, Follower, Source, Update, acknowledge};

use crate::harness::letters;
use crate::util::{Fault, GitDaemon, HttpServer, Remote, Sshd, name_status, unique_dir};

/// One attempt, acknowledging its update as a consumer would once it is applied.
fn sync_once(cache: &std::path::Path, source: &Source) -> Result<Option<Update>, gitfeed::Error> {
    let update = gitfeed::sync_once(cache, source)?;
    if let Some(update) = &update {
        acknowledge(cache, source, &update.new)?;
    }
    Ok(update)
}

/// Runs the scenario against `url`, which serves `remote`.
fn scenario(remote: &Remote, url: &str, ssh_command: Option<String>) {
    let cache = unique_dir();
    let mut source = Source::new("t", url);
    source.ssh_command = ssh_command;

    // First sync: no old commit, every file listed as added.
    let first = sync_once(cache.path(), &source)
        .expect("first sync")
        .expect("a first update");
    assert_eq!(first.old, None);
    assert_eq!(first.new, remote.head());
    assert_eq!(first.reference, "refs/heads/main");
    assert!(!first.forced);
    let listed = remote.git_bare(&["ls-tree", "-r", "--name-only", "main"]);
    let expected: Vec<(char, String)> = listed.lines().map(|path| ('A', path.to_owned())).collect();
    assert_eq!(letters(&first), expected);
    for change in &first.changes {
        let id = remote.git_bare(&["rev-parse", &format!("main:{}", change.path)]);
        assert_eq!(change.id.as_deref(), Some(id.trim()));
    }

    // Nothing new: no update.
    assert_eq!(
        sync_once(cache.path(), &source).expect("no-change poll"),
        None
    );

    // Add, modify, delete, and a file turned into a directory.
    let before = remote.head();
    remote.commit(
        &[
            ("added.txt", Some("new\n")),
            ("src/lib.txt", Some("one\ntwo\nthree\nfour\n")),
            ("README.md", None),
            ("docs/guide/intro.md", Some("hello\n")),
        ],
        "change things",
    );
    remote.commit(
        &[("docs/guide/intro.md", Some("hello again\n"))],
        "second change",
    );
    let update = sync_once(cache.path(), &source)
        .expect("second sync")
        .expect("an update");
    assert_eq!(update.old.as_deref(), Some(before.as_str()));
    assert_eq!(update.new, remote.head());
    assert!(!update.forced);
    let mut expected = name_status(&remote.bare_path(), &before, &update.new);
    expected.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(letters(&update), expected);
    let deleted = update
        .changes
        .iter()
        .find(|c| c.path == "README.md")
        .expect("deletion listed");
    assert_eq!(deleted.id, None);

    // History rewritten: forced, and changes still match git's diff of the two commits.
    let before = remote.head();
    remote.force_push_rewrite(&[("rewritten.txt", Some("x\n"))], "rewrite");
    let update = sync_once(cache.path(), &source)
        .expect("sync after force push")
        .expect("an update");
    assert!(update.forced, "a rewrite must be reported as forced");
    assert_eq!(update.old.as_deref(), Some(before.as_str()));
    let mut expected = name_status(&remote.bare_path(), &before, &update.new);
    expected.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(letters(&update), expected);

    // A missing branch is a permanent error that says what to check.
    let mut missing = source.clone();
    missing.reference = Some("no-such-branch".into());
    let err = sync_once(cache.path(), &missing).expect_err("missing branch");
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert!(
        err.to_string()
            .contains("branch `no-such-branch` not found"),
        "{err}"
    );
}

#[test]
fn local_path() {
    let remote = Remote::new();
    scenario(&remote, &remote.bare_path().to_string_lossy(), None);
}

/// The README's first command: a working copy followed by its path (`gitfeed watch .`).
#[test]
fn working_copy_path() {
    let remote = Remote::new();
    let url = format!("{}/.", remote.work_path().display());
    let cache = unique_dir();
    let source = Source::new("w", url);
    let first = sync_once(cache.path(), &source)
        .expect("first sync")
        .expect("a first update");
    assert_eq!(first.new, remote.head());
    assert_eq!(first.reference, "refs/heads/main");
    assert_eq!(
        sync_once(cache.path(), &source).expect("no-change poll"),
        None
    );
    // A commit in the working copy.
    let new = remote.commit(&[("w.txt", Some("w\n"))], "w");
    let update = sync_once(cache.path(), &source)
        .expect("poll")
        .expect("an update");
    assert_eq!(update.new, new);
    assert_eq!(letters(&update), vec![('A', "w.txt".to_owned())]);
}

#[test]
fn file_url() {
    let remote = Remote::new();
    scenario(&remote, &remote.file_url(), None);
}

#[test]
fn git_daemon() {
    let remote = Remote::new();
    let daemon = GitDaemon::start(&remote.root());
    scenario(&remote, &daemon.url(remote.name()), None);
}

#[test]
fn smart_http() {
    let remote = Remote::new();
    let server = HttpServer::start(&remote.root());
    scenario(&remote, &server.url(remote.name()), None);
}

/// Polls `follower` once, acknowledging any update; returns the commit delivered and the HTTP
/// requests that poll made.
fn requests_of_one_poll(
    server: &HttpServer,
    follower: &mut Follower,
) -> (Option<String>, Vec<crate::util::RequestLog>) {
    let (connections, before) = (server.connections(), server.requests().len());
    let update = follower.poll().expect("poll");
    if let Some(update) = &update {
        follower.acknowledge(&update.new).expect("acknowledge");
    }
    // The server logs a request once it has relayed the answer, which the client may have
    // read already: wait for one entry per connection the poll made.
    let made = server.connections() - connections;
    crate::util::settle(
        || before + made - server.requests().len().min(before + made),
        0,
        std::time::Duration::from_secs(5),
    );
    (update.map(|u| u.new), server.requests().split_off(before))
}

#[test]
fn http_no_change_poll_is_one_request() {
    let remote = Remote::new();
    let server = HttpServer::start(&remote.root());
    let cache = unique_dir();
    let source = Source::new("one", server.url(remote.name()));
    let mut follower = Follower::new(cache.path(), &source).expect("valid");
    requests_of_one_poll(&server, &mut follower);
    let (delivered, poll) = requests_of_one_poll(&server, &mut follower);
    assert_eq!(delivered, None);
    assert_eq!(poll.len(), 1, "{poll:?}");
    assert_eq!(
        (poll[0].method.as_str(), poll[0].git_protocol.as_deref()),
        ("GET", None)
    );
    // A new commit still arrives, in one more request for the pack.
    let new = remote.commit(&[("b.txt", Some("b\n"))], "b");
    let (delivered, fetch) = requests_of_one_poll(&server, &mut follower);
    assert_eq!(delivered, Some(new));
    assert_eq!(fetch.len(), 2, "{fetch:?}");
}

/// A shallow fetch needs protocol v2, which a no-change poll does not: the poll stays one
/// request, and only a fetch that brings objects asks again with v2.
#[test]
fn http_shallow_source_polls_in_one_request_and_fetches_with_protocol_v2() {
    let remote = Remote::new();
    remote.commit(&[("a.txt", Some("a\n"))], "a");
    let server = HttpServer::start(&remote.root());
    let cache = unique_dir();
    let mut source = Source::new("shallow", server.url(remote.name()));
    source.depth = Some(1);
    let mut follower = Follower::new(cache.path(), &source).expect("valid");
    let is_v2 =
        |request: &crate::util::RequestLog| request.git_protocol.as_deref() == Some("version=2");
    let (delivered, clone) = requests_of_one_poll(&server, &mut follower);
    assert_eq!(delivered, Some(remote.head()));
    assert!(
        clone.iter().any(|r| r.method == "POST" && is_v2(r)),
        "{clone:?}"
    );
    let (delivered, poll) = requests_of_one_poll(&server, &mut follower);
    assert_eq!(delivered, None);
    assert_eq!(poll.len(), 1, "{poll:?}");
    assert_eq!(
        (poll[0].method.as_str(), poll[0].git_protocol.as_deref()),
        ("GET", None)
    );
    let new = remote.commit(&[("b.txt", Some("b\n"))], "b");
    let (delivered, fetch) = requests_of_one_poll(&server, &mut follower);
    assert_eq!(delivered, Some(new));
    let posts: Vec<_> = fetch.iter().filter(|r| r.method == "POST").collect();
    assert!(
        !posts.is_empty() && posts.iter().all(|r| is_v2(r)),
        "{fetch:?}"
    );
}

#[test]
fn http_remote_with_many_refs_is_polled_with_protocol_v2() {
    let remote = Remote::new();
    let head = remote.head();
    for i in 0..100 {
        remote.git_bare(&["update-ref", &format!("refs/heads/topic{i}"), &head]);
    }
    let server = HttpServer::start(&remote.root());
    let cache = unique_dir();
    let source = Source::new("many", server.url(remote.name()));
    let mut follower = Follower::new(cache.path(), &source).expect("valid");
    // The first attempt sees the long advertisement; every later one asks for v2, which
    // lists only the wanted ref.
    requests_of_one_poll(&server, &mut follower);
    let assert_v2 = |follower: &mut Follower| {
        let (_, poll) = requests_of_one_poll(&server, follower);
        assert!(!poll.is_empty());
        assert!(
            poll.iter()
                .all(|r| r.git_protocol.as_deref() == Some("version=2")),
            "{poll:?}"
        );
    };
    assert_v2(&mut follower);
    assert_v2(&mut follower);
    // A failed attempt gives up the open clone; the source still remembers the long
    // advertisement when it reopens.
    server.set_fault_for(Fault::Status500, 1);
    assert!(follower.poll().is_err());
    assert_v2(&mut follower);
}

#[test]
fn ssh() {
    let remote = Remote::new();
    let sshd = Sshd::start();
    scenario(
        &remote,
        &sshd.url(&remote.bare_path()),
        Some(sshd.ssh_command()),
    );
}

#[test]
fn ssh_scp_like() {
    let remote = Remote::new();
    let sshd = Sshd::start();
    scenario(
        &remote,
        &sshd.scp_url(&remote.bare_path()),
        Some(sshd.ssh_command_with_config()),
    );
}

#[test]
fn default_branch_follows_remote_head() {
    let remote = Remote::new();
    let trunk = remote.commit(&[("only-on-trunk.txt", Some("t\n"))], "trunk");
    remote.push_branch("trunk", "HEAD");
    let main = remote.force_push_to("HEAD~1");
    assert_ne!(main, trunk);
    remote.git_bare(&["symbolic-ref", "HEAD", "refs/heads/trunk"]);
    let cache = unique_dir();
    let update = gitfeed::sync_once(cache.path(), &Source::new("t", remote.file_url()))
        .expect("sync")
        .expect("update");
    assert_eq!(update.reference, "refs/heads/trunk");
    assert_eq!(update.new, trunk);
}

#[test]
fn malformed_urls_fail_before_any_connection() {
    let cache = unique_dir();
    for url in [
        "",
        "http://",
        "ftp://127.0.0.1/x.git",
        "ext::sh -c true",
        "git://127.0.0.1",
    ] {
        let err = gitfeed::sync_once(cache.path(), &Source::new("t", url)).expect_err(url);
        assert_eq!(err.kind(), ErrorKind::Permanent, "{url}: {err}");
    }
    assert_eq!(
        std::fs::read_dir(cache.path()).expect("cache dir").count(),
        0,
        "nothing may be written for an invalid source"
    );
}
