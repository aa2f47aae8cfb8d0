//! The command line: `plughost run | list | inspect | exec`.
//!
//! Logs go to stderr (filtered by `RUST_LOG`; default `info` for `run`, `warn` otherwise), so
//! that what a command prints on stdout can be piped.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use plughost::{CallPolicy, Dispatcher, Host, HostOptions, LoadError, PluginInfo, WatchOptions};

/// Discover, validate, load and call native Rust plugins.
#[derive(Debug, Parser)]
#[command(name = "plughost", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load every plugin in the folder, then watch it: load new libraries, hot-reload changed
    /// ones, unload deleted ones. Runs until Ctrl-C or SIGTERM, then shuts everything down.
    Run {
        #[command(flatten)]
        dir: DirArgs,
        /// Load once and do not watch the folder.
        #[arg(long)]
        no_watch: bool,
        /// Where the platform cannot tell when a write is finished (not Linux), how long a
        /// changed file must be quiet before it is reloaded, in milliseconds.
        #[arg(long, value_name = "MS", default_value_t = 50)]
        settle_ms: u64,
        /// Check every plugin's health this often, in seconds, logging changes; 0 turns it off.
        #[arg(long, value_name = "SECS", default_value_t = 30)]
        health_interval: u64,
    },
    /// Show every library in the folder: name, version, plugin-api version, file, status.
    List(DirArgs),
    /// Validate one library and print its metadata and configuration schema. Exits 0 if it
    /// would load, 1 with the reason if not.
    Inspect {
        /// The library file.
        file: PathBuf,
        /// Print the metadata as JSON.
        #[arg(long)]
        json: bool,
        /// Also ask the plugin whether it accepts this configuration (JSON), without starting
        /// it.
        #[arg(long, value_name = "JSON")]
        config: Option<String>,
    },
    /// Load one plugin, Init it, Execute it once on INPUT, print the output, Shut it down.
    Exec {
        /// The plugin's name.
        name: String,
        /// The input; `-` reads standard input.
        input: String,
        /// Init configuration, as JSON.
        #[arg(long, value_name = "JSON", default_value = "{}")]
        config: String,
        /// Give up on the call after this many milliseconds (the plugin is asked to stop).
        #[arg(long, value_name = "MS", default_value_t = 30_000)]
        timeout: u64,
        /// Print where the time went (load, init, execute, shutdown) to stderr.
        #[arg(long, short)]
        verbose: bool,
        #[command(flatten)]
        dir: DirArgs,
    },
}

#[derive(Debug, Args)]
struct DirArgs {
    /// The plugins folder.
    #[arg(long, value_name = "DIR", default_value = "plugins")]
    plugins_dir: PathBuf,
    /// Where private copies of loaded libraries go [default: <temp>/plughost-shadow].
    #[arg(long, value_name = "DIR")]
    shadow_dir: Option<PathBuf>,
}

impl DirArgs {
    fn host(&self) -> anyhow::Result<Host> {
        let mut options = HostOptions::with_plugins_dir(&self.plugins_dir);
        if let Some(shadow) = &self.shadow_dir {
            options.shadow_dir = shadow.clone();
        }
        Ok(Host::new(options)?)
    }
}

/// Runs the command line and maps failure to exit code 1 with a one-line reason.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(matches!(cli.command, Command::Run { .. }));
    match run(cli.command) {
        Ok(code) => code,
        Err(error) => {
            // Not `eprintln!`, which panics when stderr cannot be written: the exit code must
            // still say what happened.
            let _ = writeln!(std::io::stderr(), "error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose_by_default: bool) {
    let default = if verbose_by_default { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        // Its report of a failed write is an `eprintln!`, which panics when stderr is full or
        // closed; a log line lost is better than a host aborted.
        .log_internal_errors(false)
        .init();
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            dir,
            no_watch,
            settle_ms,
            health_interval,
        } => serve(
            &dir,
            !no_watch,
            Duration::from_millis(settle_ms),
            Duration::from_secs(health_interval),
        ),
        Command::List(dir) => list(&dir),
        Command::Inspect { file, json, config } => inspect(&file, json, config.as_deref()),
        Command::Exec {
            name,
            input,
            config,
            timeout,
            verbose,
            dir,
        } => exec(
            &name,
            &input,
            &config,
            Duration::from_millis(timeout),
            verbose,
            &dir,
        ),
    }
}

fn serve(
    dir: &DirArgs,
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
    let host = Arc::new(dir.host()?);
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
        dir.plugins_dir.display()
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

/// The reason part of a load error, without the leading file name (the table has a column
/// for that).
fn reason(error: &LoadError) -> String {
    let text = error.to_string();
    let prefix = format!("{}: ", error.path().display());
    text.strip_prefix(&prefix).unwrap_or(&text).to_owned()
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn list(dir: &DirArgs) -> anyhow::Result<ExitCode> {
    let host = dir.host()?;
    let mut rows = vec![[
        "NAME".to_owned(),
        "VERSION".to_owned(),
        "API".to_owned(),
        "FILE".to_owned(),
        "STATUS".to_owned(),
    ]];
    let mut names: Vec<(String, PathBuf)> = Vec::new();
    for outcome in host.scan()? {
        rows.push(match outcome {
            Ok(library) => {
                let info = library.info();
                let status = match names.iter().find(|(n, _)| *n == info.name) {
                    Some((_, first)) => format!(
                        "refused: plugin {:?} is already provided by {}",
                        info.name,
                        file_name(first)
                    ),
                    None => "ok".to_owned(),
                };
                names.push((info.name.clone(), library.file().to_owned()));
                [
                    info.name.clone(),
                    info.version.to_string(),
                    info.api_version.to_string(),
                    file_name(library.file()),
                    status,
                ]
            }
            Err(error) => [
                "-".into(),
                "-".into(),
                "-".into(),
                file_name(error.path()),
                format!("refused: {}", reason(&error)),
            ],
        });
    }
    print_table(&rows);
    Ok(ExitCode::SUCCESS)
}

fn print_table<const N: usize>(rows: &[[String; N]]) {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = std::io::stdout().lock();
    for row in rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

fn inspect(file: &Path, json: bool, config: Option<&str>) -> anyhow::Result<ExitCode> {
    if !file.is_file() {
        bail!("{}: no such file", file.display());
    }
    let host = Host::new(HostOptions::default())?;
    let library = host.open(file)?;
    let info = library.info();
    if let Some(config) = config {
        library
            .validate_config(config.as_bytes())
            .with_context(|| {
                format!(
                    "{}: plugin {} does not accept the configuration {config}",
                    file.display(),
                    info.name
                )
            })?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(info)?);
    } else {
        print_info(info, file);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_info(info: &PluginInfo, file: &Path) {
    let or_dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            s.to_owned()
        }
    };
    println!("{} {}", info.name, info.version);
    println!("  description:  {}", or_dash(&info.description));
    println!("  file:         {}", file.display());
    println!("  plugin-api:   {}", info.api_version);
    println!("  author:       {}", or_dash(&info.author));
    println!("  license:      {}", or_dash(&info.license));
    println!("  capabilities: {}", or_dash(&info.capabilities.join(", ")));
    println!("  tags:         {}", or_dash(&info.tags.join(", ")));
    if info.config_schema.is_empty() {
        println!("  config:       (none)");
        return;
    }
    println!("  config:");
    let mut rows = vec![[
        "    KEY".to_owned(),
        "TYPE".to_owned(),
        "REQUIRED".to_owned(),
        "DEFAULT".to_owned(),
        "DESCRIPTION".to_owned(),
    ]];
    for key in &info.config_schema {
        let default = match (&key.default, key.sensitive) {
            (Some(_), true) => "***".to_owned(),
            (Some(d), false) => d.clone(),
            (None, _) => "-".to_owned(),
        };
        let mut description = or_dash(&key.description);
        if key.sensitive {
            description.push_str(" (sensitive)");
        }
        rows.push([
            format!("    {}", key.key),
            key.ty.to_owned(),
            if key.required { "yes" } else { "no" }.to_owned(),
            default,
            description,
        ]);
    }
    print_table(&rows);
}

fn exec(
    name: &str,
    input: &str,
    config: &str,
    timeout: Duration,
    verbose: bool,
    dir: &DirArgs,
) -> anyhow::Result<ExitCode> {
    serde_json::from_str::<serde_json::Value>(config)
        .with_context(|| format!("--config is not valid JSON: {config}"))?;
    let input = if input == "-" {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("cannot read the input from standard input")?;
        bytes
    } else {
        input.as_bytes().to_vec()
    };

    let host = Arc::new(dir.host()?);
    let mut refused = Vec::new();
    let mut library = None;
    let started = std::time::Instant::now();
    // A library's name is only known once it is loaded: open them in order, stop at the first
    // that is `name` (the one `plughost run` would load too).
    for path in host.discover()? {
        match host.open(&path) {
            Ok(lib) if lib.info().name == name => {
                library = Some(lib);
                break;
            }
            Ok(_) => {}
            Err(error) => refused.push(error),
        }
    }
    let Some(library) = library else {
        let mut message = format!("no plugin named {name:?} in {}", dir.plugins_dir.display());
        if !refused.is_empty() {
            message.push_str(&format!(
                " ({} file(s) refused, e.g. {}; see `plughost list`)",
                refused.len(),
                refused[0]
            ));
        }
        bail!(message);
    };
    let loaded = started.elapsed();

    let started = std::time::Instant::now();
    host.start(library, config.as_bytes())?;
    let initialised = started.elapsed();

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
    let started = std::time::Instant::now();
    let result = runtime.block_on(dispatcher.execute(name, input));
    let executed = started.elapsed();

    if let Err(error @ plughost::CallError::Timeout { .. }) = result {
        // The plugin is still running: Shutdown (and unloading) must wait for it, so leave it
        // to the end of the process instead.
        if verbose {
            let _ = writeln!(
                std::io::stderr(),
                "{name}: load {:.2} ms, init {:.2} ms, execute timed out after {:.3} ms; \
                 exiting without waiting for the plugin",
                loaded.as_secs_f64() * 1e3,
                initialised.as_secs_f64() * 1e3,
                executed.as_secs_f64() * 1e3,
            );
        }
        let _ = writeln!(std::io::stderr(), "error: {error}");
        std::process::exit(1);
    }
    let started = std::time::Instant::now();
    let shutdown = host.unload(name);
    let shut_down = started.elapsed();
    if verbose {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let _ = writeln!(
            std::io::stderr(),
            "{name}: load {:.2} ms, init {:.2} ms, execute {:.3} ms, shutdown {:.2} ms",
            ms(loaded),
            ms(initialised),
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
