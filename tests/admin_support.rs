//! A host with its admin API on a free loopback port, and a plain HTTP client for it, for the
//! admin tests (`tests/admin*.rs`).

use std::sync::Arc;
use std::time::Duration;

use plughost::{CallPolicy, Dispatcher, Host, HostConfig};
use plughost_admin::{Admin, AdminServer, Listener};

use crate::PluginDir;

/// The token [`AdminHost::with_token`] configures.
pub const TOKEN: &str = "test-token-8c1f";

/// A host on a folder of plugins, with its admin API served on `127.0.0.1:PORT`.
pub struct AdminHost {
    /// The plugins folder.
    pub dir: PluginDir,
    /// The dispatcher the API calls through (and whose metrics it shows).
    pub dispatcher: Arc<Dispatcher>,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    server: Option<AdminServer>,
    /// The dispatcher's runtime (health checks).
    _runtime: tokio::runtime::Runtime,
}

impl AdminHost {
    /// `packages` loaded, the API served without a token.
    pub fn start(packages: &[&str]) -> Self {
        Self::start_with(packages, |_| {})
    }

    /// `packages` loaded, the API served with [`TOKEN`].
    pub fn with_token(packages: &[&str]) -> Self {
        Self::start_with(packages, |config| {
            config.admin.token = Some(plughost::Secret::new(TOKEN));
        })
    }

    /// `packages` loaded with the settings `edit` makes.
    pub fn start_with(packages: &[&str], edit: impl FnOnce(&mut HostConfig)) -> Self {
        let dir = PluginDir::new();
        for package in packages {
            dir.add(package);
        }
        let mut config = dir.config();
        edit(&mut config);
        let host = Arc::new(Host::new(config).expect("create host"));
        let report = host.load_all().expect("load the folder");
        assert!(report.refused.is_empty(), "{:?}", report.refused);
        Self::serve(dir, host)
    }

    /// Serves the API of `host`, already set up on `dir`.
    pub fn serve(dir: PluginDir, host: Arc<Host>) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let dispatcher = {
            let _entered = runtime.enter();
            Arc::new(Dispatcher::new(host, CallPolicy::default()))
        };
        let server = Admin::new(dispatcher.clone())
            .serve(vec![Listener::Tcp("127.0.0.1:0".parse().unwrap())])
            .expect("serve the admin API");
        let url = format!("http://{}", server.local_addrs()[0]);
        AdminHost {
            dir,
            dispatcher,
            url,
            server: Some(server),
            _runtime: runtime,
        }
    }

    /// The host.
    pub fn host(&self) -> &Arc<Host> {
        self.dispatcher.host()
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Reply {
        self.send("GET", path, None, b"")
    }

    /// `POST path` with `body`, and the bearer `token` if given.
    pub fn post(&self, path: &str, token: Option<&str>, body: &[u8]) -> Reply {
        self.send("POST", path, token, body)
    }

    /// `PUT path` with `body`, and the bearer `token` if given.
    pub fn put(&self, path: &str, token: Option<&str>, body: &[u8]) -> Reply {
        self.send("PUT", path, token, body)
    }

    /// Any request.
    pub fn send(&self, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> Reply {
        request(&self.url, method, path, token, body)
    }

    /// Stops the server (as dropping does).
    pub fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
        }
    }
}

impl Drop for AdminHost {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One request to `url` + `path`; any status is a [`Reply`], only a failed connection panics.
pub fn request(url: &str, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> Reply {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let uri = format!("{url}{path}");
    let mut builder = ureq::http::Request::builder().method(method).uri(&uri);
    if let Some(token) = token {
        builder = builder.header("Authorization", format!("Bearer {token}"));
    }
    let request = builder.body(body.to_vec()).expect("a request");
    let mut response = agent
        .run(request)
        .unwrap_or_else(|e| panic!("{method} {uri}: {e}"));
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_vec()
        .unwrap_or_else(|e| panic!("{method} {uri}: reading the body: {e}"));
    Reply {
        status,
        headers,
        body,
    }
}

/// A response.
#[derive(Debug)]
pub struct Reply {
    /// Its status code.
    pub status: u16,
    /// Its headers.
    pub headers: ureq::http::HeaderMap,
    /// Its body.
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON; panics showing it if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}
