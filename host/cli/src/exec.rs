//! `plughost exec NAME INPUT`: start one plugin (after the plugins it requires), call it once
//! through the guarded async path, print the answer, shut it down.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use plughost::{CallError, CallPolicy, Dispatcher, Host, HostConfig, HostError, Isolation};

pub(crate) fn exec(
    name: &str,
    input: &str,
    init: Option<&str>,
    timeout: Option<Duration>,
    verbose: bool,
    isolated: bool,
    mut config: HostConfig,
) -> anyhow::Result<ExitCode> {
    if isolated {
        config.plugins.entry(name.to_owned()).or_default().isolation = Some(Isolation::Process);
    }
    if let Some(init) = init {
        if let Err(e) = serde_json::from_str::<serde_json::Value>(init) {
            bail!("--init is not valid JSON: {e}");
        }
    }
    let timeout = timeout
        .or(config.plugin(name).timeout)
        .or(config.host.call_timeout)
        .unwrap_or(Duration::from_secs(30));
    let input = if input == "-" {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("cannot read the input from standard input")?;
        bytes
    } else {
        input.as_bytes().to_vec()
    };

    let host = Arc::new(Host::new(config)?);
    let started = Instant::now();
    host.load(name, init.map(str::as_bytes))
        .map_err(|error| match error {
            HostError::NoSuchPlugin { ref refused, .. } if !refused.is_empty() => {
                anyhow::anyhow!("{error}; see `plughost list`")
            }
            other => other.into(),
        })?;
    let loaded = started.elapsed();

    // One call through the same guarded path a long-running host uses.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let dispatcher = Dispatcher::new(
        host.clone(),
        CallPolicy {
            timeout,
            breaker: None,
            ..CallPolicy::default()
        },
    );
    let started = Instant::now();
    let result = runtime.block_on(dispatcher.execute(name, input));
    let executed = started.elapsed();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;

    if let Err(error @ CallError::Timeout { .. }) = result {
        // The plugin is still running: Shutdown (and unloading) must wait for it, so leave it
        // to the end of the process instead.
        if verbose {
            let _ = writeln!(
                std::io::stderr(),
                "{name}: load and init {:.2} ms, execute timed out after {:.3} ms; exiting \
                 without waiting for the plugin",
                ms(loaded),
                ms(executed),
            );
        }
        let _ = writeln!(std::io::stderr(), "error: {error}");
        std::process::exit(1);
    }
    let started = Instant::now();
    let shutdown = host.unload(name);
    let shut_down = started.elapsed();
    if verbose {
        let _ = writeln!(
            std::io::stderr(),
            "{name}: load and init {:.2} ms, execute {:.3} ms, shutdown {:.2} ms",
            ms(loaded),
            ms(executed),
            ms(shut_down)
        );
    }
    let output = result?;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&output)?;
    if !output.ends_with(b"\n") {
        stdout.write_all(b"\n")?;
    }
    stdout.flush()?;
    shutdown.with_context(|| format!("plugin {name} answered but failed to shut down"))?;
    Ok(ExitCode::SUCCESS)
}
