//! Serving the API: [`Admin`] builds it, [`Admin::serve`] starts it on threads of its own
//! ([`AdminServer`]), so that HTTP work never runs on threads that plugin calls use.
//!
//! Connections are accepted by one loop per [`Listener`], at most [`MAX_CONNECTIONS`] at a
//! time (more wait in the listen backlog); a request's head must arrive within
//! [`HEAD_TIMEOUT`], so slow clients cannot hold connections for ever.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt as _;

use crate::error::AdminError;
use crate::guard::Peer;
use crate::state::State;

/// How many connections are served at once, over all listeners.
pub const MAX_CONNECTIONS: usize = 512;

/// How long a client may take to send a request's head (line and headers).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How long stopping waits for requests in flight (event streams are cut).
const DRAIN: Duration = Duration::from_secs(2);

/// The admin API over one dispatcher, with its settings.
pub struct Admin {
    state: Arc<State>,
}

/// Where the API is served.
#[non_exhaustive]
pub enum Listener {
    /// A TCP address. Refused unless it is a loopback address or a token is configured.
    Tcp(SocketAddr),
    /// A Unix socket already bound (and made private) by the caller, like `plughost run`'s
    /// control socket, and the path it is known by (for messages). Its clients need no token.
    #[cfg(unix)]
    Unix(std::os::unix::net::UnixListener, std::path::PathBuf),
}

impl Admin {
    /// The API over `dispatcher`'s host, with the host's `[admin]` settings.
    pub fn new(dispatcher: Arc<plughost::Dispatcher>) -> Self {
        let settings = dispatcher.host().config().admin.clone();
        Self::with_settings(dispatcher, &settings)
    }

    /// The API over `dispatcher`'s host, with `settings` rather than the host's.
    pub fn with_settings(
        dispatcher: Arc<plughost::Dispatcher>,
        settings: &plughost::AdminSettings,
    ) -> Self {
        Admin {
            state: Arc::new(State::new(dispatcher, settings)),
        }
    }

    /// The API as an axum router, to mount in a server of your own. Requests reach it as
    /// from remote clients: changes need the token.
    pub fn router(&self) -> Router {
        crate::routes::router(self.state.clone()).0
    }

    /// The OpenAPI document of the API, as `GET /openapi.json` serves it.
    pub fn openapi() -> utoipa::openapi::OpenApi {
        crate::routes::openapi()
    }

    /// Starts serving on every listener, on two threads of its own, and returns at once.
    /// A TCP address that is not loopback is refused unless a token is configured.
    pub fn serve(self, listeners: Vec<Listener>) -> Result<AdminServer, AdminError> {
        for listener in &listeners {
            if let Listener::Tcp(addr) = listener {
                self.state
                    .settings
                    .check_exposure(*addr)
                    .map_err(|reason| AdminError::Exposed {
                        addr: *addr,
                        reason,
                    })?;
            }
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("plughost-admin")
            .enable_all()
            .build()
            .map_err(|source| AdminError::Runtime { source })?;
        let stop = self.state.stop.clone();
        let stopped = stop.subscribe();
        let (router, _) = crate::routes::router(self.state.clone());
        let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut local_addrs = Vec::new();
        let mut tasks = Vec::new();
        for listener in listeners {
            let serve = Serve {
                router: router.clone(),
                stopped: stopped.clone(),
                connections: connections.clone(),
            };
            match listener {
                Listener::Tcp(addr) => {
                    let listener = runtime
                        .block_on(tokio::net::TcpListener::bind(addr))
                        .map_err(|source| AdminError::Listen { addr, source })?;
                    let bound = listener
                        .local_addr()
                        .map_err(|source| AdminError::Listen { addr, source })?;
                    tracing::info!("admin API on http://{bound}");
                    local_addrs.push(bound);
                    tasks.push(runtime.spawn(serve.tcp(listener)));
                }
                #[cfg(unix)]
                Listener::Unix(listener, path) => {
                    let socket_error = |source| AdminError::Socket {
                        path: path.clone(),
                        source,
                    };
                    listener.set_nonblocking(true).map_err(socket_error)?;
                    let listener = {
                        let _entered = runtime.enter();
                        tokio::net::UnixListener::from_std(listener).map_err(socket_error)?
                    };
                    tasks.push(runtime.spawn(serve.unix(listener)));
                }
            }
        }
        // The rate limiter forgets idle clients now and then.
        let state = self.state.clone();
        let mut quiet = stopped.clone();
        runtime.spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = quiet.changed() => return,
                }
                if let Some(limit) = &state.rate_limit {
                    limit.forget_idle();
                }
            }
        });
        Ok(AdminServer {
            runtime: Some(runtime),
            stop,
            tasks,
            local_addrs,
        })
    }
}

/// The running API. Dropping it (or [`shutdown`](Self::shutdown)) stops accepting, lets
/// requests in flight finish for up to 2 s, and cuts event streams.
pub struct AdminServer {
    runtime: Option<tokio::runtime::Runtime>,
    stop: Arc<watch::Sender<bool>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    local_addrs: Vec<SocketAddr>,
}

impl AdminServer {
    /// The TCP addresses it listens on (with the port the system chose for port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Stops the server; see the type's docs.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        let _ = self.stop.send(true);
        let tasks = std::mem::take(&mut self.tasks);
        let drain = move || {
            runtime.block_on(async {
                let _ = tokio::time::timeout(DRAIN, async {
                    for task in tasks {
                        let _ = task.await;
                    }
                })
                .await;
            });
            runtime.shutdown_timeout(Duration::from_millis(100));
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            // Stopped from async code (a program's `#[tokio::main]`): a runtime cannot be
            // waited on from inside another, so wait from a thread of its own.
            let _ = std::thread::spawn(drain).join();
        } else {
            drain();
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// One listener's accept loop.
struct Serve {
    router: Router,
    stopped: watch::Receiver<bool>,
    connections: Arc<Semaphore>,
}

impl Serve {
    async fn tcp(self, listener: tokio::net::TcpListener) {
        self.accept(|| async {
            listener
                .accept()
                .await
                .map(|(stream, addr)| (stream, Peer::Remote(addr)))
        })
        .await;
    }

    #[cfg(unix)]
    async fn unix(self, listener: tokio::net::UnixListener) {
        self.accept(|| async {
            listener
                .accept()
                .await
                .map(|(stream, _)| (stream, Peer::Local))
        })
        .await;
    }

    async fn accept<S, F, A>(mut self, mut accept: A)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        F: std::future::Future<Output = std::io::Result<(S, Peer)>>,
        A: FnMut() -> F,
    {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        loop {
            let permit = tokio::select! {
                permit = self.connections.clone().acquire_owned() => permit,
                _ = self.stopped.changed() => break,
            };
            let Ok(permit) = permit else { break };
            let (stream, peer) = tokio::select! {
                accepted = accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of descriptors, or a connection reset before it was taken: not
                        // the listener's end. Wait a moment rather than spin.
                        tracing::warn!("admin API: cannot accept a connection: {error}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = self.stopped.changed() => break,
            };
            let router = self.router.clone();
            let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
                let mut request = request.map(axum::body::Body::new);
                request.extensions_mut().insert(peer);
                router.clone().oneshot(request)
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                let _ = connection.await;
                drop(permit);
            });
        }
        let _ = tokio::time::timeout(DRAIN, graceful.shutdown()).await;
    }
}
