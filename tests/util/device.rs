//! What a small device looks like to a test: a repository holding many small policy files and
//! a few large incompressible ones, and a memory cgroup to run a command in, as a device with
//! that much memory would.
//!
//! The cgroup is created under the cgroup v1 memory hierarchy (`/sys/fs/cgroup/memory`) when
//! that is writable, else under the cgroup2 hierarchy. It needs root.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use super::repo::git_command;

/// The shape of a generated repository.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Small text files (a few hundred bytes each) under `policies/`.
    pub small_files: usize,
    /// Large files of random bytes under `models/`, which no compression shrinks.
    pub large_files: usize,
    /// The size of each large file, in MiB.
    pub large_mib: usize,
}

/// Creates a bare repository `name` under `root` with one commit on `main` holding the files
/// `shape` asks for, and returns its path. The content is the same on every run (a seeded
/// generator), so figures are comparable between runs.
pub fn large_file_repo(root: &Path, name: &str, shape: Shape) -> PathBuf {
    let bare = root.join(name);
    std::fs::create_dir_all(&bare).expect("create the repository directory");
    let status = git_command()
        .args(["init", "-q", "--bare", "-b", "main"])
        .current_dir(&bare)
        .status()
        .expect("run git init");
    assert!(status.success(), "git init failed");
    let mut child = git_command()
        .args(["fast-import", "--quiet"])
        .current_dir(&bare)
        .stdin(Stdio::piped())
        .spawn()
        .expect("run git fast-import");
    {
        let stdin = child.stdin.take().expect("fast-import's stdin");
        let mut out = BufWriter::with_capacity(1 << 20, stdin);
        let message = "device content\n";
        write!(
            out,
            "commit refs/heads/main\ncommitter Bench <bench@example.org> 1700000000 +0000\n\
             data {}\n{message}",
            message.len()
        )
        .expect("feed git fast-import");
        for file in 0..shape.small_files {
            let text: String = (0..8)
                .map(|line| format!("allow[{line}] if input.rule == {file}\n"))
                .collect();
            write!(
                out,
                "M 100644 inline policies/d{:03}/rule{file}.rego\ndata {}\n{text}\n",
                file % 250,
                text.len()
            )
            .expect("feed git fast-import");
        }
        let mut random = Random(0x9e37_79b9_7f4a_7c15);
        let mut chunk = vec![0u8; 1 << 20];
        for file in 0..shape.large_files {
            write!(
                out,
                "M 100644 inline models/m{file}.bin\ndata {}\n",
                shape.large_mib << 20
            )
            .expect("feed git fast-import");
            for _ in 0..shape.large_mib {
                random.fill(&mut chunk);
                out.write_all(&chunk).expect("feed git fast-import");
            }
            out.write_all(b"\n").expect("feed git fast-import");
        }
        out.write_all(b"\n").expect("feed git fast-import");
        out.flush().expect("feed git fast-import");
    }
    assert!(
        child.wait().expect("wait for git fast-import").success(),
        "git fast-import failed"
    );
    bare
}

/// The absolute path of `program` on `PATH`: a memory cgroup runs a command through `exec`.
pub fn on_path(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(program))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_else(|| panic!("{program} is not on PATH"))
}

/// xorshift64*: fast, seeded, and its output does not compress.
struct Random(u64);

impl Random {
    fn fill(&mut self, out: &mut [u8]) {
        for word in out.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let value = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            word.copy_from_slice(&value[..word.len()]);
        }
    }
}

/// A memory cgroup with a hard limit, removed when dropped.
#[derive(Debug)]
pub struct MemoryCgroup {
    dir: PathBuf,
    limit: u64,
    v1: bool,
}

/// How a command run in a [`MemoryCgroup`] ended.
#[derive(Debug)]
pub struct Run {
    /// The command's exit status.
    pub status: ExitStatus,
    /// The cgroup's peak memory use (anonymous memory and page cache), in bytes.
    pub peak: u64,
    /// How many processes the kernel killed for lack of memory.
    pub oom_kills: u64,
    /// The command's stderr.
    pub stderr: String,
}

impl Run {
    /// True when the command exited with status 0 and nothing was killed.
    pub fn finished(&self) -> bool {
        self.status.success() && self.oom_kills == 0
    }
}

impl MemoryCgroup {
    /// Creates a cgroup limited to `limit` bytes of memory (no swap). Fails with a message
    /// saying what to do when no memory cgroup hierarchy is writable.
    pub fn create(limit: u64) -> Result<MemoryCgroup, String> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "gitfeed-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        // The v1 memory hierarchy if there is one, else cgroup2 (at the root, or beside v1).
        let mut problems = Vec::new();
        let mut created = None;
        for (root, is_v1) in [
            ("/sys/fs/cgroup/memory", true),
            ("/sys/fs/cgroup", false),
            ("/sys/fs/cgroup/unified", false),
        ] {
            let root = Path::new(root);
            let marker = if is_v1 {
                "memory.limit_in_bytes"
            } else {
                "cgroup.controllers"
            };
            if !root.join(marker).is_file() {
                continue;
            }
            if !is_v1 {
                // Children only get the memory controller when the parent delegates it.
                let _ = std::fs::write(root.join("cgroup.subtree_control"), "+memory");
            }
            let dir = root.join(&name);
            match std::fs::create_dir(&dir) {
                Ok(()) if is_v1 || dir.join("memory.max").is_file() => {
                    created = Some((dir, is_v1));
                    break;
                }
                Ok(()) => {
                    let _ = std::fs::remove_dir(&dir);
                    problems.push(format!("{}: no memory controller", root.display()));
                }
                Err(err) => problems.push(format!("{}: {err}", dir.display())),
            }
        }
        let (dir, is_v1) = created.ok_or_else(|| {
            format!(
                "no writable memory cgroup ({}): this test runs a clone under a memory limit \
                 and needs root with /sys/fs/cgroup/memory (cgroup v1) or a cgroup2 hierarchy \
                 with the memory controller mounted read-write",
                if problems.is_empty() {
                    "no cgroup hierarchy found".to_owned()
                } else {
                    problems.join("; ")
                }
            )
        })?;
        let cgroup = MemoryCgroup {
            dir,
            limit,
            v1: is_v1,
        };
        let settings: &[(&str, String)] = if is_v1 {
            &[
                ("memory.limit_in_bytes", limit.to_string()),
                ("memory.swappiness", "0".to_owned()),
            ]
        } else {
            &[
                ("memory.max", limit.to_string()),
                ("memory.swap.max", "0".to_owned()),
            ]
        };
        for (file, value) in settings {
            let path = cgroup.dir.join(file);
            // There may be no swap accounting at all; the limit itself must hold.
            if let Err(err) = std::fs::write(&path, value)
                && !file.contains("swap")
            {
                return Err(format!("cannot write {}: {err}", path.display()));
            }
        }
        Ok(cgroup)
    }

    /// The limit, in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Runs `program` with `args` inside the cgroup and waits for it. A shell moves itself into
    /// the cgroup and then execs the program, so everything the program allocates is charged.
    pub fn run(&self, program: &Path, args: &[&str]) -> Run {
        let procs = self.dir.join("cgroup.procs");
        let output = Command::new("sh")
            .arg("-c")
            .arg("echo $$ > \"$0\" && exec \"$@\"")
            .arg(&procs)
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("run sh");
        let read = |file: &str| std::fs::read_to_string(self.dir.join(file)).unwrap_or_default();
        let (peak, events) = if self.v1 {
            (
                read("memory.max_usage_in_bytes"),
                read("memory.oom_control"),
            )
        } else {
            (read("memory.peak"), read("memory.events"))
        };
        let oom_kills = events
            .lines()
            .find_map(|line| line.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        Run {
            status: output.status,
            peak: peak.trim().parse().unwrap_or(0),
            oom_kills,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // Every process in it has exited (run waits), so the directory can go.
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Runs `program args` in a fresh cgroup of `limit` bytes; see [`MemoryCgroup::run`].
pub fn run_limited(limit: u64, program: &Path, args: &[&str]) -> Result<Run, String> {
    Ok(MemoryCgroup::create(limit)?.run(program, args))
}

/// The smallest limit, in steps of `step` bytes from `step` up to `ceiling`, under which
/// `attempt` finishes, with the run at that limit; `None` when it does not finish even at
/// `ceiling`. `attempt` must clean up after itself (each run starts from the same state).
pub fn smallest_limit(
    step: u64,
    ceiling: u64,
    mut attempt: impl FnMut(u64) -> Result<Run, String>,
) -> Result<Option<(u64, Run)>, String> {
    // Memory needs grow with nothing but the limit, so a binary search over the steps will do.
    let (mut low, mut high) = (1, ceiling.div_ceil(step));
    let mut best = None;
    while low <= high {
        let mid = low + (high - low) / 2;
        let run = attempt(mid * step)?;
        if run.finished() {
            best = Some((mid * step, run));
            high = mid - 1;
        } else {
            low = mid + 1;
        }
    }
    Ok(best)
}
