//! `plughost run`: load every plugin in the folder, watch it and the settings file, check
//! health, until Ctrl-C or SIGTERM.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use plughost::{CallPolicy, Dispatcher, Host, HostConfig, WatchOptions};

pub(crate) fn run(
    config: HostConfig,
    watch: bool,
    settle: Duration,
    health_interval: Duration,
) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Listen before loading anything, so a signal during start-up still shuts down cleanly.
    let shutdown_requested = {
        let _runtime = runtime.enter();
        shutdown_signal()?
    };
    let plugins_dir = config.host.plugins_dir.clone();
    let host = Arc::new(Host::new(config)?);
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
    let report = host.load_all()?;
    tracing::info!(
        "{} plugin(s) running, {} file(s) refused, {} {}; Ctrl-C to stop",
        report.loaded.len(),
        report.refused.len(),
        if watch { "watching" } else { "from" },
        plugins_dir.display()
    );
    let health = (!health_interval.is_zero()).then(|| {
        let _runtime = runtime.enter();
        Arc::new(Dispatcher::new(host.clone(), CallPolicy::default())).poll_health(health_interval)
    });
    runtime.block_on(shutdown_requested);
    if let Some(health) = health {
        health.abort();
    }
    tracing::info!("shutting down");
    drop(watcher);
    host.shutdown();
    let still_mapped = host.still_mapped();
    if still_mapped > 0 {
        tracing::info!("{still_mapped} closed plugin version(s) were still mapped at exit");
    }
    Ok(ExitCode::SUCCESS)
}

/// Starts listening for Ctrl-C and, on unix, SIGTERM; the future ends when one arrives.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for Ctrl-C")?;
        let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
