//! The admin HTTP API of a running plughost [`Host`](plughost::Host): what runs, in what
//! state, how its calls go; enable, disable, reload, call and reconfigure one plugin; metrics
//! for Prometheus; host events as a Server-Sent Events stream; a live status page. The
//! `plughost run` command serves it on its control socket and, when `[admin] listen` (or
//! `--admin ADDR`) says so, on a TCP address; a program that embeds the host serves it the
//! same way, or mounts [`Admin::router`] in its own axum server.
//!
//! # The nouns
//!
//! - [`Admin`]: the API over one [`Dispatcher`](plughost::Dispatcher) (which owns the host and
//!   the call metrics), with its `[admin]` settings: token, body size and request rate limits.
//! - [`Listener`]: where it is served: a TCP address, or a Unix socket already bound.
//! - [`AdminServer`]: the running server, on threads of its own; stops when dropped.
//! - [`AdminError`]: why it could not start.
//!
//! ```no_run
//! use std::sync::Arc;
//! use plughost::{CallPolicy, Dispatcher, Host, HostConfig};
//! use plughost_admin::{Admin, Listener};
//!
//! let host = Arc::new(Host::new(HostConfig::with_plugins_dir("plugins"))?);
//! host.load_all()?;
//! # let runtime = tokio::runtime::Runtime::new()?;
//! # let _entered = runtime.enter();
//! let dispatcher = Arc::new(Dispatcher::new(host, CallPolicy::default()));
//! let server = Admin::new(dispatcher).serve(vec![Listener::Tcp("127.0.0.1:9477".parse()?)])?;
//! println!("admin API on http://{}", server.local_addrs()[0]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Inside
//!
//! `serve` accepts connections (bounded in number, with a time limit on reading a request's
//! head) and hands each request to the router of `routes`: one module per resource, each
//! handler annotated with the OpenAPI document's description of it, so the document
//! (`GET /openapi.json`) and the routes cannot drift apart. `view` turns the host's state into
//! the JSON the API answers with; `guard` holds the token check and the rate limit; `error`
//! the error body every failure is written as.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
mod guard;
mod routes;
mod serve;
mod state;
mod view;

pub use error::AdminError;
pub use serve::{Admin, AdminServer, Listener};
