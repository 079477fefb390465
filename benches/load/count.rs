//! Counting, which load on the machine does not disturb: system calls per request and heap
//! allocations per request, in passes of their own after the timed rounds.
//!
//! Syscalls are counted twice. `perf stat` on the `raw_syscalls:sys_enter` tracepoint counts in
//! the kernel and barely slows the process, so what it counts is what the process does at
//! speed: the headline figure. `strace -c -f` gives the breakdown by syscall, but it stops the
//! process at every call (~10× slower here), which changes what a time-driven process does per
//! request — the record writer commits once per interval, so at a tenth of the rate each commit
//! carries a tenth of the rows and its page writes count ten times per request. Allocations come
//! from `perf stat` on uprobes at libc's allocator entry points (added once with `perf probe`),
//! in the strace pass (both slow the process).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The allocator entry points counted as allocations (`realloc` is counted apart).
const ALLOCS: [&str; 4] = ["malloc", "calloc", "posix_memalign", "aligned_alloc"];

/// What one counting pass attached to a process.
pub struct Counting {
    strace: Option<Child>,
    perf: Option<Child>,
    dir: tempfile::TempDir,
}

/// Per-request figures from one pass: `(syscalls, allocations, reallocs)` and the syscalls
/// that make up the total, most frequent first.
pub struct Counts {
    pub syscalls: Option<f64>,
    pub allocs: Option<f64>,
    pub reallocs: Option<f64>,
    pub by_syscall: Vec<(String, f64)>,
}

/// The libc the process maps (its allocator is what the probes count).
fn libc_of(pid: u32) -> Option<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.contains("/libc.so") || p.contains("/libc-"))
        .map(str::to_string)
}

/// Add the allocator uprobes once; `false` when perf cannot (no perf, no permission).
fn probes(libc: &str) -> bool {
    for f in ALLOCS.iter().chain(["realloc"].iter()) {
        let exists = Command::new("perf")
            .args(["list", &format!("probe_libc:{f}")])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("probe_libc:{f}")));
        if !exists {
            let _ = Command::new("perf")
                .args(["probe", "-q", "-x", libc, f])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
    Command::new("perf")
        .args(["list", "probe_libc:malloc"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("probe_libc:malloc"))
}

/// The in-kernel syscall count of one process (`perf stat` on a tracepoint), attached for a pass.
pub struct SyscallTotal {
    perf: Child,
    dir: tempfile::TempDir,
}

impl SyscallTotal {
    /// Attach to `pid`; `None` when perf cannot count tracepoints here.
    pub fn attach(pid: u32) -> Option<SyscallTotal> {
        let dir = tempfile::tempdir().ok()?;
        let perf = Command::new("perf")
            .args(["stat", "-x", ",", "-e", "raw_syscalls:sys_enter", "-p"])
            .arg(pid.to_string())
            .arg("-o")
            .arg(dir.path().join("perf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        std::thread::sleep(Duration::from_millis(300));
        Some(SyscallTotal { perf, dir })
    }

    /// Detach; syscalls per request of `requests`.
    pub fn finish(mut self, requests: usize) -> Option<f64> {
        let _ = Command::new("kill")
            .args(["-INT", &self.perf.id().to_string()])
            .status();
        let _ = self.perf.wait();
        let text = std::fs::read_to_string(self.dir.path().join("perf")).ok()?;
        text.lines()
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|f| f.len() >= 3 && f[2] == "raw_syscalls:sys_enter")
            .and_then(|f| f[0].parse::<f64>().ok())
            .map(|n| n / requests.max(1) as f64)
    }
}

impl Counting {
    /// Attach to `pid`; returns after the tools have had time to attach.
    pub fn attach(pid: u32) -> Counting {
        let dir = tempfile::tempdir().unwrap();
        let strace = Command::new("strace")
            .args(["-c", "-f", "-q", "-p", &pid.to_string(), "-o"])
            .arg(dir.path().join("strace"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
        let perf = libc_of(pid).filter(|l| probes(l)).and_then(|_| {
            let events: Vec<String> = ALLOCS
                .iter()
                .chain(["realloc"].iter())
                .map(|f| format!("probe_libc:{f}"))
                .collect();
            Command::new("perf")
                .args([
                    "stat",
                    "-x",
                    ",",
                    "-e",
                    &events.join(","),
                    "-p",
                    &pid.to_string(),
                    "-o",
                ])
                .arg(dir.path().join("perf"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .ok()
        });
        std::thread::sleep(Duration::from_millis(700));
        Counting { strace, perf, dir }
    }

    /// Detach and divide by `requests`.
    pub fn finish(mut self, requests: usize) -> Counts {
        let n = requests.max(1) as f64;
        for child in [self.strace.as_mut(), self.perf.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
        let (syscalls, by_syscall) = match self.strace {
            Some(_) => parse_strace(&self.dir.path().join("strace"), n),
            None => (None, vec![]),
        };
        let (allocs, reallocs) = match self.perf {
            Some(_) => parse_perf(&self.dir.path().join("perf"), n),
            None => (None, None),
        };
        Counts {
            syscalls,
            allocs,
            reallocs,
            by_syscall,
        }
    }
}

/// `strace -c` summary: the `total` line's call count, and each syscall's.
fn parse_strace(file: &Path, n: f64) -> (Option<f64>, Vec<(String, f64)>) {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut total = None;
    let mut each = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 || f[0].starts_with('%') || f[0].starts_with('-') {
            continue;
        }
        let (Ok(calls), Some(name)) = (f[3].parse::<f64>(), f.last()) else {
            continue;
        };
        if *name == "total" {
            total = Some(calls / n);
        } else {
            each.push((name.to_string(), calls / n));
        }
    }
    each.sort_by(|a, b| b.1.total_cmp(&a.1));
    (total, each)
}

/// `perf stat -x,` output: `count,,event,...` lines.
fn parse_perf(file: &Path, n: f64) -> (Option<f64>, Option<f64>) {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let (mut allocs, mut reallocs, mut seen) = (0.0, 0.0, false);
    for line in text.lines() {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < 3 {
            continue;
        }
        let Ok(count) = f[0].parse::<f64>() else {
            continue;
        };
        seen = true;
        if f[2].ends_with(":realloc") {
            reallocs += count;
        } else {
            allocs += count;
        }
    }
    if seen {
        (Some(allocs / n), Some(reallocs / n))
    } else {
        (None, None)
    }
}
