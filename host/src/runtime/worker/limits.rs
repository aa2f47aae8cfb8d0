//! Resource limits of a worker process: memory, CPU, open files, processes. Enforced by a
//! cgroup v2 of its own where the host may create one (`memory.max`, `cpu.max`, `pids.max`),
//! else by resource limits of the process (`setrlimit`), which cover less: memory as the
//! process's data size, CPU only as seconds used in all, and processes not at all (their limit
//! counts every process of the user). [`Plan::summary`] says which applies, for the log.

use std::ffi::CString;
use std::path::{Path, PathBuf};

/// What a plugin's settings ask for.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Limits {
    /// Bytes of memory.
    pub(crate) memory: Option<u64>,
    /// A share of one CPU (0.5 for half), only with a cgroup.
    pub(crate) cpu_share: Option<f64>,
    /// CPU seconds in all.
    pub(crate) cpu_seconds: Option<u64>,
    /// Open files.
    pub(crate) open_files: Option<u64>,
    /// Processes and threads, only with a cgroup.
    pub(crate) processes: Option<u64>,
}

impl Limits {
    /// Whether any limit is asked for.
    pub(crate) fn any(&self) -> bool {
        *self != Limits::default()
    }
}

/// How the limits are applied to one worker.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// What the child does between fork and exec.
    child: InChild,
    /// The memory limit, for the words of a crash.
    memory: Option<u64>,
    /// The worker's cgroup, removed when it is done.
    pub(crate) cgroup: Option<PathBuf>,
    /// What applies, in words, for the log.
    pub(crate) summary: String,
}

/// The cgroup v2 folder under which workers get cgroups of their own, if the host may create
/// them: `configured` if given, else the host's own cgroup when it is the root of a writable
/// cgroup v2 hierarchy (as in a container of its own).
pub(crate) fn cgroup_root(configured: Option<&Path>) -> Option<PathBuf> {
    if let Some(root) = configured {
        return Some(root.to_owned());
    }
    let mine = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = mine.lines().find_map(|l| l.strip_prefix("0::"))?;
    let root = Path::new("/sys/fs/cgroup");
    let writable = root.join("cgroup.controllers").is_file()
        && std::fs::metadata(root).is_ok_and(|m| !m.permissions().readonly());
    (path == "/" && writable).then(|| root.to_owned())
}

/// Plans the limits of worker `id` (a unique name) of `plugin`.
pub(crate) fn plan(limits: &Limits, root: Option<&Path>, id: &str) -> Plan {
    let mut plan = Plan::default();
    plan.memory = limits.memory;
    if !limits.any() {
        plan.summary = "no limits".into();
        return plan;
    }
    if let Some(root) = root {
        match cgroup(limits, root, id) {
            Ok((dir, summary)) => {
                let procs = dir.join("cgroup.procs");
                plan.child.join = CString::new(procs.as_os_str().as_encoded_bytes()).ok();
                plan.cgroup = Some(dir);
                plan.summary = format!("cgroup v2: {summary}");
                // What a cgroup does not cover is still a resource limit of the process.
                if let Some(seconds) = limits.cpu_seconds {
                    plan.child.rlimits.push((libc::RLIMIT_CPU as _, seconds));
                }
                if let Some(files) = limits.open_files {
                    plan.child.rlimits.push((libc::RLIMIT_NOFILE as _, files));
                    plan.summary
                        .push_str(&format!(", open files {files} (RLIMIT_NOFILE)"));
                }
                return plan;
            }
            Err(e) => {
                plan.summary = format!("no cgroup ({} cannot be used: {e}); ", root.display());
            }
        }
    }
    let mut applied = Vec::new();
    let mut missing = Vec::new();
    if let Some(memory) = limits.memory {
        plan.child.rlimits.push((libc::RLIMIT_DATA as _, memory));
        applied.push(format!("memory {} (RLIMIT_DATA)", bytes(memory)));
    }
    if let Some(seconds) = limits.cpu_seconds {
        plan.child.rlimits.push((libc::RLIMIT_CPU as _, seconds));
        applied.push(format!("CPU {seconds} s in all (RLIMIT_CPU)"));
    }
    if let Some(files) = limits.open_files {
        plan.child.rlimits.push((libc::RLIMIT_NOFILE as _, files));
        applied.push(format!("open files {files} (RLIMIT_NOFILE)"));
    }
    if let Some(share) = limits.cpu_share {
        missing.push(format!("cpu {:.0}%", share * 100.0));
    }
    if let Some(processes) = limits.processes {
        missing.push(format!("max_processes {processes}"));
    }
    plan.summary
        .push_str(&format!("rlimits: {}", applied.join(", ")));
    if applied.is_empty() {
        plan.summary.push_str("none");
    }
    if !missing.is_empty() {
        plan.summary.push_str(&format!(
            "; NOT enforced (they need a cgroup v2 the host may create, see host.cgroup): {}",
            missing.join(", ")
        ));
    }
    plan
}

/// Creates the worker's cgroup under `root` and writes its limits.
fn cgroup(limits: &Limits, root: &Path, id: &str) -> std::io::Result<(PathBuf, String)> {
    // The controllers must be on for the children of `root`; a delegated cgroup may not have
    // them yet. Best effort: if this fails, writing the limits below says why.
    let _ = std::fs::write(root.join("cgroup.subtree_control"), "+memory +cpu +pids");
    let dir = root.join(id);
    std::fs::create_dir(&dir)?;
    let mut summary = Vec::new();
    let write = |file: &str, value: String| {
        std::fs::write(dir.join(file), &value).map_err(|e| {
            let _ = std::fs::remove_dir(&dir);
            std::io::Error::new(e.kind(), format!("writing {file}: {e}"))
        })
    };
    if let Some(memory) = limits.memory {
        write("memory.max", memory.to_string())?;
        // No swap: the limit is the memory the plugin may use, not a slower version of it.
        let _ = std::fs::write(dir.join("memory.swap.max"), "0");
        summary.push(format!("memory.max {}", bytes(memory)));
    }
    if let Some(share) = limits.cpu_share {
        let period = 100_000u64;
        let quota = ((share * period as f64) as u64).max(1_000);
        write("cpu.max", format!("{quota} {period}"))?;
        summary.push(format!("cpu.max {:.0}%", share * 100.0));
    }
    if let Some(processes) = limits.processes {
        write("pids.max", processes.to_string())?;
        summary.push(format!("pids.max {processes}"));
    }
    if let Some(seconds) = limits.cpu_seconds {
        summary.push(format!("CPU {seconds} s in all (RLIMIT_CPU)"));
    }
    Ok((dir, summary.join(", ")))
}

/// Removes the (empty) cgroups of workers whose host no longer runs: a host killed with
/// `kill -9` cannot remove its own. Names are `plughost-<file>-<host pid>-<n>`.
pub(crate) fn remove_stale(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str().filter(|n| n.starts_with("plughost-")) else {
            continue;
        };
        let host = name.rsplit('-').nth(1).and_then(|p| p.parse::<u32>().ok());
        if let Some(host) = host {
            if host != std::process::id() && !Path::new(&format!("/proc/{host}")).exists() {
                // What the plugin started may still run in it (its host was killed): it goes.
                kill_all_in(&entry.path());
                let _ = std::fs::remove_dir(entry.path());
            }
        }
    }
}

/// The part of a [`Plan`] the child carries out itself, between `fork` and `exec`.
#[derive(Debug, Clone, Default)]
pub(crate) struct InChild {
    /// `setrlimit` calls: (resource, value).
    rlimits: Vec<(i32, u64)>,
    /// `cgroup.procs` of the worker's own cgroup, to join, as a C string.
    join: Option<CString>,
}

impl Plan {
    /// What the child must do before it runs the worker program.
    pub(crate) fn in_child(&self) -> InChild {
        self.child.clone()
    }

    /// Whether a memory limit applies.
    pub(crate) fn limits_memory(&self) -> bool {
        self.memory.is_some()
    }

    /// The memory limit in words (`64 MiB`).
    pub(crate) fn memory_words(&self) -> String {
        self.memory.map_or_else(String::new, bytes)
    }

    /// Whether the cgroup's memory limit killed a process in it.
    pub(crate) fn memory_exceeded(&self) -> bool {
        let Some(dir) = &self.cgroup else {
            return false;
        };
        std::fs::read_to_string(dir.join("memory.events"))
            .ok()
            .and_then(|events| {
                events
                    .lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|n| n.trim().parse::<u64>().ok())
            })
            .is_some_and(|kills| kills > 0)
    }
}

impl InChild {
    /// Applies the plan in the child between `fork` and `exec`. It makes only
    /// async-signal-safe calls (`setrlimit`, `open`, `write`, `close`), on memory allocated
    /// before the fork, and allocates nothing.
    ///
    /// # Safety
    ///
    /// Call it only in a child between `fork` and `exec` (from `Command::pre_exec`): it
    /// changes the limits and the cgroup of the calling process.
    pub(crate) unsafe fn apply_in_child(&self) -> std::io::Result<()> {
        for &(resource, value) in &self.rlimits {
            // RLIMIT_CPU: SIGXCPU at the soft limit, SIGKILL a few seconds later.
            let hard = if resource == libc::RLIMIT_CPU as i32 {
                value.saturating_add(5)
            } else {
                value
            };
            let limit = libc::rlimit {
                rlim_cur: value,
                rlim_max: hard,
            };
            // SAFETY: `limit` is a valid rlimit on this stack.
            if unsafe { libc::setrlimit(resource as _, &limit) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        if let Some(procs) = &self.join {
            // SAFETY: a NUL-terminated path allocated before the fork; the descriptor is
            // closed again below.
            let fd = unsafe { libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // "0" moves the writing process itself.
            // SAFETY: writes one byte from a static to the descriptor just opened.
            let written = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
            // SAFETY: the descriptor opened above, closed once.
            unsafe { libc::close(fd) };
            if written != 1 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

impl Drop for Plan {
    fn drop(&mut self) {
        if let Some(dir) = &self.cgroup {
            // Processes the plugin started that left the worker's process group are still in
            // its cgroup.
            kill_all_in(dir);
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Kills every process in the cgroup `dir` (`cgroup.kill`, Linux 5.14), and waits a moment
/// for the cgroup to empty.
fn kill_all_in(dir: &Path) {
    if std::fs::write(dir.join("cgroup.kill"), "1").is_err() {
        return;
    }
    for _ in 0..50 {
        let empty =
            std::fs::read_to_string(dir.join("cgroup.procs")).map_or(true, |p| p.is_empty());
        if empty {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Bytes in the largest binary unit that shows them whole (`64 MiB`).
pub(crate) fn bytes(n: u64) -> String {
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{} {unit}", n >> shift);
        }
    }
    format!("{n} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_cgroup_the_plan_says_what_is_not_enforced() {
        let limits = Limits {
            memory: Some(64 << 20),
            cpu_share: Some(0.5),
            open_files: Some(64),
            processes: Some(4),
            ..Limits::default()
        };
        let plan = plan(&limits, None, "x");
        assert_eq!(
            plan.summary,
            "rlimits: memory 64 MiB (RLIMIT_DATA), open files 64 (RLIMIT_NOFILE); NOT enforced \
             (they need a cgroup v2 the host may create, see host.cgroup): cpu 50%, \
             max_processes 4"
        );
        assert_eq!(plan.child.rlimits.len(), 2);
        assert_eq!(bytes(1536), "1536 bytes");
        assert_eq!(bytes(3 << 30), "3 GiB");
    }
}
