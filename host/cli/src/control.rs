//! The control channel of `plughost run`, and its client for `plughost emit` and `plughost
//! events`.
//!
//! While `run` runs it listens on a Unix domain socket: `<plugins_dir>/.plughost.sock`, or
//! the path given with `--control` (to `run` and to the client commands alike). The socket is
//! its owner's alone (mode 0600); a stale one left by a host that died is replaced, a live one
//! makes `run` refuse to start (another host serves that folder); it is removed when `run`
//! ends.
//!
//! The protocol is one JSON object per line, each way:
//!
//! ```text
//! → {"op":"emit","topic":"user.created","data":{"id":7}}
//! ← {"ok":true,"queued":1}
//! → {"op":"stats"}
//! ← {"ok":true,"stats":{"topics":[...],"subscribers":[...]}}
//! ← {"ok":false,"error":"cannot publish plughost.x: topics under plughost. are the host's own"}
//! ```
//!
//! Emitted events are published with source `plughost-cli`. A request line longer than
//! [`MAX_LINE`] bytes is refused and its connection closed; so is a connection whose request
//! has not arrived whole within 5 s (or whose answer is not taken within 5 s); at most 16 are
//! served at once. Nothing a client sends can take the host down: each connection has a
//! thread of its own, and the accept loop stops when `run` ends.

// Elsewhere only the client's messages are used.
#![cfg_attr(not(unix), allow(dead_code))]

use std::path::{Path, PathBuf};
#[cfg(unix)]
use std::sync::Arc;
use std::time::Duration;

#[cfg(unix)]
use plughost::Host;
use plughost::{EventStats, HostConfig, Percentiles};
use serde_json::{json, Value};

/// The longest request line accepted, newline aside: an event of the default
/// `host.max_event_size` (1 MiB) and room for the rest of the request.
pub(crate) const MAX_LINE: usize = 1024 * 1024 + 4 * 1024;

/// The socket's name in the plugins folder.
const SOCKET_NAME: &str = ".plughost.sock";

/// How long a connection may be quiet before the host closes it.
#[cfg(unix)]
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How many connections are served at once; more are answered with an error and closed.
#[cfg(unix)]
const MAX_CONNECTIONS: usize = 16;

/// How long a client waits for the host's answer (publishing waits for room under policy
/// `block`, up to each full subscriber's `event_block`).
#[cfg(unix)]
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// The source of the events `plughost emit` publishes.
#[cfg(unix)]
const SOURCE: &str = "plughost-cli";

/// Where the control socket of a host is, and how to talk about it.
#[derive(Debug, Clone)]
pub(crate) struct Socket {
    path: PathBuf,
    /// The plugins folder it was derived from; `None` when given with `--control`.
    folder: Option<PathBuf>,
}

impl Socket {
    /// `explicit` if given, else `.plughost.sock` in the plugins folder of `config`.
    pub(crate) fn of(config: &HostConfig, explicit: Option<&Path>) -> Self {
        match explicit {
            Some(path) => Socket {
                path: path.to_owned(),
                folder: None,
            },
            None => Socket {
                path: config.host.plugins_dir.join(SOCKET_NAME),
                folder: Some(config.host.plugins_dir.clone()),
            },
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// `plugins/` for the folder `plugins`.
    #[cfg(unix)]
    fn folder_shown(folder: &Path) -> String {
        let shown = folder.display().to_string();
        if shown.ends_with('/') {
            shown
        } else {
            shown + "/"
        }
    }

    /// The one-line message for a client that found no host.
    #[cfg(unix)]
    fn nobody(&self, why: &str) -> String {
        let path = self.path.display();
        match &self.folder {
            Some(folder) => format!(
                "no plughost is running on {} ({why} at {path}): start one with plughost run",
                Self::folder_shown(folder)
            ),
            None => format!(
                "no plughost is listening on {path} ({why}): start one with plughost run \
                 --control {path}"
            ),
        }
    }

    /// The one-line message for a `run` that found another host on its socket.
    #[cfg(unix)]
    fn taken(&self) -> String {
        let path = self.path.display();
        match &self.folder {
            Some(folder) => format!(
                "another plughost already serves {} (its control socket {path} answers): stop \
                 it first, or give this one --control PATH",
                Self::folder_shown(folder)
            ),
            None => format!("another plughost already listens on {path}: stop it first"),
        }
    }
}

/// The answer `{"ok":false,"error":...}`.
fn refusal(message: impl std::fmt::Display) -> Value {
    json!({ "ok": false, "error": message.to_string() })
}

/// The bus's statistics as JSON: durations in microseconds.
pub(crate) fn stats_json(stats: &EventStats) -> Value {
    let topics: Vec<Value> = stats
        .topics
        .iter()
        .map(|t| {
            json!({
                "topic": t.topic,
                "published": t.published,
                "unrouted": t.unrouted,
                "delivered": t.delivered,
                "dropped": t.dropped,
                "failed": t.failed,
            })
        })
        .collect();
    let subscribers: Vec<Value> = stats
        .subscribers
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "kind": if s.plugin { "plugin" } else { "app" },
                "patterns": s.patterns,
                "delivered": s.delivered,
                "dropped": s.dropped,
                "failed": s.failed,
                "timed_out": s.timed_out,
                "queue_depth": s.queue_depth,
                "capacity": s.capacity,
                "policy": s.policy.as_str(),
                "latency": percentiles_json(&s.latency),
                "handler": percentiles_json(&s.handler),
            })
        })
        .collect();
    json!({ "topics": topics, "subscribers": subscribers })
}

fn percentiles_json(p: &Percentiles) -> Value {
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    json!({
        "count": p.count,
        "p50_us": us(p.p50),
        "p90_us": us(p.p90),
        "p99_us": us(p.p99),
        "max_us": us(p.max),
    })
}

pub(crate) use imp::{request, serve};

#[cfg(unix)]
mod imp {
    use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::thread::JoinHandle;

    use anyhow::{bail, Context as _};
    use plughost::Event;

    use super::*;

    /// The listening side, for as long as `run` runs: dropping it stops the accept loop and
    /// removes the socket. Connections being served finish on their own (within the read
    /// timeout); they hold the host, which `run` shuts down itself.
    pub(crate) struct Server {
        stop: Arc<AtomicBool>,
        accepting: Option<JoinHandle<()>>,
        path: PathBuf,
        /// Device and inode of the socket file bound, so that only it is removed.
        identity: (u64, u64),
    }

    /// The longest socket path the platform takes (`sun_path`, less its NUL).
    const MAX_SOCKET_PATH: usize = if cfg!(target_os = "linux") { 107 } else { 103 };

    /// Binds a socket at `path` that only its owner can connect to, whatever the umask: bound
    /// in a folder of its own (mode 0700), made 0600 there, then renamed into place. (Bound
    /// at `path` and changed after, it would be connectable by others in between, and a
    /// connection made then stays open.) The staging folder's name is shorter than the
    /// socket's, so a path that fits fits staged too.
    fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
        use std::os::unix::fs::DirBuilderExt;
        let parent = path.parent().unwrap_or(Path::new("."));
        let staging = parent.join(format!(".phs{}", std::process::id()));
        std::fs::DirBuilder::new().mode(0o700).create(&staging)?;
        let staged = staging.join("s");
        let bound = UnixListener::bind(&staged).and_then(|listener| {
            std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
            std::fs::rename(&staged, path)?;
            Ok(listener)
        });
        let _ = std::fs::remove_file(&staged);
        let _ = std::fs::remove_dir(&staging);
        bound
    }

    /// Binds `socket` (replacing a stale one, refusing if another host answers on it) and
    /// serves `host` on it from a thread of its own; `None` (said in the log) when its path is
    /// too long for a socket.
    pub(crate) fn serve(socket: &Socket, host: Arc<Host>) -> anyhow::Result<Option<Server>> {
        let path = socket.path();
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                bail!(
                    "cannot listen on {}: something that is not a socket is there; remove it \
                     or pass --control PATH",
                    path.display()
                );
            }
            match UnixStream::connect(path) {
                Ok(_) => bail!("{}", socket.taken()),
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                    tracing::info!("replacing the stale control socket {}", path.display());
                    std::fs::remove_file(path).with_context(|| {
                        format!("cannot remove the stale control socket {}", path.display())
                    })?;
                }
                Err(e) => bail!("cannot use the control socket {}: {e}", path.display()),
            }
        }
        if path.as_os_str().len() > MAX_SOCKET_PATH {
            // Running matters more than being reachable: say so, and run without it.
            tracing::warn!(
                "no control socket: {} is {} bytes long, more than a Unix socket address \
                 takes ({MAX_SOCKET_PATH}); plughost emit and events cannot reach this host \
                 (pass --control with a shorter path)",
                path.display(),
                path.as_os_str().len()
            );
            return Ok(None);
        }
        let listener = bind_private(path).with_context(|| {
            format!(
                "cannot listen on {} (pass --control PATH for another place)",
                path.display()
            )
        })?;
        let meta = std::fs::symlink_metadata(path)
            .with_context(|| format!("cannot read the control socket {}", path.display()))?;
        listener
            .set_nonblocking(true)
            .context("cannot make the control socket non-blocking")?;
        let stop = Arc::new(AtomicBool::new(false));
        let accepting = std::thread::Builder::new()
            .name("plughost-control".into())
            .spawn({
                let stop = stop.clone();
                move || accept_loop(&listener, &stop, &host)
            })
            .context("cannot start the control thread")?;
        tracing::info!("control socket {}", path.display());
        Ok(Some(Server {
            stop,
            accepting: Some(accepting),
            path: path.to_owned(),
            identity: (meta.dev(), meta.ino()),
        }))
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Release);
            if let Some(thread) = self.accepting.take() {
                let _ = thread.join();
            }
            // Not a socket another host has bound since (after removing this one as stale).
            if std::fs::symlink_metadata(&self.path)
                .is_ok_and(|m| (m.dev(), m.ino()) == self.identity)
            {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }

    /// Accepts until `stop`, polling so that it never holds up the end of `run`.
    fn accept_loop(listener: &UnixListener, stop: &AtomicBool, host: &Arc<Host>) {
        let active = Arc::new(AtomicUsize::new(0));
        while !stop.load(Ordering::Acquire) {
            match listener.accept() {
                Ok((stream, _)) => admit(stream, &active, host),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of descriptors, say: wait for some to close.
                    tracing::warn!("control socket: cannot accept a connection: {e}");
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
    }

    /// Gives `stream` a thread of its own, or refuses it when too many are served.
    fn admit(stream: UnixStream, active: &Arc<AtomicUsize>, host: &Arc<Host>) {
        // Accepted sockets may inherit the listener's non-blocking mode (BSD, macOS).
        if stream.set_nonblocking(false).is_err()
            || stream.set_read_timeout(Some(READ_TIMEOUT)).is_err()
            || stream.set_write_timeout(Some(READ_TIMEOUT)).is_err()
        {
            return;
        }
        if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::AcqRel);
            let _ = send(
                &stream,
                &refusal(format!(
                    "too many control connections (at most {MAX_CONNECTIONS} at once); try again"
                )),
            );
            return;
        }
        let slot = Slot(active.clone());
        let host = host.clone();
        let spawned = std::thread::Builder::new()
            .name("plughost-control-conn".into())
            .spawn(move || {
                let _slot = slot;
                converse(stream, &host);
            });
        if let Err(e) = spawned {
            // The closure, its slot and stream with it, is dropped: the client sees the
            // connection closed.
            tracing::warn!("control socket: cannot start a thread for a connection: {e}");
        }
    }

    /// One connection being served; its end frees its place.
    struct Slot(Arc<AtomicUsize>);

    impl Drop for Slot {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// How long one request may take to arrive whole, and one answer to be taken: a client
    /// trickling a byte at a time must not hold a connection's place for ever.
    const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

    /// Reads and writes `stream` within a deadline that [`converse`] sets per request.
    struct Deadlined<'a> {
        stream: &'a UnixStream,
        deadline: std::time::Instant,
    }

    impl Deadlined<'_> {
        /// The time left, as the socket's timeout for the next read or write, or an error once
        /// it is up.
        fn left(&self) -> std::io::Result<Duration> {
            let left = self
                .deadline
                .saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(std::io::Error::new(ErrorKind::TimedOut, "deadline passed"));
            }
            Ok(left.min(READ_TIMEOUT))
        }
    }

    impl Read for Deadlined<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.stream.set_read_timeout(Some(self.left()?))?;
            (&mut &*self.stream).read(buf)
        }
    }

    impl Write for Deadlined<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.stream.set_write_timeout(Some(self.left()?))?;
            (&mut &*self.stream).write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Answers each request line of `stream` until it ends, goes quiet, or misbehaves. Each
    /// request must arrive, and its answer be taken, within [`REQUEST_DEADLINE`].
    fn converse(stream: UnixStream, host: &Host) {
        let deadlined = Deadlined {
            stream: &stream,
            deadline: std::time::Instant::now() + REQUEST_DEADLINE,
        };
        let mut reader = BufReader::new(deadlined);
        let mut line = Vec::new();
        loop {
            line.clear();
            reader.get_mut().deadline = std::time::Instant::now() + REQUEST_DEADLINE;
            let limit = MAX_LINE as u64 + 1;
            match reader.by_ref().take(limit).read_until(b'\n', &mut line) {
                Ok(0) => return,
                Ok(_) => {}
                // Quiet for too long, or gone.
                Err(_) => return,
            }
            let complete = line.last() == Some(&b'\n');
            if !complete && line.len() > MAX_LINE {
                let _ = send(
                    &stream,
                    &refusal(format!(
                        "request line longer than {MAX_LINE} bytes: refused, connection closed"
                    )),
                );
                return;
            }
            let text = line.trim_ascii();
            if !text.is_empty() {
                let answer = answer(host, text);
                let out = reader.get_mut();
                out.deadline = std::time::Instant::now() + REQUEST_DEADLINE;
                if send(out, &answer).is_err() {
                    return;
                }
            }
            if !complete {
                // The last line, without its newline: the client is done.
                return;
            }
        }
    }

    fn send(mut out: impl Write, answer: &Value) -> std::io::Result<()> {
        let mut bytes = serde_json::to_vec(answer)?;
        bytes.push(b'\n');
        out.write_all(&bytes)
    }

    /// The answer to one request line.
    fn answer(host: &Host, text: &[u8]) -> Value {
        let request: Value = match serde_json::from_slice(text) {
            Ok(request) => request,
            Err(e) => return refusal(format!("malformed request: {e}")),
        };
        let Some(op) = request.get("op").and_then(Value::as_str) else {
            return refusal(r#"a request is a JSON object with "op": "emit" or "stats""#);
        };
        match op {
            "emit" => {
                let Some(topic) = request.get("topic").and_then(Value::as_str) else {
                    return refusal(r#"emit needs "topic", a string"#);
                };
                let data = request.get("data").unwrap_or(&Value::Null);
                let event = match Event::json(topic, data) {
                    Ok(event) => event.with_source(SOURCE),
                    Err(e) => return refusal(format!("cannot encode the event's data: {e}")),
                };
                match host.publish(event) {
                    Ok(queued) => {
                        tracing::debug!("control: emitted {topic}, queued for {queued}");
                        json!({ "ok": true, "queued": queued })
                    }
                    Err(e) => refusal(e),
                }
            }
            "stats" => json!({ "ok": true, "stats": stats_json(&host.event_stats()) }),
            other => refusal(format!(
                "unknown op {}: expected emit or stats",
                Value::from(other)
            )),
        }
    }

    /// Sends `request` to the host on `socket` and returns its answer if `ok`; its error
    /// otherwise, or why no host could be asked.
    pub(crate) fn request(socket: &Socket, request: &Value) -> anyhow::Result<Value> {
        let path = socket.path();
        let mut line = serde_json::to_vec(request)?;
        if line.len() > MAX_LINE {
            bail!(
                "the request is {} bytes, more than the {MAX_LINE} bytes the control socket \
                 accepts",
                line.len()
            );
        }
        line.push(b'\n');
        let stream = match UnixStream::connect(path) {
            Ok(stream) => stream,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                bail!("{}", socket.nobody("no control socket"))
            }
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                bail!(
                    "{}",
                    socket.nobody("a stale control socket, nobody listening")
                )
            }
            Err(e) => bail!(
                "cannot connect to the control socket {}: {e}",
                path.display()
            ),
        };
        stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        stream.set_write_timeout(Some(ANSWER_TIMEOUT))?;
        // If the host refuses the request half-way it answers before closing: read that.
        let sent = (&stream).write_all(&line);
        let mut answer = Vec::new();
        let read = BufReader::new(&stream)
            .take(256 * 1024 * 1024)
            .read_until(b'\n', &mut answer);
        match (read, sent) {
            (Ok(n), _) if n > 0 => {}
            (Err(e), _) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                bail!(
                    "the plughost on {} did not answer within {} s",
                    path.display(),
                    ANSWER_TIMEOUT.as_secs()
                )
            }
            (_, Err(e)) => bail!("cannot send the request to {}: {e}", path.display()),
            (Err(e), _) => bail!("cannot read the answer from {}: {e}", path.display()),
            (Ok(_), Ok(())) => bail!(
                "the plughost on {} closed the connection without answering",
                path.display()
            ),
        }
        let answer: Value = serde_json::from_slice(&answer)
            .with_context(|| format!("the answer from {} is not JSON", path.display()))?;
        if answer.get("ok") == Some(&Value::Bool(true)) {
            return Ok(answer);
        }
        match answer.get("error").and_then(Value::as_str) {
            Some(error) => bail!("{error}"),
            None => bail!("the plughost on {} refused the request", path.display()),
        }
    }
}

#[cfg(not(unix))]
mod imp {
    use super::*;

    /// Nothing: there is no control channel on this platform.
    pub(crate) struct Server;

    /// As on unix, `run` drops it when it stops serving.
    impl Drop for Server {
        fn drop(&mut self) {}
    }

    pub(crate) fn serve(
        _socket: &Socket,
        _host: std::sync::Arc<plughost::Host>,
    ) -> anyhow::Result<Option<Server>> {
        tracing::debug!("no control socket: not supported on this platform");
        Ok(None)
    }

    pub(crate) fn request(_socket: &Socket, _request: &Value) -> anyhow::Result<Value> {
        anyhow::bail!(
            "the control channel (plughost emit, plughost events) is not supported on this \
             platform"
        )
    }
}
