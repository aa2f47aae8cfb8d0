//! Helpers for the tests of isolated plugins (plugins in worker processes).

use std::path::Path;
use std::time::{Duration, Instant};

use plughost::{CallError, Host, HostConfig, Isolation, PluginSettings};

use crate::PluginDir;

/// A host whose `crashy` plugin (and any other named in `isolated`) runs in a worker.
pub fn host_with(dir: &PluginDir, isolated: &[&str], tune: impl FnOnce(&mut HostConfig)) -> Host {
    let mut config = dir.config();
    for name in isolated {
        config.plugins.insert(
            (*name).to_owned(),
            PluginSettings {
                isolation: Some(Isolation::Process),
                ..PluginSettings::default()
            },
        );
    }
    tune(&mut config);
    Host::new(config).unwrap()
}

pub fn call(host: &Host, name: &str, input: &[u8]) -> Result<String, CallError> {
    let mut out = Vec::with_capacity(64);
    host.handle(name)?.call_into(input, &mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Sends `command` to plugin `name`: its answer, or the error the plugin itself returned as a
/// line for a report (any other failure, a crash say, is told apart).
pub fn attempt(host: &Host, name: &str, command: &str) -> Result<String, String> {
    match call(host, name, command.as_bytes()) {
        Ok(answer) => Ok(answer),
        Err(CallError::Failed { message, .. }) => Err(message),
        Err(other) => Err(format!("not an error returned by the plugin: {other}")),
    }
}

/// Calls until the plugin answers again (after its restart), at most `within`.
pub fn answers_again(host: &Host, name: &str, within: Duration) -> String {
    let started = Instant::now();
    loop {
        match call(host, name, b"pid") {
            Ok(answer) => return answer,
            Err(e) if started.elapsed() < within => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("{name} did not answer again within {within:?}: {e}"),
        }
    }
}

/// The worker processes (`plughost __worker FILE ...`) whose parent is `parent`, loading
/// libraries of the folder `plugins` (tests run in parallel in one process: each has its own
/// folder).
pub fn workers_of(parent: u32, plugins: &Path) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        // Fields after the command name in parentheses: state, ppid, ...
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let plugins = plugins.as_os_str().as_encoded_bytes();
        let is_worker = args.get(1) == Some(&&b"__worker"[..])
            && args.get(2).is_some_and(|file| file.starts_with(plugins));
        if is_worker && ppid == Some(parent) {
            found.push(pid);
        }
    }
    found
}

/// Whether process `pid` exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                != Some("Z")
        })
        .unwrap_or(false)
}

/// Calls `name` once through the guarded async path (a `Dispatcher` without a circuit
/// breaker), with `timeout`.
pub fn guarded(
    host: &std::sync::Arc<Host>,
    name: &str,
    input: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, CallError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let dispatcher = plughost::Dispatcher::new(
        host.clone(),
        plughost::CallPolicy {
            timeout,
            breaker: None,
            ..plughost::CallPolicy::default()
        },
    );
    runtime.block_on(dispatcher.execute(name, input.to_vec()))
}
