//! Concurrency and rate limits. Both take their slot inside the call's future, so the
//! deadline bounds the wait; with [`WhenLimited::Reject`] an excess call fails at once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::{CallFuture, CallLayer, Next, PluginCall};
use crate::dispatch::policy::{Rate, WhenLimited};
use crate::error::CallError;

/// At most `limit` calls in flight (or no limit: a pass-through).
#[derive(Clone)]
pub struct ConcurrencyLayer {
    plugin: Arc<str>,
    limit: Option<(usize, Arc<Semaphore>)>,
    when_limited: WhenLimited,
}

impl ConcurrencyLayer {
    /// At most `limit` calls to `plugin` at once; `None` for no limit.
    pub fn new(plugin: Arc<str>, limit: Option<usize>, when_limited: WhenLimited) -> Self {
        ConcurrencyLayer {
            plugin,
            limit: limit.map(|n| (n, Arc::new(Semaphore::new(n)))),
            when_limited,
        }
    }
}

impl CallLayer for ConcurrencyLayer {
    fn call<S: Next>(&self, inner: &mut S, mut call: PluginCall) -> CallFuture {
        let Some((limit, slots)) = self.limit.clone() else {
            return inner.call(call);
        };
        let (plugin, when_limited) = (self.plugin.clone(), self.when_limited);
        let mut inner = inner.clone();
        Box::pin(async move {
            let permit = match when_limited {
                WhenLimited::Reject => slots.try_acquire_owned().ok(),
                WhenLimited::Wait => slots.acquire_owned().await.ok(),
            };
            let Some(permit) = permit else {
                return Err(CallError::Busy { plugin, limit });
            };
            // The permit goes with the call: held until the plugin returns, even past a
            // timeout or after the caller gave up.
            call.permit = Some(permit);
            inner.call(call).await
        })
    }
}

/// At most `rate.calls` calls per `rate.per`, as a token bucket (or no limit: a
/// pass-through).
#[derive(Clone)]
pub struct RateLayer {
    plugin: Arc<str>,
    limit: Option<(Rate, Arc<Mutex<Bucket>>)>,
    when_limited: WhenLimited,
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl RateLayer {
    /// At most `rate` calls to `plugin`; `None` for no limit.
    pub fn new(plugin: Arc<str>, rate: Option<Rate>, when_limited: WhenLimited) -> Self {
        RateLayer {
            plugin,
            limit: rate.map(|rate| {
                let bucket = Bucket {
                    tokens: f64::from(rate.calls),
                    refilled: Instant::now(),
                };
                (rate, Arc::new(Mutex::new(bucket)))
            }),
            when_limited,
        }
    }
}

impl Bucket {
    /// Takes a token, or says how long until one is there.
    fn take(&mut self, rate: Rate) -> Result<(), Duration> {
        let bucket = self;
        let now = Instant::now();
        let per_token = rate.per.as_secs_f64() / f64::from(rate.calls.max(1));
        let refill = now.duration_since(bucket.refilled).as_secs_f64() / per_token;
        bucket.tokens = (bucket.tokens + refill).min(f64::from(rate.calls));
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) * per_token))
        }
    }
}

impl CallLayer for RateLayer {
    fn call<S: Next>(&self, inner: &mut S, call: PluginCall) -> CallFuture {
        let Some((rate, bucket)) = self.limit.clone() else {
            return inner.call(call);
        };
        let (plugin, when_limited) = (self.plugin.clone(), self.when_limited);
        let mut inner = inner.clone();
        Box::pin(async move {
            loop {
                let taken = bucket.lock().unwrap_or_else(|e| e.into_inner()).take(rate);
                match (taken, when_limited) {
                    (Ok(()), _) => break,
                    (Err(wait), WhenLimited::Wait) => tokio::time::sleep(wait).await,
                    (Err(_), WhenLimited::Reject) => {
                        return Err(CallError::RateLimited {
                            plugin,
                            calls: rate.calls,
                            per: rate.per,
                        })
                    }
                }
            }
            inner.call(call).await
        })
    }
}
