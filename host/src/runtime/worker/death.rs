//! How a worker process ended, in words a user reads: the cause (`segmentation fault
//! (SIGSEGV)`, `memory limit 64 MiB exceeded`, `stack overflow`), what it was doing
//! (`during execute`), and the last lines it wrote.

use std::os::unix::process::ExitStatusExt as _;

use super::limits::Plan;

/// What was running in a worker, for the words of a crash: `during init`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Phase {
    Loading = 0,
    Idle = 1,
    Init = 2,
    Validate = 3,
    Health = 4,
    SaveState = 5,
    Shutdown = 6,
    Event = 7,
    Source = 8,
}

impl Phase {
    pub(super) fn from_u8(byte: u8) -> Phase {
        match byte {
            0 => Phase::Loading,
            2 => Phase::Init,
            3 => Phase::Validate,
            4 => Phase::Health,
            5 => Phase::SaveState,
            6 => Phase::Shutdown,
            7 => Phase::Event,
            8 => Phase::Source,
            _ => Phase::Idle,
        }
    }

    pub(super) fn words(self) -> &'static str {
        match self {
            Phase::Loading => "while loading",
            Phase::Idle => "while idle",
            Phase::Init => "during init",
            Phase::Validate => "during validate_config",
            Phase::Health => "during health",
            Phase::SaveState => "during save_state",
            Phase::Shutdown => "during shutdown",
            Phase::Event => "during on_event",
            Phase::Source => "during the event source's start or stop",
        }
    }
}

/// How a worker ended.
#[derive(Debug, Clone)]
pub(crate) struct Death {
    /// The cause in words: `segmentation fault (SIGSEGV)`, `memory limit 64 MiB exceeded`.
    pub(crate) cause: String,
    /// What it was doing: `during execute`.
    pub(crate) during: &'static str,
    /// The last lines it wrote.
    pub(crate) last_lines: Vec<String>,
}

/// The words for how a process ended.
pub(super) fn cause(
    status: Option<std::process::ExitStatus>,
    last_lines: &[String],
    plan: &Plan,
) -> String {
    let said = |needle: &str| last_lines.iter().any(|l| l.contains(needle));
    if plan.memory_exceeded() || (said("memory allocation of") && plan.limits_memory()) {
        return format!("memory limit {} exceeded", plan.memory_words());
    }
    let Some(status) = status else {
        return "ended in a way that could not be read".into();
    };
    if said("has overflowed its stack") {
        return "stack overflow".into();
    }
    if let Some(signal) = status.signal() {
        return match signal {
            libc::SIGSEGV => "segmentation fault (SIGSEGV)".into(),
            libc::SIGBUS => "bus error (SIGBUS)".into(),
            libc::SIGILL => "illegal instruction (SIGILL)".into(),
            libc::SIGFPE => "arithmetic error (SIGFPE)".into(),
            libc::SIGABRT if said("memory allocation of") => {
                "out of memory (SIGABRT after a failed allocation)".into()
            }
            libc::SIGABRT => "aborted (SIGABRT)".into(),
            libc::SIGKILL => "killed (SIGKILL), perhaps by the out-of-memory killer".into(),
            libc::SIGXCPU => "CPU time limit exceeded (SIGXCPU)".into(),
            libc::SIGTERM => "terminated (SIGTERM)".into(),
            other => format!("ended by signal {other}"),
        };
    }
    match status.code() {
        Some(code) => format!("exited with code {code}"),
        None => "ended without an exit code".into(),
    }
}

/// The last lines, for a message: `; last output: "a" | "b"`.
pub(crate) fn lines(last: &[String]) -> String {
    if last.is_empty() {
        return String::new();
    }
    let shown: Vec<String> = last.iter().map(|l| format!("{l:?}")).collect();
    format!("; last output: {}", shown.join(" | "))
}
