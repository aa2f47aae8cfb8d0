//! The async call API: `dispatcher.execute(name, input).await`, with each plugin's calls
//! guarded by the [`layers`] its [`CallPolicy`] asks for, plus per-plugin metrics and health
//! checks. No FFI here: the call itself goes through a [`PluginHandle`](crate::PluginHandle)
//! on the [`pool`]'s threads.
//!
//! - [`policy`]: what guards a plugin's calls (the settings, like a tower `Layer`);
//! - [`layers`]: the guards themselves, one tower layer each;
//! - [`pool`]: the threads plugin calls run on, off the async workers.
//!
//! ```no_run
//! # async fn demo(host: std::sync::Arc<plughost::Host>) -> Result<(), plughost::CallError> {
//! use plughost::{CallPolicy, Dispatcher};
//! use std::time::Duration;
//!
//! let dispatcher = Dispatcher::new(host, CallPolicy::default());
//! dispatcher.set_policy("transform", CallPolicy {
//!     timeout: Duration::from_millis(200),
//!     max_concurrent: Some(8),
//!     ..CallPolicy::default()
//! });
//! let answer = dispatcher.execute("transform", b"hello".to_vec()).await?;
//! let transform = dispatcher.plugin("transform")?;   // skip the name lookup next time
//! let answer = transform.call(b"again".to_vec()).await?;
//! println!("{:?}", dispatcher.metrics("transform"));
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod layers;
mod policy;
mod pool;

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tower::{ServiceBuilder, ServiceExt};
use tracing::{info, warn};

use crate::config::HostConfig;
use crate::error::CallError;
use crate::host::Host;
use crate::runtime::PluginHealth;
use layers::blocking::Blocking;
use layers::breaker::{BreakerLayer, OnChange};
use layers::deadline::DeadlineLayer;
use layers::limit::{ConcurrencyLayer, RateLayer};
use layers::metrics::{MetricsLayer, OnFailure, PluginMetrics};
use layers::{Layered, PluginCall};

pub use layers::breaker::CircuitState;
pub use layers::metrics::MetricsSnapshot;
pub use policy::{Breaker, CallPolicy, Rate, WhenLimited};

/// Every plugin's layers, outermost first; layers its policy leaves out pass calls through.
type Stack = Layered<
    MetricsLayer,
    Layered<
        BreakerLayer,
        Layered<DeadlineLayer, Layered<RateLayer, Layered<ConcurrencyLayer, Blocking>>>,
    >,
>;

/// Async, guarded calls into a [`Host`]'s plugins. Needs a tokio runtime.
pub struct Dispatcher {
    host: Arc<Host>,
    default_policy: CallPolicy,
    policies: Mutex<HashMap<String, CallPolicy>>,
    plugins: RwLock<HashMap<String, AsyncHandle>>,
    /// The host's settings generation the built stacks follow (timeouts from plughost.toml).
    generation: std::sync::atomic::AtomicU64,
    metrics: Mutex<HashMap<String, Arc<PluginMetrics>>>,
    health: Mutex<HashMap<String, PluginHealth>>,
    /// Plugins whose health check is running now.
    checking: Arc<Mutex<std::collections::HashSet<(String, usize)>>>,
}

/// A plugin's guarded async entry point; cheap to clone.
#[derive(Clone)]
pub struct AsyncHandle {
    stack: Stack,
    timeout: Duration,
    breaker: BreakerLayer,
}

impl AsyncHandle {
    /// Calls the plugin through its layers.
    pub async fn call(&self, input: Vec<u8>) -> Result<Vec<u8>, CallError> {
        let call = PluginCall {
            input,
            deadline: tokio::time::Instant::now() + self.timeout,
            cancel: Arc::new(AtomicBool::new(false)),
            started: Arc::new(AtomicBool::new(false)),
            permit: None,
        };
        self.stack.clone().oneshot(call).await
    }
}

impl Dispatcher {
    /// Calls into `host`'s plugins with `default_policy` unless
    /// [`set_policy`](Self::set_policy) says otherwise for a plugin.
    pub fn new(host: Arc<Host>, default_policy: CallPolicy) -> Self {
        Dispatcher {
            generation: std::sync::atomic::AtomicU64::new(host.settings_generation()),
            host,
            default_policy,
            policies: Mutex::default(),
            plugins: RwLock::default(),
            metrics: Mutex::default(),
            health: Mutex::default(),
            checking: Arc::default(),
        }
    }

    /// The host it calls into.
    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }

    /// Gives `plugin` its own policy (which wins over the settings' timeout), for calls that start from now on (its metrics are kept;
    /// its circuit starts closed; calls in flight finish under the old limits).
    pub fn set_policy(&self, plugin: &str, policy: CallPolicy) {
        lock(&self.policies).insert(plugin.to_owned(), policy);
        self.plugins
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(plugin);
    }

    /// Calls `plugin` with `input` through its layers.
    pub async fn execute(&self, plugin: &str, input: Vec<u8>) -> Result<Vec<u8>, CallError> {
        self.plugin(plugin)?.call(input).await
    }

    /// The guarded entry point of `plugin`, built on first use.
    pub fn plugin(&self, name: &str) -> Result<AsyncHandle, CallError> {
        let generation = self.host.settings_generation();
        if self
            .generation
            .swap(generation, std::sync::atomic::Ordering::AcqRel)
            != generation
        {
            // The settings changed: rebuild, on its next call, each stack whose timeout they
            // changed. The others keep their circuits and limits.
            let settings = self.host.config();
            // Plugins, then policies: the order `build` takes them in.
            let mut plugins = self.plugins.write().unwrap_or_else(|e| e.into_inner());
            let policies = lock(&self.policies);
            plugins.retain(|name, handle| {
                policies.contains_key(name)
                    || handle.timeout == self.settings_timeout(&settings, name)
            });
        }
        if let Some(handle) = self
            .plugins
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return Ok(handle.clone());
        }
        // Build under the write lock: two first calls racing must share one stack, or each
        // would get its own limits and circuit.
        let mut plugins = self.plugins.write().unwrap_or_else(|e| e.into_inner());
        if let Some(handle) = plugins.get(name) {
            return Ok(handle.clone());
        }
        let handle = self.build(name)?;
        plugins.insert(name.to_owned(), handle.clone());
        Ok(handle)
    }

    fn build(&self, name: &str) -> Result<AsyncHandle, CallError> {
        let handle = self.host.handle(name)?;
        let plugin: Arc<str> = name.into();
        let policy = lock(&self.policies)
            .get(name)
            .cloned()
            .unwrap_or_else(|| CallPolicy {
                timeout: self.settings_timeout(&self.host.config(), name),
                ..self.default_policy.clone()
            });
        let metrics = lock(&self.metrics)
            .entry(name.to_owned())
            .or_default()
            .clone();
        let host = Arc::downgrade(&self.host);
        let changed = name.to_owned();
        let on_change: OnChange = Arc::new(move |from, to| {
            if let Some(host) = host.upgrade() {
                host.circuit_changed(&changed, from, to);
            }
        });
        let breaker = BreakerLayer::new(plugin.clone(), policy.breaker).on_change(on_change);
        let host = Arc::downgrade(&self.host);
        let failed = name.to_owned();
        let on_failure: OnFailure = Arc::new(move |error, took| {
            if let Some(host) = host.upgrade() {
                host.call_failed(&failed, error, took);
            }
        });
        let stack = ServiceBuilder::new()
            .layer(MetricsLayer::new(metrics.clone()).on_failure(on_failure))
            .layer(breaker.clone())
            .layer(DeadlineLayer::new(
                plugin.clone(),
                policy.timeout,
                policy.stuck_after,
                metrics,
            ))
            .layer(RateLayer::new(
                plugin.clone(),
                policy.rate,
                policy.when_limited,
            ))
            .layer(ConcurrencyLayer::new(
                plugin,
                policy.max_concurrent,
                policy.when_limited,
            ))
            .service(Blocking::new(handle));
        Ok(AsyncHandle {
            stack,
            timeout: policy.timeout,
            breaker,
        })
    }

    /// The timeout the settings give `plugin` (its own, else the host's), else the default
    /// policy's.
    fn settings_timeout(&self, settings: &HostConfig, plugin: &str) -> Duration {
        settings
            .plugins
            .get(plugin)
            .and_then(|p| p.timeout)
            .or(settings.host.call_timeout)
            .unwrap_or(self.default_policy.timeout)
    }

    /// The metrics of `plugin`, if it has been called through this dispatcher.
    pub fn metrics(&self, plugin: &str) -> Option<MetricsSnapshot> {
        lock(&self.metrics).get(plugin).map(|m| m.snapshot())
    }

    /// The metrics of every plugin called through this dispatcher, sorted by name: for a
    /// scraper that does not know the names.
    pub fn plugins_with_metrics(&self) -> Vec<(String, MetricsSnapshot)> {
        // Copied out first: snapshots take each histogram's lock, not under the map's.
        let all: Vec<(String, Arc<PluginMetrics>)> = lock(&self.metrics)
            .iter()
            .map(|(name, metrics)| (name.clone(), metrics.clone()))
            .collect();
        let mut all: Vec<(String, MetricsSnapshot)> = all
            .into_iter()
            .map(|(name, metrics)| (name, metrics.snapshot()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// The state of `plugin`'s circuit, if it has one and has been called through this
    /// dispatcher. Asking builds nothing: a status page or a scraper asking about a plugin
    /// never called does not set up its call path.
    pub fn circuit(&self, plugin: &str) -> Option<CircuitState> {
        let plugins = self.plugins.read().unwrap_or_else(|e| e.into_inner());
        plugins.get(plugin)?.breaker.state()
    }

    /// Asks `plugin` how it is doing now (on a thread of its own, within the host's
    /// `check_timeout`), and logs a change from the last answer.
    pub async fn check_health(&self, plugin: &str) -> Result<PluginHealth, CallError> {
        let handle = self.host.handle(plugin)?;
        // A health check is a quick check, bounded like the host's others.
        let timeout = self.host.config().host.check_timeout;
        let name: Arc<str> = plugin.into();
        // Per version: a check stuck in an old version must not silence the new one's.
        let key = (plugin.to_owned(), handle.version_id());
        let health = if !lock(&self.checking).insert(key.clone()) {
            // At most one check per plugin at a time: a plugin stuck in its health check keeps
            // one thread, not one per interval.
            PluginHealth::Unhealthy("its last health check has not returned yet".into())
        } else {
            let (answer, receiver) = tokio::sync::oneshot::channel();
            let checking = Arc::clone(&self.checking);
            let running = key.clone();
            // A thread of its own, not tokio's blocking pool: a check that never returns must
            // not keep the runtime (and so the program) from ending.
            let spawned = std::thread::Builder::new()
                .name("plughost-health".into())
                .spawn(move || {
                    let health = handle.health();
                    // Done before the answer is out: the next check must not find it running.
                    lock(&checking).remove(&running);
                    let _ = answer.send(health);
                });
            match spawned {
                Err(e) => {
                    lock(&self.checking).remove(&key);
                    PluginHealth::Unhealthy(format!("health check could not start: {e}"))
                }
                Ok(_) => match tokio::time::timeout(timeout, receiver).await {
                    Ok(Ok(Ok(health))) => health,
                    Ok(Ok(Err(error))) => {
                        PluginHealth::Unhealthy(format!("health check failed: {error}"))
                    }
                    Ok(Err(_)) => PluginHealth::Unhealthy("health check failed".into()),
                    Err(_) => PluginHealth::Unhealthy(format!(
                        "health check did not answer within {} ms",
                        timeout.as_millis()
                    )),
                },
            }
        };
        let previous = lock(&self.health).insert(plugin.to_owned(), health.clone());
        if previous.as_ref() != Some(&health) {
            let _span = tracing::info_span!("plugin", name = %name).entered();
            match &health {
                PluginHealth::Healthy | PluginHealth::Unknown => {
                    info!("plugin {name} is {health:?}")
                }
                PluginHealth::Degraded(why) => warn!("plugin {name} is degraded: {why}"),
                PluginHealth::Unhealthy(why) => warn!("plugin {name} is unhealthy: {why}"),
            }
        }
        Ok(health)
    }

    /// The last health answer of `plugin`.
    pub fn last_health(&self, plugin: &str) -> Option<PluginHealth> {
        lock(&self.health).get(plugin).cloned()
    }

    /// Checks every plugin's health every `interval` until the returned task is aborted.
    pub fn poll_health(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let dispatcher = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            loop {
                ticks.tick().await;
                for info in dispatcher.host.plugins() {
                    // An unloaded plugin between listing and checking is not news.
                    let _ = dispatcher.check_health(&info.name).await;
                }
            }
        })
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each map update is a single insert or remove: a poisoned lock holds a valid map.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
