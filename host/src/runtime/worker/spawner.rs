//! Starting worker processes: the command line and descriptors of one, and the one long-lived
//! thread all of them are started from. The parent-death signal that
//! makes a worker die with its host is tied to the thread that forked it, not to the host
//! process (docs/design.md, "Workers die with their host"): a worker started from a
//! short-lived thread, such as a restart's, would be killed when that thread ends.

use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, sync_channel, Sender, SyncSender};
use std::sync::{Mutex, OnceLock};

use super::limits::InChild;
use super::process::Spec;
use super::serve::{CONTROL_FD, COPY_FD, LANES_FD, WORKER_ARG};

type Job = (Command, SyncSender<std::io::Result<Child>>);

pub(crate) fn spawn(command: Command) -> std::io::Result<Child> {
    static JOBS: OnceLock<Mutex<Sender<Job>>> = OnceLock::new();
    let jobs = JOBS.get_or_init(|| {
        let (sender, jobs) = channel::<Job>();
        std::thread::Builder::new()
            .name("plughost-spawner".into())
            .spawn(move || {
                for (mut command, answer) in jobs {
                    let _ = answer.send(command.spawn());
                }
            })
            .expect("start the spawner thread");
        Mutex::new(sender)
    });
    let (answer, child) = sync_channel(1);
    jobs.lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((command, answer))
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
    child
        .recv()
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?
}

/// The command that starts a worker for `spec`, with the control socket, the lanes file and
/// the private copy (`fds`) passed as descriptors 3, 4 and 5, in a process group of its own,
/// dying with this thread's process, within the limits `in_child` applies, with the host's
/// environment only if its sandbox keeps it.
pub(crate) fn command(
    spec: &Spec,
    max_level: u8,
    fds: [&OwnedFd; 3],
    in_child: InChild,
) -> Command {
    let mut command = Command::new(&spec.program);
    command
        .arg(WORKER_ARG)
        .arg(&spec.file)
        .arg(format!("/proc/self/fd/{COPY_FD}"))
        .arg(format!("{:032x}", spec.hash))
        .arg(std::process::id().to_string())
        .arg(max_level.to_string())
        .arg(serde_json::to_string(&spec.sandbox).unwrap_or_default())
        .arg(spec.plugin.as_deref().unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A group of its own: whatever the plugin starts is killed with it.
        .process_group(0);
    if !spec.sandbox.keeps_environment() {
        // Without `env`, the plugin sees none of the host's variables (they may hold secrets),
        // but for the one the dynamic loader reads: the libraries a plugin links to are found
        // in the worker as they would be in the host.
        command.env_clear();
        if let Some(path) = std::env::var_os("LD_LIBRARY_PATH") {
            command.env("LD_LIBRARY_PATH", path);
        }
    }
    let fds = fds.map(|fd| fd.as_raw_fd());
    // SAFETY: the closure runs in the child between fork and exec and makes only
    // async-signal-safe calls (`fcntl`, `dup2`, `prctl`, and `InChild::apply_in_child`'s),
    // allocating nothing and taking no lock.
    unsafe {
        command.pre_exec(move || {
            // All move above the targets first, so that none overwrites another on its way to
            // 3, 4 or 5.
            let mut high = [0; 3];
            for (i, fd) in fds.iter().enumerate() {
                high[i] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 10);
                if high[i] < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (fd, target) in high.iter().zip([CONTROL_FD, LANES_FD, COPY_FD]) {
                if libc::dup2(*fd, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            in_child.apply_in_child()
        });
    }
    command
}

/// `fd`, numbered 3 or above, closed on exec (the original is closed).
pub(crate) fn above_stdio(fd: impl Into<OwnedFd>) -> Result<OwnedFd, String> {
    let fd: OwnedFd = fd.into();
    // `try_clone_to_owned` duplicates with F_DUPFD_CLOEXEC from 3 up.
    fd.as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("cannot pass it a descriptor: {e}"))
}
