//! A policy agent: follows a policy repository, loads its Rego policies and data into
//! [regorus](https://crates.io/crates/regorus) after every update, evaluates one query, and
//! prints one JSON line per decision on stdout.
//!
//! ```text
//! policy_agent [URL] [QUERY] [--state DIR] [--interval T]
//! ```
//!
//! `URL` defaults to `.` (the repository it is run from), `QUERY` to `data.policy.allow`,
//! `--state` to `gitfeed-policy-agent` in the temporary directory, `--interval` to `2s`. The
//! agent follows the source `policies` with its cache in `DIR/cache` and its snapshots in
//! `DIR/checkout`, and loads every `*.rego` file and every `data.json` (whose values go under
//! the path of the directory holding it, as in an OPA bundle: `teams/data.json` is
//! `data.teams`). A line says which commit was read, which commit's policies are in force,
//! and their decision (the value of the query's first result, `null` when it is undefined):
//!
//! ```text
//! {"commit":"<40 hex>","policy":"<40 hex>","decision":true}
//! {"commit":"<40 hex>","error":"--> policy.rego:3:1 …","policy":"<40 hex>","decision":true}
//! ```
//!
//! regorus is built without its optional builtins (regex, time, glob, …): a policy that calls
//! one fails to load, like any other broken policy.
//!
//! **A broken commit.** When a commit's policies do not parse, its data is not JSON or the
//! query fails on them, the agent keeps the last good policy set in force, reports the error
//! (as above, and on stderr) and still acknowledges the commit: it applied what could be
//! applied, and the same commit sent again would only fail again. The next commit that loads
//! replaces the policy set.
//!
//! **State across restarts.** A feed does not send an acknowledged update again, so the agent
//! rebuilds its state from disk before it starts the feed. gitfeed writes each commit's files
//! to `DIR/checkout/.snapshots/<commit>/` and swaps `DIR/checkout/current` to it before it
//! sends the update, so `current` holds the newest commit the agent may have heard of. That
//! commit may be a broken one, so the agent also keeps the last policy set that loaded in
//! `DIR/last-good.json`, written before the commit is acknowledged. At start it restores that
//! set, reads `current` as it would for an update (that line carries `"restored":true`), and
//! acknowledges the commit it read before the feed runs. The feed then sends an update exactly
//! when the branch is somewhere else, even when the acknowledgement of the last update was
//! lost in a crash and the branch has since moved back to the commit acknowledged before it.
//!
//! To try it, make a policy repository and follow it:
//!
//! ```text
//! git init -b main /tmp/policies && cd /tmp/policies
//! printf 'package policy\n\nallow if data.settings.open\n' > policy.rego
//! echo '{"settings": {"open": true}}' > data.json
//! git add . && git commit -m open
//! cargo run --example policy_agent -- /tmp/policies
//! ```
//!
//! then commit changes to `data.json` and `policy.rego` (a broken one too), and stop and start
//! the agent in between.
//!
//! Run with: cargo run --example policy_agent -- /tmp/policies data.policy.allow

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use gitfeed::{Event, Feed, Source};
use serde::{Deserialize, Serialize};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let options = Options::parse()?;
    let cache = options.state.join("cache");
    let checkout = options.state.join("checkout");

    let mut source = Source::new("policies", &options.url);
    source.interval = options.interval;
    source.checkout = Some(checkout.clone());
    // Extensions and include patterns add up: every policy, and the data beside them.
    source.filter.extensions = vec!["rego".into()];
    source.filter.include = vec!["data.json".into()];
    source.validate()?;

    let mut agent = Agent {
        query: options.query,
        saved: options.state.join("last-good.json"),
        in_force: None,
    };
    // Before the feed runs, so that nothing swaps `current` while it is read.
    agent.restore();
    if let Some(commit) = agent.apply_current(&checkout, true)? {
        // What `current` shows is applied now. Saying so before the feed starts makes it send
        // an update whenever the branch is elsewhere: the acknowledgement of the last update
        // may have been lost, and the branch moved back to the commit acknowledged before.
        gitfeed::acknowledge(&cache, &source, &commit)?;
    }

    let feed = Feed::new(&cache);
    let events = feed.events();
    let handle = feed.handle();
    feed.add(source)?;
    std::thread::spawn(move || feed.run());

    while let Ok(event) = events.recv_blocking() {
        match event {
            Event::Update(update) => match agent.apply_current(&checkout, false) {
                // Applied, or refused and reported: either way this commit is dealt with.
                Ok(_) => handle.acknowledge(&update.source, &update.new)?,
                // The snapshot could not be read: not acknowledged, so a restart reads it
                // again.
                Err(err) => eprintln!("policy_agent: {}: {err}", update.new),
            },
            Event::State(state) => eprintln!(
                "policy_agent: {} is {:?}{}",
                state.source,
                state.state,
                state.error.map(|e| format!(": {e}")).unwrap_or_default()
            ),
            _ => {}
        }
    }
    Ok(())
}

/// What the agent holds: the query, where it keeps its last good policy set, and that set.
struct Agent {
    query: String,
    saved: PathBuf,
    in_force: Option<InForce>,
}

/// A policy set that loaded, and the query's decision on it.
struct InForce {
    commit: String,
    /// Kept to answer queries; this agent asks one, once per policy set.
    _engine: regorus::Engine,
    decision: serde_json::Value,
}

/// A commit's policy files: path -> text.
#[derive(Serialize, Deserialize)]
struct PolicySet {
    commit: String,
    files: BTreeMap<String, String>,
}

/// One line on stdout.
#[derive(Serialize)]
struct Line<'a> {
    commit: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    policy: Option<&'a str>,
    decision: &'a serde_json::Value,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    restored: bool,
}

impl Agent {
    /// Puts the policy set saved by an earlier run in force, if there is one that still loads.
    fn restore(&mut self) {
        let Ok(text) = fs::read(&self.saved) else {
            return;
        };
        let loaded = serde_json::from_slice::<PolicySet>(&text)
            .map_err(|err| err.to_string())
            .and_then(|set| self.load(&set));
        match loaded {
            Ok(in_force) => self.in_force = Some(in_force),
            Err(err) => eprintln!(
                "policy_agent: the saved policy set {} no longer loads: {err}",
                self.saved.display()
            ),
        }
    }

    /// Reads the snapshot `checkout/current` points to, puts its policies in force when they
    /// load (and saves them), and prints one line. Returns the commit read, `None` when there
    /// is no snapshot yet; fails only when the snapshot cannot be read.
    fn apply_current(&mut self, checkout: &Path, restored: bool) -> io::Result<Option<String>> {
        let Some(set) = read_snapshot(checkout)? else {
            // Nothing written yet; a restored set (if any) is all there is.
            if restored && let Some(in_force) = &self.in_force {
                self.print(&in_force.commit, None, true);
            }
            return Ok(None);
        };
        let error = if self.in_force.as_ref().map(|f| f.commit.as_str()) == Some(&set.commit) {
            None // Already in force: the same files give the same decision.
        } else {
            match self.load(&set) {
                Ok(in_force) => {
                    save(&self.saved, &set)?;
                    self.in_force = Some(in_force);
                    None
                }
                Err(err) => {
                    eprintln!("policy_agent: {}: {err}", set.commit);
                    Some(err)
                }
            }
        };
        self.print(&set.commit, error.as_deref(), restored);
        Ok(Some(set.commit))
    }

    /// Loads `set` into a new engine and evaluates the query on it.
    fn load(&self, set: &PolicySet) -> Result<InForce, String> {
        let mut engine = regorus::Engine::new();
        for (path, text) in &set.files {
            if path.ends_with(".rego") {
                // The parser's message names the file and line already.
                engine
                    .add_policy(path.clone(), text.clone())
                    .map_err(|err| err.to_string().trim().to_owned())?;
            } else {
                let mut data: serde_json::Value =
                    serde_json::from_str(text).map_err(|err| format!("{path}: {err}"))?;
                // `a/b/data.json` holds `data.a.b`.
                for directory in path.split('/').rev().skip(1) {
                    data = serde_json::json!({ directory: data });
                }
                engine
                    .add_data(regorus::Value::from(data))
                    .map_err(|err| format!("{path}: {err}"))?;
            }
        }
        let results = engine
            .eval_query(self.query.clone(), false)
            .map_err(|err| format!("{}: {}", self.query, err.to_string().trim()))?;
        let decision = match results.result.first().and_then(|r| r.expressions.first()) {
            Some(expression) => {
                serde_json::to_value(&expression.value).map_err(|err| err.to_string())?
            }
            None => serde_json::Value::Null, // undefined
        };
        Ok(InForce {
            commit: set.commit.clone(),
            _engine: engine,
            decision,
        })
    }

    fn print(&self, commit: &str, error: Option<&str>, restored: bool) {
        let line = Line {
            commit,
            error,
            policy: self.in_force.as_ref().map(|f| f.commit.as_str()),
            decision: self
                .in_force
                .as_ref()
                .map_or(&serde_json::Value::Null, |f| &f.decision),
            restored,
        };
        let text = serde_json::to_string(&line).expect("a line of strings and JSON values");
        // stdout is line-buffered: each line goes out whole.
        println!("{text}");
    }
}

/// The files of the snapshot `checkout/current` points to, or `None` before the first one.
fn read_snapshot(checkout: &Path) -> io::Result<Option<PolicySet>> {
    // Resolved once, and every file read through the resolved path: a swap in between cannot
    // mix two commits.
    let snapshot = match fs::canonicalize(checkout.join("current")) {
        Ok(path) => path,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    let commit = snapshot
        .file_name()
        .and_then(|name| name.to_str())
        .ok_or_else(|| io::Error::other("`current` names no commit"))?
        .to_owned();
    let mut files = BTreeMap::new();
    read_tree(&snapshot, "", &mut files)?;
    Ok(Some(PolicySet { commit, files }))
}

fn read_tree(dir: &Path, prefix: &str, files: &mut BTreeMap<String, String>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name
            .to_str()
            .ok_or_else(|| io::Error::other(format!("{prefix}{name:?} is not UTF-8")))?;
        let path = format!("{prefix}{name}");
        if entry.file_type()?.is_dir() {
            read_tree(&entry.path(), &format!("{path}/"), files)?;
        } else if fs::metadata(entry.path())?.is_file() {
            // A file that is not text would not load as Rego or JSON either.
            let text = String::from_utf8(fs::read(entry.path())?)
                .map_err(|_| io::Error::other(format!("{path} is not UTF-8 text")))?;
            files.insert(path, text);
        }
    }
    Ok(())
}

/// Writes `set` to `path` atomically: a crash leaves the old set or the new one.
fn save(path: &Path, set: &PolicySet) -> io::Result<()> {
    let temporary = path.with_extension("json.tmp");
    let mut file = fs::File::create(&temporary)?;
    file.write_all(&serde_json::to_vec(set)?)?;
    file.sync_all()?;
    fs::rename(&temporary, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

struct Options {
    url: String,
    query: String,
    state: PathBuf,
    interval: Duration,
}

impl Options {
    fn parse() -> Result<Self, String> {
        let mut positional = Vec::new();
        let mut state = std::env::temp_dir().join("gitfeed-policy-agent");
        let mut interval = Duration::from_secs(2);
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = || args.next().ok_or(format!("{arg} needs a value"));
            match arg.as_str() {
                "--state" => state = value()?.into(),
                "--interval" => {
                    interval = gitfeed::parse_duration(&value()?).map_err(|err| err.to_string())?
                }
                flag if flag.starts_with("--") => return Err(format!("unknown option {flag}")),
                _ => positional.push(arg),
            }
        }
        let mut positional = positional.into_iter();
        let url = positional.next().unwrap_or_else(|| ".".into());
        let query = positional
            .next()
            .unwrap_or_else(|| "data.policy.allow".into());
        fs::create_dir_all(&state).map_err(|err| format!("{}: {err}", state.display()))?;
        Ok(Self {
            url,
            query,
            state,
            interval,
        })
    }
}
