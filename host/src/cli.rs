//! The command line: `plughost run | list | inspect | exec | config check | enable | disable`.
//!
//! Settings come from `--config FILE`, else `plughost.toml` in the working folder if present,
//! else the defaults; `--plugins-dir` and `--shadow-dir` override the file. Logs go to stderr
//! (filtered by `RUST_LOG`; default `info` for `run`, `warn` otherwise; JSON lines if the file
//! says `log_format = "json"`), so that what a command prints on stdout can be piped.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use plughost::config::DEFAULT_FILE;
use plughost::{
    schema, CallPolicy, ConfigError, Dispatcher, Host, HostConfig, HostOptions, LoadError,
    LogFormat, PluginInfo, PluginLibrary, WatchOptions,
};

/// Discover, validate, load and call native Rust plugins.
#[derive(Debug, Parser)]
#[command(name = "plughost", version, about)]
struct Cli {
    /// The configuration file [default: plughost.toml in the working folder, if present].
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
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
        /// changed file must be quiet before it is reloaded, in milliseconds [default: the
        /// file's host.debounce].
        #[arg(long, value_name = "MS")]
        settle_ms: Option<u64>,
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
        /// Also ask the plugin whether it accepts this Init configuration (JSON), without
        /// starting it.
        #[arg(long = "init", value_name = "JSON")]
        init: Option<String>,
    },
    /// Load one plugin, Init it, Execute it once on INPUT, print the output, Shut it down.
    Exec {
        /// The plugin's name.
        name: String,
        /// The input; `-` reads standard input.
        input: String,
        /// Init configuration, as JSON [default: the plugin's table in the configuration file].
        #[arg(long = "init", value_name = "JSON")]
        init: Option<String>,
        /// Give up on the call after this many milliseconds (the plugin is asked to stop)
        /// [default: the plugin's timeout in the configuration file, else 30000].
        #[arg(long, value_name = "MS")]
        timeout: Option<u64>,
        /// Print where the time went (load, init, execute, shutdown) to stderr.
        #[arg(long, short)]
        verbose: bool,
        #[command(flatten)]
        dir: DirArgs,
    },
    /// The configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Enable a plugin in the configuration file; a running `plughost run` starts it.
    Enable {
        /// The plugin's name.
        name: String,
    },
    /// Disable a plugin in the configuration file; a running `plughost run` shuts it down and
    /// unloads it (its file is left alone).
    Disable {
        /// The plugin's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Check the file and every plugin's config against the plugin's schema and
    /// requirements (reading descriptors only, starting nothing), and print the effective
    /// configuration with secrets masked. Exits 1 if anything would be refused.
    Check(DirArgs),
}

#[derive(Debug, Args)]
struct DirArgs {
    /// The plugins folder [default: the file's host.plugins_dir, else plugins].
    #[arg(long, value_name = "DIR")]
    plugins_dir: Option<PathBuf>,
    /// Where private copies of loaded libraries go [default: <temp>/plughost-shadow-<uid>].
    #[arg(long, value_name = "DIR")]
    shadow_dir: Option<PathBuf>,
}

impl DirArgs {
    /// The settings, with these flags applied over them.
    fn apply(&self, mut config: HostConfig) -> HostConfig {
        if let Some(dir) = &self.plugins_dir {
            config.host.plugins_dir = dir.clone();
        }
        if let Some(dir) = &self.shadow_dir {
            config.host.shadow_dir = Some(dir.clone());
        }
        config
    }
}

/// Runs the command line and maps failure to exit code 1 with a one-line reason.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The file is read first: it says how to log. Not for enable / disable, which only edit
    // it: reading it here would need the host's environment variables (`set_enabled`).
    let config = match cli.command {
        Command::Enable { .. } | Command::Disable { .. } => Ok(HostConfig::default()),
        _ => HostConfig::discover(cli.config.as_deref()),
    };
    let format = config
        .as_ref()
        .map_or(LogFormat::Human, |c| c.host.log_format);
    init_logging(matches!(cli.command, Command::Run { .. }), format);
    let outcome = config
        .map_err(anyhow::Error::from)
        .and_then(|config| run(cli.command, config, cli.config.as_deref()));
    match outcome {
        Ok(code) => code,
        Err(error) => {
            // Not `eprintln!`, which panics when stderr cannot be written: the exit code must
            // still say what happened.
            let _ = writeln!(std::io::stderr(), "error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose_by_default: bool, format: LogFormat) {
    let default = if verbose_by_default { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        // Its report of a failed write is an `eprintln!`, which panics when stderr is full or
        // closed; a log line lost is better than a host aborted.
        .log_internal_errors(false);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(command: Command, config: HostConfig, file: Option<&Path>) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            dir,
            no_watch,
            settle_ms,
            health_interval,
        } => {
            let config = dir.apply(config);
            let watch = config.host.watch && !no_watch;
            let settle = settle_ms.map_or(config.host.debounce, Duration::from_millis);
            serve(config, watch, settle, Duration::from_secs(health_interval))
        }
        Command::List(dir) => list(dir.apply(config)),
        Command::Inspect { file, json, init } => inspect(&file, json, init.as_deref()),
        Command::Exec {
            name,
            input,
            init,
            timeout,
            verbose,
            dir,
        } => exec(
            &name,
            &input,
            init.as_deref(),
            timeout.map(Duration::from_millis),
            verbose,
            dir.apply(config),
        ),
        Command::Config(ConfigCommand::Check(dir)) => check(dir.apply(config)),
        Command::Enable { name } => set_enabled(file, &name, true),
        Command::Disable { name } => set_enabled(file, &name, false),
    }
}

fn serve(
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
    let host = Arc::new(Host::with_config(config)?);
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

fn list(config: HostConfig) -> anyhow::Result<ExitCode> {
    let host = Host::with_config(config.clone())?;
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
                    None if !config.plugin(&info.name).enabled => "disabled".to_owned(),
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
        // Shown with its secrets masked: it may hold a password.
        let shown = match serde_json::from_str::<serde_json::Value>(config) {
            Ok(serde_json::Value::Object(map)) => {
                serde_json::Value::Object(schema::masked(info, &map)).to_string()
            }
            Ok(_) => config.to_owned(),
            Err(_) => "(not JSON)".to_owned(),
        };
        // The plugin gets what the host would give it: the schema's defaults filled in.
        let filled = match serde_json::from_str::<serde_json::Value>(config) {
            Ok(serde_json::Value::Object(map)) => match schema::check(info, &map) {
                Ok(checked) => serde_json::to_string(&checked.config)?,
                Err(problem) => bail!(
                    "{}: plugin {}: config key `{}` {}",
                    file.display(),
                    info.name,
                    problem.key,
                    problem.reason
                ),
            },
            _ => config.to_owned(),
        };
        library.validate_config(filled.as_bytes()).map_err(|e| {
            let secrets =
                serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(config)
                    .map(|map| schema::secrets(info, &map))
                    .unwrap_or_default();
            anyhow::anyhow!(
                "{}: plugin {} does not accept the configuration {shown}: {}",
                file.display(),
                info.name,
                schema::scrub(&e.to_string(), &secrets)
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
    let requires: Vec<String> = info.dependencies.iter().map(ToString::to_string).collect();
    println!("  requires:     {}", or_dash(&requires.join(", ")));
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

/// Starts the plugins `info` requires (theirs first), each with its settings, from `others`.
/// One missing, disabled or refused is left to the host's refusal of `info`'s plugin, which
/// names it.
fn start_requirements(
    host: &Host,
    info: &PluginInfo,
    others: &mut Vec<PluginLibrary>,
) -> anyhow::Result<()> {
    for requirement in &info.dependencies {
        let name = &requirement.name;
        if host.handle(name).is_ok() || !host.config().plugin(name).enabled {
            continue;
        }
        // Taken out, so a cycle ends here instead of recursing forever.
        let Some(i) = others.iter().position(|l| &l.info().name == name) else {
            continue;
        };
        let library = others.swap_remove(i);
        let required = library.info().clone();
        start_requirements(host, &required, others)?;
        host.start_configured(library)
            .with_context(|| format!("{} requires {requirement}", info.name))?;
    }
    Ok(())
}

fn exec(
    name: &str,
    input: &str,
    init: Option<&str>,
    timeout: Option<Duration>,
    verbose: bool,
    config: HostConfig,
) -> anyhow::Result<ExitCode> {
    if let Some(init) = init {
        if let Err(e) = serde_json::from_str::<serde_json::Value>(init) {
            bail!("--init is not valid JSON: {e}");
        }
    }
    let timeout = timeout
        .or(config.plugin(name).timeout)
        .or(config.host.call_timeout)
        .unwrap_or(Duration::from_secs(30));
    let plugins_dir = config.host.plugins_dir.clone();
    let input = if input == "-" {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("cannot read the input from standard input")?;
        bytes
    } else {
        input.as_bytes().to_vec()
    };

    let host = Arc::new(Host::with_config(config)?);
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
        let mut message = format!("no plugin named {name:?} in {}", plugins_dir.display());
        if !refused.is_empty() {
            message.push_str(&format!(
                " ({} file(s) refused, e.g. {}; see `plughost list`)",
                refused.len(),
                refused[0]
            ));
        }
        bail!(message);
    };
    // The plugins it requires start first, as `plughost run` would start them.
    if !library.info().dependencies.is_empty() {
        let mut others: Vec<PluginLibrary> = host
            .discover()?
            .iter()
            .filter(|path| path.as_path() != library.file())
            .filter_map(|path| host.open(path).ok())
            .collect();
        start_requirements(&host, library.info(), &mut others)?;
    }
    let loaded = started.elapsed();

    let started = std::time::Instant::now();
    match init {
        Some(init) => host.start(library, init.as_bytes())?,
        None => host.start_configured(library)?,
    };
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

/// `plughost config check`.
fn check(config: HostConfig) -> anyhow::Result<ExitCode> {
    let host = Host::with_config(config.clone())?;
    // Not "plughost.toml": without a file the settings are the built-in defaults.
    let file = config.file.as_ref().map_or(
        "the built-in defaults (no configuration file)".to_owned(),
        |f| f.display().to_string(),
    );
    let mut problems: Vec<String> = Vec::new();
    let mut libraries = Vec::new();
    for outcome in host.scan()? {
        match outcome {
            Ok(library) => libraries.push(library),
            // `plughost run` would refuse it: as much a problem as a config it would refuse.
            Err(error) => problems.push(error.to_string()),
        }
    }
    let mut effective = toml::Table::new();
    effective.insert("host".into(), toml::Value::try_from(&config.host)?);
    let mut plugins = toml::Table::new();
    let mut candidates = Vec::new();
    for library in &libraries {
        let info = library.info();
        let settings = config.plugin(&info.name);
        let mut table = toml::Table::new();
        table.insert("enabled".into(), settings.enabled.into());
        table.insert("priority".into(), settings.priority.into());
        if let Some(timeout) = settings.timeout {
            table.insert(
                "timeout".into(),
                humantime::format_duration(timeout).to_string().into(),
            );
        }
        // A value from the environment may be a secret: a problem with it names the variable.
        let origin = |key: &str| config.config_origin(&info.name, key);
        match schema::check_with(info, &settings.config, &origin) {
            Ok(checked) => {
                for key in &checked.unknown {
                    let at = config.locate(&["plugins", &info.name, "config", key]);
                    let at = at.map(|a| format!("{a}: ")).unwrap_or_default();
                    let _ = writeln!(
                        std::io::stderr(),
                        "warning: {at}plugin {}: unknown config key `{key}` (not in its schema)",
                        info.name
                    );
                }
                let bytes = serde_json::to_vec(&checked.config)?;
                if settings.enabled {
                    if let Err(e) = library.validate_config(&bytes) {
                        let secrets = schema::secrets(info, &checked.config);
                        // Where the config is: its table in the file (or the plugin's table,
                        // or the file); the library itself without a file.
                        let at = config
                            .locate(&["plugins", &info.name, "config"])
                            .map_or_else(
                                || library.file().display().to_string(),
                                |a| a.to_string(),
                            );
                        problems.push(format!(
                            "{at}: plugin {} refuses its config: {}",
                            info.name,
                            schema::scrub(&e.to_string(), &secrets)
                        ));
                    }
                }
                let shown = serde_json::Value::Object(schema::masked(info, &checked.config));
                if let Ok(value) = toml::Value::try_from(&shown) {
                    table.insert("config".into(), value);
                }
            }
            Err(problem) => {
                let at = config.locate(&["plugins", &info.name, "config", &problem.key]);
                let at = at.map(|a| format!("{a}: ")).unwrap_or_default();
                problems.push(format!(
                    "{at}plugin {}: config key `{}` {}",
                    info.name, problem.key, problem.reason
                ));
            }
        }
        plugins.insert(info.name.clone(), table.into());
        if settings.enabled {
            candidates.push(plughost::dependencies::Candidate {
                info: info.clone(),
                file: library.file().to_owned(),
                priority: settings.priority,
            });
        }
    }
    for name in config.plugins.keys() {
        if !plugins.contains_key(name) {
            let at = config.locate(&["plugins", name]);
            let at = at.map(|a| format!("{a}: ")).unwrap_or_default();
            let _ = writeln!(
                std::io::stderr(),
                "warning: {at}no plugin named {name} in {}",
                config.host.plugins_dir.display()
            );
        }
    }
    let plan =
        plughost::dependencies::start_order(&candidates, &[], &|n| !config.plugin(n).enabled);
    problems.extend(plan.refused.iter().map(|(_, e)| e.to_string()));
    let order: Vec<&str> = plan
        .order
        .iter()
        .map(|&i| candidates[i].info.name.as_str())
        .collect();
    effective.insert("plugins".into(), plugins.into());

    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "# effective configuration of {file}; secrets shown as ***"
    )?;
    writeln!(out, "# start order: {}", order.join(", "))?;
    writeln!(out, "{}", toml::to_string_pretty(&effective)?)?;
    if problems.is_empty() {
        let _ = writeln!(std::io::stderr(), "{file}: ok");
        Ok(ExitCode::SUCCESS)
    } else {
        for problem in &problems {
            let _ = writeln!(std::io::stderr(), "error: {problem}");
        }
        Ok(ExitCode::FAILURE)
    }
}

/// `plughost enable` / `disable`: sets `plugins.NAME.enabled` in the file, keeping the rest
/// of it (comments, order, formatting) as it was. A running `plughost run` watching the file
/// applies the change.
///
/// The file is replaced whole (temp file, then rename), so a host never reads half of it. A
/// symbolic link is written through: the link stays, its target is replaced, with its
/// permissions. The edit is checked with [`HostConfig::check_structure`], not by reading it
/// as the host would: this process's environment need not have the variables the host's has.
fn set_enabled(file: Option<&Path>, name: &str, enabled: bool) -> anyhow::Result<ExitCode> {
    let path = file.unwrap_or(Path::new(DEFAULT_FILE));
    let read_error = |error| ConfigError::Read {
        path: path.to_owned(),
        error,
    };
    // The file actually written: the link's final target, if `path` is a symbolic link.
    let (target, text) = match std::fs::canonicalize(path) {
        Ok(target) => {
            let text = std::fs::read_to_string(&target).map_err(read_error)?;
            (target, text)
        }
        // No `plughost.toml` yet: start one. A link to a missing file is not that case:
        // writing would replace the link.
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                && file.is_none()
                && std::fs::symlink_metadata(path).is_err() =>
        {
            (path.to_owned(), String::new())
        }
        Err(e) => return Err(read_error(e).into()),
    };
    let mut document: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| anyhow::anyhow!("{}: {e}", path.display()))?;
    let not_a_table = |what: String| ConfigError::Edit {
        path: path.to_owned(),
        message: format!("{what} is not a table"),
    };
    let plugins = document
        .entry("plugins")
        .or_insert_with(|| {
            let mut table = toml_edit::Table::new();
            table.set_implicit(true);
            table.into()
        })
        .as_table_mut()
        .ok_or_else(|| not_a_table("plugins".into()))?;
    let plugin = plugins
        .entry(name)
        .or_insert_with(|| toml_edit::Table::new().into())
        .as_table_like_mut()
        .ok_or_else(|| not_a_table(format!("plugins.{name}")))?;
    plugin.insert("enabled", toml_edit::value(enabled));
    // The new text is checked like any edit before it replaces the file.
    let updated = document.to_string();
    HostConfig::check_structure(path, &updated)?;
    replace_file(&target, updated.as_bytes()).map_err(|error| ConfigError::Edit {
        path: path.to_owned(),
        message: format!("cannot write {}: {error}", target.display()),
    })?;
    println!(
        "{} {name} in {}; a running plughost applies it now",
        if enabled { "enabled" } else { "disabled" },
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Replaces the file `path` (not a symbolic link) by `bytes` atomically: a temp file in the
/// same folder (a rename does not cross file systems), given the old file's permissions,
/// renamed over it. The temp file never has wider permissions than the old file: the config
/// may hold secrets.
fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let folder = match path.parent() {
        Some(folder) if !folder.as_os_str().is_empty() => folder,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .unwrap_or(path.as_os_str())
        .to_string_lossy();
    let temporary = folder.join(format!(".{name}.plughost-tmp-{}", std::process::id()));
    let permissions = match std::fs::metadata(path) {
        Ok(metadata) => Some(metadata.permissions()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    // A stale temp file from a crashed run of the same pid; `create_new` below refuses to
    // follow or reuse whatever is there.
    let _ = std::fs::remove_file(&temporary);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if let Some(permissions) = &permissions {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        // Created with at most the old mode (the umask may narrow it; set exactly below).
        options.mode(permissions.mode() & 0o7777);
    }
    let written = options.open(&temporary).and_then(|mut out| {
        out.write_all(bytes)?;
        if let Some(permissions) = permissions {
            out.set_permissions(permissions)?;
        }
        out.sync_all()
    });
    let outcome = written.and_then(|()| std::fs::rename(&temporary, path));
    if outcome.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    outcome
}
