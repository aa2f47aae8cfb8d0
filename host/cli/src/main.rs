//! The `plughost` command:
//!
//! - `run`: load the plugins folder, watch it, serve until Ctrl-C or SIGTERM, with the admin
//!   HTTP API on a control socket (`<plugins_dir>/.plughost.sock`, or `--control PATH`) and,
//!   if asked (`--admin ADDR`, `[admin] listen`), on TCP;
//! - `list`, `inspect FILE`: what the folder or one library holds, events declared included;
//! - `exec NAME INPUT`: load one plugin and call it once;
//! - `status`, `reload NAME`, `call NAME INPUT`, `emit TOPIC JSON`, `events`: a running host,
//!   through its admin API (`client`);
//! - `config check`, `enable NAME`, `disable NAME`: the settings file;
//! - `new NAME`: write a new plugin crate;
//! - `keygen`, `sign FILE...`: minisign keys and signatures for `host.require_signatures`.
//!
//! Settings come from `--config FILE`, else `plughost.toml` in the working folder if present,
//! else the defaults; `--plugins-dir` and `--shadow-dir` override the file. Logs go to stderr
//! (filtered by `RUST_LOG`; default `info` for `run`, `warn` otherwise; JSON lines if the file
//! says `log_format = "json"`), so that what a command prints on stdout can be piped.
//!
//! Each command is a thin call into the `plughost` library or the admin API, in a file of its
//! own.

#![forbid(unsafe_code)]

mod call;
mod client;
mod config;
mod control;
mod emit;
mod events;
mod exec;
mod inspect;
mod list;
mod new;
mod reload;
mod run;
mod sign;
mod status;
mod table;

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use plughost::{HostConfig, LogFormat};

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
    /// Meanwhile it serves the admin HTTP API on its control socket (.plughost.sock in the
    /// folder, or --control PATH), which status, reload, call, emit and events talk to, and on
    /// TCP if asked (--admin ADDR, or [admin] listen in the file).
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
        /// The control socket to serve the admin API on [default: .plughost.sock in the
        /// plugins folder].
        #[arg(long, value_name = "PATH")]
        control: Option<PathBuf>,
        /// Also serve the admin API on this TCP address, e.g. 127.0.0.1:9477 [default: the
        /// file's [admin] listen, else none]. An address that is not loopback needs [admin]
        /// token.
        #[arg(long, value_name = "ADDR")]
        admin: Option<SocketAddr>,
    },
    /// Show every library in the folder: name, version, plugin-api version, mode, file, the
    /// events it emits or subscribes to, status.
    List {
        /// Also show each library's SHA-256, who signed it (a trusted key's id) or why its
        /// signature does not count, what plughost.toml grants it and what it lacks.
        #[arg(long, short)]
        verbose: bool,
        #[command(flatten)]
        dir: DirArgs,
    },
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
        #[command(flatten)]
        dir: DirArgs,
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
        /// Run the plugin in a worker process of its own, as `isolation = "process"` would
        /// (Linux): a crash or a hang costs the call, not this command.
        #[arg(long)]
        isolated: bool,
        #[command(flatten)]
        dir: DirArgs,
    },
    /// Show what a running host serves: each plugin's version, state, calls per second,
    /// errors, p99 latency, reloads and last refusal, and the files it refused.
    Status {
        /// Print the API's JSON (GET /plugins).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        dir: DirArgs,
    },
    /// Make a running host re-read a plugin's file now. A refused file leaves the running
    /// version serving, and exits 1 with the reason.
    Reload {
        /// The plugin's name.
        name: String,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        dir: DirArgs,
    },
    /// Call a plugin of a running host once, through its guarded path (timeout, limits,
    /// circuit breaker), and print its output as it is.
    Call {
        /// The plugin's name.
        name: String,
        /// The input; `-` reads standard input.
        #[arg(allow_hyphen_values = true)]
        input: String,
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        dir: DirArgs,
    },
    /// Publish an event through a running host, as source plughost-admin. Exits 1 if no host
    /// listens or it refuses the event.
    Emit {
        /// The topic, e.g. user.created (topics under plughost. are the host's own).
        topic: String,
        /// The event's data, as JSON; `-` reads standard input.
        #[arg(allow_hyphen_values = true)]
        json: String,
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        dir: DirArgs,
    },
    /// Show a running host's event counts: per topic, and per subscriber with its queue and
    /// latency.
    Events {
        /// Print the counts as JSON (durations in microseconds).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
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
        /// Also a name that is neither a plugin in the plugins folder nor in the file.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        dir: DirArgs,
    },
    /// Disable a plugin in the configuration file; a running `plughost run` shuts it down and
    /// unloads it (its file is left alone).
    Disable {
        /// The plugin's name.
        name: String,
        /// Also a name that is neither a plugin in the plugins folder nor in the file.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        dir: DirArgs,
    },
    /// Write a new minisign key pair for signing plugins: the secret key to KEY, the public
    /// key to KEY with the extension .pub, and print the line for host.trusted_keys. The
    /// secret key is encrypted with a password from PLUGHOST_SIGNING_PASSWORD, else asked at
    /// the terminal.
    Keygen {
        /// Where to write the secret key (mode 0600), e.g. plughost.key.
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
        /// Store the secret key unencrypted (for CI, where the key file is itself the secret):
        /// anyone who can read the file can sign.
        #[arg(long)]
        unencrypted: bool,
        /// Replace existing key files.
        #[arg(long)]
        force: bool,
    },
    /// Sign plugin libraries with a minisign secret key: writes FILE.minisig beside each
    /// (atomically), which a host with host.require_signatures checks against its
    /// host.trusted_keys. An encrypted key's password comes from PLUGHOST_SIGNING_PASSWORD,
    /// else is asked at the terminal.
    Sign {
        /// The files to sign.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The secret key (from plughost keygen, or minisign -G).
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
    },
    /// Write a new plugin crate in DIR that builds and loads as it is: a greeting plugin with
    /// a typed configuration, its schema, a unit test and a README.
    New {
        /// The crate's name; the plugin's name is the same with `-` as `_`.
        name: String,
        /// Where to write it; must not exist or be empty [default: ./NAME].
        #[arg(long, value_name = "DIR")]
        path: Option<PathBuf>,
        /// Where the crate gets plugin-api: path:DIR, git:URL[#TAG] or version:X [default:
        /// the source this plughost was built from if present, else its version from the
        /// registry].
        #[arg(long, value_name = "SPEC")]
        api: Option<String>,
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

/// How the commands that talk to a running host reach its admin API.
#[derive(Debug, Args)]
struct ApiArgs {
    /// The admin API's TCP address, HOST:PORT or http://HOST:PORT [default: the control
    /// socket if there is one, else the file's [admin] listen].
    #[arg(long, visible_alias = "admin-url", value_name = "ADDR")]
    admin: Option<String>,
    /// The control socket of `plughost run` [default: .plughost.sock in the plugins folder].
    #[arg(long, value_name = "PATH", conflicts_with = "admin")]
    control: Option<PathBuf>,
    /// The admin token, which changes (reload, call, emit) over TCP need [default: the
    /// environment's PLUGHOST_ADMIN_TOKEN, else the file's [admin] token]. Prefer the
    /// variable: a flag shows in the process list.
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
}

impl ApiArgs {
    /// The API these flags, else `config`, point to.
    fn api(self, config: &HostConfig) -> anyhow::Result<client::Api> {
        client::Api::new(
            client::Flags {
                admin: self.admin.as_deref(),
                token: self.token,
                control: self.control.as_deref(),
            },
            config,
        )
    }
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
fn main() -> ExitCode {
    // Started by a host to load a file it has not seen load yet: nothing else.
    if let Some(code) = plughost::probe_main() {
        return code;
    }
    let cli = Cli::parse();
    // The file is read first: it says how to log. Not for new. Enable / disable only edit it,
    // and read it as far as they can without the host's environment variables.
    let config = match cli.command {
        Command::Enable { .. } | Command::Disable { .. } => {
            Ok(config::settings_for_edit(cli.config.as_deref()))
        }
        Command::Status { .. }
        | Command::Reload { .. }
        | Command::Call { .. }
        | Command::Emit { .. }
        | Command::Events { .. } => client::settings(cli.config.as_deref()),
        Command::New { .. } | Command::Keygen { .. } | Command::Sign { .. } => {
            Ok(HostConfig::default())
        }
        _ => HostConfig::discover(cli.config.as_deref()),
    };
    let format = config
        .as_ref()
        .map_or(LogFormat::Human, |c| c.host.log_format);
    init_logging(matches!(cli.command, Command::Run { .. }), format);
    // New files are probed by this very program, whatever it is called and wherever it is.
    let config = config.map(|mut config| {
        if config.host.probe == plughost::ProbeSetting::Auto {
            if let Ok(program) = std::env::current_exe() {
                config.host.probe = plughost::ProbeSetting::Program(program);
            }
        }
        config
    });
    let outcome = config
        .map_err(anyhow::Error::from)
        .and_then(|config| dispatch(cli.command, config, cli.config.as_deref()));
    match outcome {
        Ok(code) => code,
        Err(error) => {
            // Not `eprintln!`, which panics when stderr cannot be written: the exit code must
            // still say what happened.
            let _ = writeln!(std::io::stderr(), "error: {}", one_line(&error));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line. The library's errors already say their cause in
/// their message (`libx.so: cannot read the file: Permission denied`), so the chain stops at
/// the first of them.
fn one_line(error: &anyhow::Error) -> String {
    let mut parts = Vec::new();
    for cause in error.chain() {
        parts.push(cause.to_string());
        if cause.is::<plughost::LoadError>()
            || cause.is::<plughost::HostError>()
            || cause.is::<plughost::CallError>()
            || cause.is::<plughost::ConfigError>()
            || cause.is::<plughost_admin::AdminError>()
        {
            break;
        }
    }
    parts.join(": ")
}

fn init_logging(verbose_by_default: bool, format: LogFormat) {
    let default = if verbose_by_default { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        // Colour only for a person at a terminal, never in files, pipes or journals.
        // NO_COLOR counts when set and not empty (no-color.org).
        .with_ansi(
            std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        // Its report of a failed write is an `eprintln!`, which panics when stderr is full or
        // closed; a log line lost is better than a host aborted.
        .log_internal_errors(false);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn dispatch(command: Command, config: HostConfig, file: Option<&Path>) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            dir,
            no_watch,
            settle_ms,
            health_interval,
            control,
            admin,
        } => {
            let config = dir.apply(config);
            let watch = config.host.watch && !no_watch;
            let settle = settle_ms.map_or(config.host.debounce, Duration::from_millis);
            let socket = control::Socket::of(&config, control.as_deref());
            run::run(
                config,
                watch,
                settle,
                Duration::from_secs(health_interval),
                &socket,
                admin,
            )
        }
        Command::List { verbose, dir } => list::list(dir.apply(config), verbose),
        Command::Inspect {
            file,
            json,
            init,
            dir,
        } => inspect::inspect(&file, json, init.as_deref(), dir.apply(config)),
        Command::Exec {
            name,
            input,
            init,
            timeout,
            verbose,
            isolated,
            dir,
        } => exec::exec(
            &name,
            &input,
            init.as_deref(),
            timeout.map(Duration::from_millis),
            verbose,
            isolated,
            dir.apply(config),
        ),
        Command::Status { json, api, dir } => status::status(json, &api.api(&dir.apply(config))?),
        Command::Reload {
            name,
            json,
            api,
            dir,
        } => reload::reload(&name, json, &api.api(&dir.apply(config))?),
        Command::Call {
            name,
            input,
            api,
            dir,
        } => call::call(&name, &input, &api.api(&dir.apply(config))?),
        Command::Emit {
            topic,
            json,
            api,
            dir,
        } => emit::emit(&topic, &json, &api.api(&dir.apply(config))?),
        Command::Events { json, api, dir } => events::events(json, &api.api(&dir.apply(config))?),
        Command::Config(ConfigCommand::Check(dir)) => config::check(dir.apply(config)),
        Command::Enable { name, force, dir } => {
            config::set_enabled(file, &name, true, force, dir.apply(config))
        }
        Command::Disable { name, force, dir } => {
            config::set_enabled(file, &name, false, force, dir.apply(config))
        }
        Command::New { name, path, api } => new::new(&name, path.as_deref(), api.as_deref()),
        Command::Keygen {
            key,
            unencrypted,
            force,
        } => sign::keygen(&key, unencrypted, force),
        Command::Sign { files, key } => sign::sign(&files, &key),
    }
}
