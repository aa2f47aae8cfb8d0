//! The probe: bytes this host has not yet seen load are first loaded, in a short-lived child
//! process, by the same code that will load them here. The dynamic loader trusts the file it
//! maps, and a damaged `.dynamic`, relocation or symbol table kills the process that loads it
//! (docs/design.md, "Checking before loading"); only a separate process can take that hit. A
//! probe that ends normally, whatever it found, lets the host load the bytes itself (a refusal
//! is then reproduced here, as a typed error, without danger); a probe killed by a signal, or
//! ended by the loader itself, or that does not finish in time, is a refusal naming the file.
//!
//! Verdicts are kept by content hash, in memory and as marker files in the (private) shadow
//! folder, so each content is probed once, also across runs of the command line.
//!
//! Where any plugin may be isolated, nothing is probed: the probe runs a library with the
//! host's rights and environment, before the host knows whether its plugin is to be confined.
//! A worker confined to no grants tells the name instead ([`Probe::learned`] keeps it as a
//! verdict), and a name remembered from before is used ([`Probe::remembered`]).
//!
//! The probe program is the `plughost` executable (or any program that calls
//! [`probe_main`](crate::probe_main) when started as `PROGRAM __probe FILE`).

use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc::Receiver;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::ShadowCopy;
use crate::error::LoadError;
use crate::plugin_info::shown;

/// How many clean verdicts a host keeps in memory: a host that reloads all day must not grow
/// with every build it saw.
const REMEMBERED: usize = 256;

/// The argument that starts a program in the probe role.
pub const PROBE_ARG: &str = "__probe";

/// How a host probes bytes before loading them.
#[derive(Debug)]
pub(crate) struct Probe {
    /// The probe program.
    program: Program,
    /// How long a probe may take.
    timeout: Duration,
    /// Where clean verdicts are remembered across processes (a folder in the shadow folder).
    markers: PathBuf,
    /// Content hashes known to load without harm, with the plugin's name where known.
    clean: Mutex<HashMap<u128, Option<String>>>,
    /// Content hashes that crashed their probe, with the reason: not probed again by this
    /// host (a file's every event would otherwise crash another probe).
    crashed: Mutex<HashMap<u128, String>>,
}

/// Which program probes, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Program {
    /// No probing: files are loaded unchecked.
    Off,
    /// This program, started as `PROGRAM __probe FILE`.
    At(PathBuf),
    /// Probing is asked for, but no program was found: every new file is refused, saying why.
    Missing,
}

impl Probe {
    /// Probes with `program`; remembers clean verdicts in `markers`.
    pub(crate) fn new(program: Program, timeout: Duration, markers: PathBuf) -> Self {
        Probe {
            program,
            timeout,
            markers,
            clean: Mutex::default(),
            crashed: Mutex::default(),
        }
    }

    /// Loads `copy` (the private copy of `file`, content hash `hash`) in a probe process,
    /// unless that content was probed before. `Ok` when it is safe to load here, with the
    /// plugin's name if the probe read it (so that a host can leave a disabled plugin's
    /// library unopened).
    pub(crate) fn check(
        &self,
        file: &Path,
        copy: &ShadowCopy,
        hash: u128,
    ) -> Result<Option<String>, LoadError> {
        let refused = |reason: String| LoadError::ProbeRefused {
            path: file.to_owned(),
            reason,
        };
        let program = match &self.program {
            Program::Off => return Ok(None),
            Program::At(program) => program,
            Program::Missing => {
                return Err(refused(
                    "no probe program to load it in a separate process first: install the \
                     plughost executable beside this program or on PATH, set host.probe to a \
                     program that calls plughost::probe_main, or host.probe = \"off\" to load \
                     files unchecked"
                        .into(),
                ))
            }
        };
        if let Some(reason) = self
            .crashed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&hash)
        {
            return Err(refused(reason.clone()));
        }
        if let Some(name) = self.lock().get(&hash) {
            return Ok(name.clone());
        }
        if let Some(answer) = self.marked(hash) {
            return self.remember(hash, answer, file);
        }
        let mut command = Command::new(program);
        command
            .arg(PROBE_ARG)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        #[cfg(target_os = "linux")]
        {
            // The copy is passed open, as the probe's standard input: a memory file has no path
            // another process could open. (Not as a descriptor of its own: that would need a
            // pre-exec hook, which makes every probe a full `fork` of a host that may have
            // hundreds of libraries mapped; standard streams go through `posix_spawn`.)
            let fd = copy
                .descriptor()
                .map_err(|e| refused(format!("cannot pass its copy to the probe: {e}")))?;
            command.stdin(Stdio::from(fd)).arg("/proc/self/fd/0");
        }
        #[cfg(not(target_os = "linux"))]
        command.stdin(Stdio::null()).arg(copy.path());
        // A group of its own, so that whatever the library's constructors start goes with it.
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command.spawn().map_err(|e| {
            refused(format!(
                "the probe program {} could not be started ({e}); install the plughost \
                 executable there, set host.probe to it, or host.probe = \"off\" to load \
                 files unchecked",
                program.display()
            ))
        })?;
        // Drained on threads of their own, so a chatty loader cannot fill a pipe and stall.
        let stdout = child.stdout.take().map(drain);
        let stderr = child.stderr.take().map(drain);
        let started = Instant::now();
        let mut pause = Duration::from_micros(50);
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if started.elapsed() >= self.timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                Ok(None) => {
                    std::thread::sleep(pause);
                    // Short steps: a probe takes about a millisecond, and a reload waits on it.
                    pause = (pause * 2).min(Duration::from_micros(250));
                }
                Err(e) => {
                    kill_group(&child);
                    return Err(refused(format!("waiting for its probe failed: {e}")));
                }
            }
        };
        // Anything the probe left running (a process a constructor started) holds the pipes
        // open: it goes now, and the pipes are read for a while at most (long enough for the
        // threads reading them to be scheduled on a machine under load).
        kill_group(&child);
        let read = |pipe: Option<Receiver<String>>| {
            pipe.and_then(|pipe| pipe.recv_timeout(Duration::from_secs(2)).ok())
                .unwrap_or_default()
        };
        let (answer, said) = (read(stdout), read(stderr));
        let said = said.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        let Some(status) = status else {
            return Err(refused(format!(
                "loading it did not finish within {} s while it was being checked",
                self.timeout.as_secs_f64()
            )));
        };
        if status.success() {
            // The probe's own answer is its last line (a constructor may print before it).
            let Some(answer) = answer.lines().rev().find_map(Answer::parse) else {
                return Err(refused(format!(
                    "the probe program {} did not answer as a plughost probe does; set \
                     host.probe to the plughost executable (or a program that calls \
                     plughost::probe_main)",
                    program.display()
                )));
            };
            // The loader's refusal is not kept across runs: it may depend on the machine (a
            // library it needs, installed later), not only on the bytes.
            if !matches!(answer, Answer::LoaderRefused(_)) {
                self.keep(hash, &answer);
            }
            return self.remember(hash, answer, file);
        }
        let how = match crashed_by(&status) {
            Some(signal) => format!("the library crashed the loader ({signal})"),
            None => match status.code() {
                // `ld.so`'s own exit ("Inconsistency detected by ld.so").
                Some(127) => "the loader gave up on it (exit code 127)".to_owned(),
                Some(code) => format!(
                    "the probe program {} exited with code {code}",
                    program.display()
                ),
                None => "the probe ended without an exit code".to_owned(),
            },
        };
        let reason = if said.is_empty() {
            format!("{how} while being checked")
        } else {
            format!("{how} while being checked: {}", shown(said))
        };
        if crashed_by(&status).is_some() || status.code() == Some(127) {
            self.crashed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(hash, reason.clone());
        }
        Err(refused(reason))
    }

    /// The plugin's name in content `hash`, if a probe (or a worker, [`learned`](Self::learned))
    /// told it before: then nothing needs to load it to know it.
    pub(crate) fn remembered(&self, hash: u128) -> Option<String> {
        if let Some(name) = self.lock().get(&hash) {
            return name.clone();
        }
        match self.marked(hash) {
            Some(Answer::Loaded(name)) => {
                self.note(hash, Some(name.clone()));
                Some(name)
            }
            _ => None,
        }
    }

    /// Remembers that content `hash` loaded, in a worker confined to no grants, as plugin
    /// `name`: as a probe's verdict, in memory and in the shadow folder.
    pub(crate) fn learned(&self, hash: u128, name: &str) {
        let answer = Answer::Loaded(name.to_owned());
        self.keep(hash, &answer);
        self.note(hash, answer.name());
    }

    /// Writes the marker of a verdict. Best effort: without it the next run probes again. The
    /// folder is inside the private shadow folder; the marker is renamed into place whole.
    fn keep(&self, hash: u128, answer: &Answer) {
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _ = std::fs::create_dir(&self.markers);
        let temporary = self
            .markers
            .join(format!(".probed-{hash:032x}-{}-{n}", std::process::id()));
        if std::fs::write(&temporary, answer.to_string()).is_ok() {
            let _ = std::fs::rename(&temporary, self.marker(hash));
        }
    }

    /// The verdict a marker keeps for content `hash`, if any. A marker is written whole
    /// (renamed into place); anything else in it is ignored.
    fn marked(&self, hash: u128) -> Option<Answer> {
        let verdict = std::fs::read_to_string(self.marker(hash)).ok()?;
        Answer::parse(&verdict)
    }

    /// Where the verdict on content `hash` is kept.
    fn marker(&self, hash: u128) -> PathBuf {
        self.markers.join(format!("probed-{hash:032x}"))
    }

    /// Keeps a clean verdict in memory.
    fn note(&self, hash: u128, name: Option<String>) {
        let mut clean = self.lock();
        if clean.len() >= REMEMBERED {
            // The marker files still answer for what is forgotten here.
            clean.clear();
        }
        clean.insert(hash, name);
    }

    /// What a clean `answer` for content `hash` means for `file`, remembered for next time.
    /// The dynamic loader's own refusal stands: its outcome can depend on where the process
    /// maps things, so the host does not try the same bytes itself.
    fn remember(
        &self,
        hash: u128,
        answer: Answer,
        file: &Path,
    ) -> Result<Option<String>, LoadError> {
        match answer {
            Answer::LoaderRefused(message) => Err(LoadError::Open {
                path: file.to_owned(),
                source: message.into(),
            }),
            answer => {
                let name = answer.name();
                self.note(hash, name.clone());
                Ok(name)
            }
        }
    }

    /// Refuses content `hash` of `file`, which the probe said is plugin `told`, if it loaded
    /// as plugin `loaded`: something in the library told the probe another name (to escape a
    /// pin, say). Its verdict is forgotten, so the next try probes it again.
    pub(crate) fn same_name(
        &self,
        file: &Path,
        hash: u128,
        told: &str,
        loaded: &str,
    ) -> Result<(), LoadError> {
        if told == loaded {
            return Ok(());
        }
        self.forget(hash);
        Err(LoadError::NameMismatch {
            path: file.to_owned(),
            told: told.to_owned(),
            loaded: loaded.to_owned(),
        })
    }

    /// Forgets the verdict on content `hash` (in memory and on disk): the probe was lied to.
    pub(crate) fn forget(&self, hash: u128) {
        self.lock().remove(&hash);
        let _ = std::fs::remove_file(self.marker(hash));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u128, Option<String>>> {
        // A set of hashes is never left half-updated.
        self.clean.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Reads a child's pipe to its end (64 KiB at most) on a thread of its own; the text arrives
/// on the receiver.
fn drain(mut pipe: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (sender, text) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = (&mut pipe).take(64 * 1024).read_to_end(&mut bytes);
        let _ = sender.send(String::from_utf8_lossy(&bytes).into_owned());
    });
    text
}

/// Ends every process left in the probe's group.
fn kill_group(child: &std::process::Child) {
    #[cfg(unix)]
    if let Ok(group) = i32::try_from(child.id()) {
        // SAFETY: `kill` has no memory-safety preconditions; the group is the probe's own,
        // created for it (`process_group(0)`), so nothing else is in it.
        unsafe { libc::kill(-group, libc::SIGKILL) };
    }
    #[cfg(not(unix))]
    let _ = child;
}

/// What a probe says on its standard output when it ran to its end.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    /// `ok NAME`: the library loaded; its plugin is NAME.
    Loaded(String),
    /// `refused: ...`: the load ended with a refusal, which the host reproduces itself.
    Refused,
    /// `loader-refused: MESSAGE`: the dynamic loader refused the library; that stands.
    LoaderRefused(String),
}

impl Answer {
    fn parse(line: &str) -> Option<Answer> {
        let line = line.trim_end();
        if let Some(name) = line.strip_prefix("ok ") {
            return (!name.is_empty()).then(|| Answer::Loaded(name.to_owned()));
        }
        if let Some(message) = line.strip_prefix("loader-refused: ") {
            return Some(Answer::LoaderRefused(message.to_owned()));
        }
        line.starts_with("refused").then_some(Answer::Refused)
    }

    fn name(self) -> Option<String> {
        match self {
            Answer::Loaded(name) => Some(name),
            Answer::Refused | Answer::LoaderRefused(_) => None,
        }
    }
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::Loaded(name) => write!(f, "ok {name}"),
            Answer::Refused => write!(f, "refused"),
            Answer::LoaderRefused(message) => write!(f, "loader-refused: {message}"),
        }
    }
}

/// The signal that ended a process, by name.
fn crashed_by(status: &std::process::ExitStatus) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        let signal = status.signal()?;
        let name = match signal {
            libc::SIGSEGV => "SIGSEGV",
            libc::SIGBUS => "SIGBUS",
            libc::SIGILL => "SIGILL",
            libc::SIGFPE => "SIGFPE",
            libc::SIGABRT => "SIGABRT",
            libc::SIGTRAP => "SIGTRAP",
            libc::SIGSYS => "SIGSYS",
            libc::SIGKILL => "SIGKILL",
            other => return Some(format!("signal {other}")),
        };
        Some(name.to_owned())
    }
    #[cfg(not(unix))]
    {
        let _ = status;
        None
    }
}

/// The probe program to use when the settings say `auto`: the `plughost` executable beside
/// this program, or one folder up (where cargo puts binaries next to a test's folder), or on
/// `PATH`.
pub(crate) fn find_program() -> Option<PathBuf> {
    let name = format!("plughost{}", std::env::consts::EXE_SUFFIX);
    let here = std::env::current_exe().ok()?;
    let beside = here.parent().map(|dir| dir.join(&name));
    let above = here
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join(&name));
    let on_path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(&name))
                .collect()
        })
        .unwrap_or_default();
    beside
        .into_iter()
        .chain(above)
        .chain(on_path)
        .find(|candidate| candidate.is_file())
}

/// Moves the copy the host passed as standard input to a descriptor closed on exec, so that
/// nothing the library's constructors start inherits it, and puts `/dev/null` in its place.
/// The copy's new path, if that worked.
#[cfg(target_os = "linux")]
fn off_stdin() -> Option<std::path::PathBuf> {
    use std::os::fd::AsRawFd;
    let null = std::fs::File::open("/dev/null").ok()?;
    // SAFETY: `fcntl(F_DUPFD_CLOEXEC)` and `dup2` on descriptors this process owns (0, and the
    // one just opened); no memory is involved, and nothing else in this process uses fd 0.
    unsafe {
        let moved = libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3);
        if moved < 0 || libc::dup2(null.as_raw_fd(), 0) < 0 {
            return None;
        }
        Some(format!("/proc/self/fd/{moved}").into())
    }
}

/// The probe role: loads and validates the private copy at `copy` exactly as a host would
/// (running no plugin entry point), then exits. Exit code 0 means the load ran to its end,
/// whatever it found; a crash or the loader's own exit is what the host looks for.
pub(crate) fn run(copy: &Path) -> ExitCode {
    // A probe outliving its host would only waste time: it dies with it.
    #[cfg(target_os = "linux")]
    // SAFETY: `prctl(PR_SET_PDEATHSIG, SIGKILL)` only sets a flag on this process.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
    }
    #[cfg(target_os = "linux")]
    let moved = (copy == Path::new("/proc/self/fd/0"))
        .then(off_stdin)
        .flatten();
    #[cfg(target_os = "linux")]
    let copy = moved.as_deref().unwrap_or(copy);
    match super::Library::probe_copy(copy) {
        Ok(name) => println!("ok {name}"),
        // One line: the loader's message may hold anything.
        Err(LoadError::Open { source, .. }) => {
            println!("loader-refused: {}", source.to_string().replace('\n', " "))
        }
        Err(error) => println!("refused: {error}"),
    }
    ExitCode::SUCCESS
}
