//! `plughost run`: load every plugin in the folder, watch it and the settings file, check
//! health, until Ctrl-C or SIGTERM; meanwhile serve the admin API on the control socket and,
//! if asked, on a TCP address.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use plughost::{CallPolicy, Dispatcher, Host, HostConfig, WatchOptions};
use plughost_admin::{Admin, AdminServer, Listener};

use crate::control;

pub(crate) fn run(
    config: HostConfig,
    watch: bool,
    settle: Duration,
    health_interval: Duration,
    socket: &control::Socket,
    admin: Option<SocketAddr>,
) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Listen before loading anything, so a signal during start-up still shuts down cleanly.
    let mut signals = {
        let _runtime = runtime.enter();
        Signals::listen()?
    };
    let plugins_dir = config.host.plugins_dir.clone();
    // The flag wins over the file, and is held to the same rule.
    let listen = admin.or(config.admin.listen);
    if let Some(addr) = listen {
        config.admin.check_exposure(addr).map_err(|reason| {
            anyhow::anyhow!("refusing to serve the admin API on {addr}: {reason}")
        })?;
    }
    let host = Arc::new(Host::new(config)?);
    // One dispatcher for the API's calls and the health checks, so that the API shows both.
    let dispatcher = Arc::new(Dispatcher::new(host.clone(), CallPolicy::default()));
    // Before loading anything: a second host on the same folder is refused at once. Requests
    // are served while plugins load, and until the signal to stop.
    let (api, socket_file) = serve_api(&dispatcher, socket, listen)?;
    // Watch first, so that nothing written while loading is missed.
    let watcher = if watch {
        let options = WatchOptions {
            settle,
            ..WatchOptions::default()
        };
        Some(host.watch(options)?)
    } else {
        None
    };
    // Loading runs on a thread of its own, so that a signal is heard while a plugin's Init
    // takes its time.
    let loaded = in_background(&host, |host| host.load_all());
    let loaded = runtime.block_on(async {
        tokio::select! {
            loaded = loaded => Some(loaded),
            () = signals.next() => None,
        }
    });
    let mut health = None;
    match loaded {
        Some(Ok(Ok(report))) => {
            tracing::info!(
                "{} plugin(s) running, {} file(s) refused, {} {}; Ctrl-C to stop",
                report.loaded.len(),
                report.refused.len(),
                if watch { "watching" } else { "from" },
                plugins_dir.display()
            );
            health = (!health_interval.is_zero()).then(|| {
                let _runtime = runtime.enter();
                dispatcher.poll_health(health_interval)
            });
            runtime.block_on(signals.next());
        }
        Some(Ok(Err(error))) => return Err(error.into()),
        Some(Err(_)) => anyhow::bail!("loading the plugins ended without a report"),
        None => tracing::info!("stopping while loading: no further plugin starts"),
    }
    if let Some(health) = health {
        health.abort();
    }
    // No more requests from outside: the API stops now, before plugins shut down, and its
    // socket goes.
    drop(api);
    drop(socket_file);
    tracing::info!("shutting down (Ctrl-C again to exit at once)");
    // Bounded (each plugin's calls in flight and its Shutdown by host.shutdown_timeout), but
    // an operator may not want to wait: a second signal exits at once. The watcher stops in
    // the background too: it may be waiting for a plugin's Init.
    let stopped = in_background(&host, move |host| {
        host.shutdown();
        drop(watcher);
    });
    runtime.block_on(async {
        tokio::select! {
            _ = stopped => {}
            () = signals.next() => {
                let left: Vec<String> = host.plugins().into_iter().map(|p| p.name).collect();
                let _ = writeln!(
                    std::io::stderr(),
                    "second signal: exiting now without shutting down {}",
                    if left.is_empty() { "anything more".to_owned() } else { left.join(", ") }
                );
                std::process::exit(130);
            }
        }
    });
    let still_mapped = host.still_mapped();
    if still_mapped > 0 {
        tracing::info!("{still_mapped} closed plugin version(s) were still mapped at exit");
    }
    // Plugin threads the host gave up on must not keep the program alive.
    runtime.shutdown_background();
    Ok(ExitCode::SUCCESS)
}

/// The control socket, bound for this host alone (refused if another host serves it), as the
/// file to remove at the end.
#[cfg(unix)]
type SocketFile = Option<control::SocketFile>;
#[cfg(not(unix))]
type SocketFile = ();

/// Starts the admin API over `dispatcher` on the control socket and, if given, on `listen`.
fn serve_api(
    dispatcher: &Arc<Dispatcher>,
    socket: &control::Socket,
    listen: Option<SocketAddr>,
) -> anyhow::Result<(Option<AdminServer>, SocketFile)> {
    let mut listeners = Vec::new();
    #[cfg(unix)]
    let socket_file = match control::bind(socket)? {
        Some((listener, file)) => {
            listeners.push(Listener::Unix(listener, socket.path().to_owned()));
            Some(file)
        }
        None => None,
    };
    #[cfg(not(unix))]
    let socket_file = {
        tracing::debug!(
            "no control socket {}: not supported on this platform",
            socket.path().display()
        );
    };
    listeners.extend(listen.map(Listener::Tcp));
    if listeners.is_empty() {
        return Ok((None, socket_file));
    }
    let server = Admin::new(dispatcher.clone()).serve(listeners)?;
    Ok((Some(server), socket_file))
}

/// Runs `work` on `host` on a thread of its own; the receiver gets its result.
fn in_background<T: Send + 'static>(
    host: &Arc<Host>,
    work: impl FnOnce(&Host) -> T + Send + 'static,
) -> tokio::sync::oneshot::Receiver<T> {
    let (done, result) = tokio::sync::oneshot::channel();
    let host = Arc::clone(host);
    std::thread::spawn(move || {
        let _ = done.send(work(&host));
    });
    result
}

/// Ctrl-C and, on unix, SIGTERM, heard as many times as they come.
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    /// Starts listening; needs the runtime entered.
    fn listen() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                interrupt: signal(SignalKind::interrupt()).context("cannot listen for Ctrl-C")?,
                terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Signals {})
        }
    }

    /// The next signal.
    async fn next(&mut self) {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => {}
                _ = self.terminate.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
