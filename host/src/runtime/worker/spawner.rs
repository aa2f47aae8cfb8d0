//! Starting worker processes, all from one long-lived thread. The parent-death signal that
//! makes a worker die with its host is tied to the thread that forked it, not to the host
//! process (docs/design.md, "Workers die with their host"): a worker started from a
//! short-lived thread, such as a restart's, would be killed when that thread ends.

use std::process::{Child, Command};
use std::sync::mpsc::{channel, sync_channel, Sender, SyncSender};
use std::sync::{Mutex, OnceLock};

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
