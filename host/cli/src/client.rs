//! The client of a running host's admin API, for `status`, `reload`, `call`, `emit` and
//! `events`: one HTTP/1.1 request per command, over the host's control socket or TCP.
//!
//! Where: `--admin ADDR` (`HOST:PORT` or `http://HOST:PORT`), else `--control PATH`, else the
//! control socket in the plugins folder if there is one (a host on this machine, reached
//! without a token), else `[admin] listen` in the settings file. The
//! token: `--token`, else `PLUGHOST_ADMIN_TOKEN`, else the file's `[admin] token`; it is sent
//! as `Authorization: Bearer` and never printed. Connecting may take [`CONNECT_TIMEOUT`], the
//! whole exchange [`REQUEST_DEADLINE`].

use std::io::Read as _;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use plughost::HostConfig;
use serde_json::Value;

use crate::control::Socket;

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a whole request may take, answer included: long enough for a reload (bounded by
/// the host's Init and Shutdown limits) or a call (by its timeout, 30 s by default).
const REQUEST_DEADLINE: Duration = Duration::from_secs(120);

/// The largest answer read (a plugin's output, say).
const MAX_ANSWER: usize = 256 * 1024 * 1024;

/// The largest input read from standard input.
const MAX_STDIN: u64 = 256 * 1024 * 1024;

/// The environment variable a token may come from.
const TOKEN_VARIABLE: &str = "PLUGHOST_ADMIN_TOKEN";

/// The settings the client commands go by: the file as the host reads it, else, when a value
/// needs a variable this process lacks (the token's `${PLUGHOST_ADMIN_TOKEN}`, say), as far as
/// it can be read without the environment; the file's error if neither works.
pub(crate) fn settings(file: Option<&Path>) -> Result<HostConfig, plughost::ConfigError> {
    HostConfig::discover(file).or_else(|error| {
        let path = file.unwrap_or(Path::new(HostConfig::DEFAULT_FILE));
        HostConfig::load_structure(path).map_err(|_| error)
    })
}

/// What the command line says about reaching the host.
pub(crate) struct Flags<'a> {
    /// `--admin ADDR`.
    pub(crate) admin: Option<&'a str>,
    /// `--token TOKEN`.
    pub(crate) token: Option<String>,
    /// `--control PATH`.
    pub(crate) control: Option<&'a Path>,
}

/// A running host's admin API, and how to reach it.
pub(crate) struct Api {
    target: Target,
    token: Option<String>,
}

enum Target {
    /// The host's control socket.
    Unix(Socket),
    /// A TCP address, `HOST:PORT`.
    Tcp {
        authority: String,
        /// How to start a host there, for the message when nobody listens.
        how_to_start: String,
    },
}

impl Api {
    /// The API that `flags`, else `config`, point to.
    pub(crate) fn new(flags: Flags<'_>, config: &HostConfig) -> anyhow::Result<Self> {
        let target = match (flags.admin, flags.control, config.admin.listen) {
            (Some(admin), _, _) => {
                let authority = authority(admin)?;
                Target::Tcp {
                    how_to_start: format!("start one with `plughost run --admin {authority}`"),
                    authority,
                }
            }
            (None, Some(control), _) => Target::Unix(Socket::of(config, Some(control))),
            (None, None, Some(mut listen)) if !Socket::of(config, None).exists() => {
                // A host listening on every address is reached on this machine's own.
                if listen.ip().is_unspecified() {
                    listen.set_ip(match listen {
                        std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                        std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                    });
                }
                Target::Tcp {
                    authority: listen.to_string(),
                    how_to_start: "the settings' [admin] listen; start one with `plughost \
                                   run`, or pass --admin ADDR"
                        .to_owned(),
                }
            }
            (None, None, _) => Target::Unix(Socket::of(config, None)),
        };
        let token = flags
            .token
            .or_else(|| std::env::var(TOKEN_VARIABLE).ok())
            .or_else(|| config.admin.token.as_ref().map(|t| t.expose().to_owned()))
            .filter(|t| !t.is_empty());
        Ok(Api { target, token })
    }

    /// `GET path`, its JSON answer.
    pub(crate) fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        let body = self.send(Method::GET, path, None)?;
        self.json(&body)
    }

    /// `POST path` with `body` of type `content_type`, its answer's bytes.
    pub(crate) fn post(
        &self,
        path: &str,
        content_type: &'static str,
        body: Vec<u8>,
    ) -> anyhow::Result<Vec<u8>> {
        self.send(Method::POST, path, Some((content_type, body)))
    }

    /// `POST path` with `body` of type `content_type`, its JSON answer.
    pub(crate) fn post_json(
        &self,
        path: &str,
        content_type: &'static str,
        body: Vec<u8>,
    ) -> anyhow::Result<Value> {
        let answer = self.post(path, content_type, body)?;
        self.json(&answer)
    }

    fn json(&self, body: &[u8]) -> anyhow::Result<Value> {
        serde_json::from_slice(body)
            .with_context(|| format!("the answer from {} is not JSON", self.shown()))
    }

    /// Where the API is, for messages: the socket's path or `http://HOST:PORT`.
    fn shown(&self) -> String {
        match &self.target {
            Target::Unix(socket) => socket.path().display().to_string(),
            Target::Tcp { authority, .. } => format!("http://{authority}"),
        }
    }

    /// One request; the answer's body if its status is a success, else the API's error.
    fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(&'static str, Vec<u8>)>,
    ) -> anyhow::Result<Vec<u8>> {
        let host = match &self.target {
            Target::Unix(_) => "localhost",
            Target::Tcp { authority, .. } => authority,
        };
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, host)
            .header(USER_AGENT, concat!("plughost/", env!("CARGO_PKG_VERSION")));
        if let Some(token) = &self.token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = match body {
            Some((content_type, body)) => request
                .header(CONTENT_TYPE, content_type)
                .body(Full::new(Bytes::from(body))),
            None => request.body(Full::new(Bytes::new())),
        }
        // Not the error itself: it could quote the header, and the header holds the token.
        .map_err(|_| anyhow!("cannot build the request for {path}"))?;

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let (status, body) = runtime.block_on(async {
            tokio::time::timeout(REQUEST_DEADLINE, self.exchange(request))
                .await
                .unwrap_or_else(|_| {
                    Err(anyhow!(
                        "the plughost host on {} did not answer within {} s",
                        self.shown(),
                        REQUEST_DEADLINE.as_secs()
                    ))
                })
        })?;
        if status.is_success() {
            return Ok(body);
        }
        let error = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned));
        match error {
            // The host asks for the header: say how this command sends it.
            Some(error)
                if status == StatusCode::UNAUTHORIZED
                    && self.token.is_none()
                    && error.contains("Authorization: Bearer") =>
            {
                bail!("{error} (give the token with {TOKEN_VARIABLE} or --token)")
            }
            Some(error) => bail!("{error}"),
            None => {
                let text = String::from_utf8_lossy(&body);
                let text = text.lines().next().unwrap_or_default();
                bail!(
                    "{} answered {status}{}{}",
                    self.shown(),
                    if text.is_empty() { "" } else { ": " },
                    text.chars().take(200).collect::<String>()
                )
            }
        }
    }

    /// Connects, sends `request` and reads the answer.
    async fn exchange(
        &self,
        request: Request<Full<Bytes>>,
    ) -> anyhow::Result<(StatusCode, Vec<u8>)> {
        match &self.target {
            Target::Unix(socket) => {
                #[cfg(unix)]
                {
                    let stream = self
                        .connect(tokio::net::UnixStream::connect(socket.path()))
                        .await?;
                    self.over(stream, request).await
                }
                #[cfg(not(unix))]
                {
                    let _ = (socket, request);
                    bail!(
                        "there is no control socket on this platform: pass --admin ADDR, the \
                         host's [admin] listen address"
                    )
                }
            }
            Target::Tcp { authority, .. } => {
                let stream = self
                    .connect(tokio::net::TcpStream::connect(authority.as_str()))
                    .await?;
                self.over(stream, request).await
            }
        }
    }

    /// Awaits `connecting` for up to [`CONNECT_TIMEOUT`], saying in one line why it failed.
    async fn connect<S>(
        &self,
        connecting: impl std::future::Future<Output = std::io::Result<S>>,
    ) -> anyhow::Result<S> {
        use std::io::ErrorKind;
        let nobody = |why: &str| {
            let hint = match &self.target {
                Target::Unix(socket) => socket.how_to_start(),
                Target::Tcp { how_to_start, .. } => how_to_start.clone(),
            };
            anyhow!(
                "no plughost host is listening on {} ({why}{hint})",
                self.shown()
            )
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) if e.kind() == ErrorKind::NotFound => Err(nobody("")),
            Ok(Err(e)) if e.kind() == ErrorKind::ConnectionRefused => Err(match self.target {
                Target::Unix(_) => nobody("a stale socket of a host that is gone; "),
                Target::Tcp { .. } => nobody(""),
            }),
            Ok(Err(e)) => Err(anyhow!("cannot connect to {}: {e}", self.shown())),
            Err(_) => Err(anyhow!(
                "cannot connect to {}: no answer within {} s",
                self.shown(),
                CONNECT_TIMEOUT.as_secs()
            )),
        }
    }

    /// The HTTP exchange over a connected `stream`.
    async fn over<S>(
        &self,
        stream: S,
        request: Request<Full<Bytes>>,
    ) -> anyhow::Result<(StatusCode, Vec<u8>)>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let broken = |e: hyper::Error| {
            anyhow!(
                "the plughost host on {} did not answer properly: {e}",
                self.shown()
            )
        };
        let stream = EarlyAnswer {
            inner: stream,
            closed: false,
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(broken)?;
        // Drives the connection while the request is sent and the answer read; ends with it.
        tokio::spawn(connection);
        let response = sender.send_request(request).await.map_err(broken)?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    anyhow!(
                        "the answer from {} is larger than {} MiB",
                        self.shown(),
                        MAX_ANSWER >> 20
                    )
                } else {
                    anyhow!("cannot read the answer from {}: {e}", self.shown())
                }
            })?
            .to_bytes();
        Ok((status, body.to_vec()))
    }
}

/// A connection whose writes, once the host has closed it, are dropped rather than failed. A
/// host may answer before the whole request is sent (413 to a body larger than its limit) and
/// close: its answer, waiting to be read, is then what the command reports, not the failed
/// write. A host that closed without answering still fails the request, when nothing is read.
struct EarlyAnswer<S> {
    inner: S,
    closed: bool,
}

impl<S> EarlyAnswer<S> {
    /// `result`, with "the other side closed" turned into success, remembered.
    fn tolerate<T>(
        &mut self,
        result: Poll<std::io::Result<T>>,
        done: T,
    ) -> Poll<std::io::Result<T>> {
        use std::io::ErrorKind;
        match result {
            Poll::Ready(Err(e))
                if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) =>
            {
                self.closed = true;
                Poll::Ready(Ok(done))
            }
            other => other,
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for EarlyAnswer<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for EarlyAnswer<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.closed {
            return Poll::Ready(Ok(buf.len()));
        }
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.tolerate(result, buf.len())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.closed {
            return Poll::Ready(Ok(()));
        }
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.tolerate(result, ())
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.closed {
            return Poll::Ready(Ok(()));
        }
        let result = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.tolerate(result, ())
    }
}

/// `HOST:PORT` from `--admin`'s `HOST:PORT` or `http://HOST:PORT[/]`.
fn authority(admin: &str) -> anyhow::Result<String> {
    let rest = match admin.split_once("://") {
        Some(("http", rest)) => rest,
        Some((scheme, _)) => bail!(
            "--admin {admin}: {scheme} is not supported; the admin API speaks plain http (put \
             a TLS proxy in front of it for https)"
        ),
        None => admin,
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let port = rest.rsplit_once(':').map(|(_, port)| port);
    if rest.contains('/') || port.is_none_or(|p| p.parse::<u16>().is_err()) {
        bail!("--admin {admin}: expected HOST:PORT or http://HOST:PORT, such as 127.0.0.1:9477");
    }
    Ok(rest.to_owned())
}

/// `text` as one segment of a URL path: every byte but the unreserved ones percent-encoded.
pub(crate) fn segment(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// `arg` as bytes, or standard input for `-`.
pub(crate) fn input(arg: &str, what: &str) -> anyhow::Result<Vec<u8>> {
    if arg != "-" {
        return Ok(arg.as_bytes().to_vec());
    }
    let mut bytes = Vec::new();
    std::io::stdin()
        .take(MAX_STDIN + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {what} from standard input"))?;
    if bytes.len() as u64 > MAX_STDIN {
        bail!(
            "{what} on standard input is larger than {} MiB",
            MAX_STDIN >> 20
        );
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_addresses_are_read_with_or_without_the_scheme() {
        assert_eq!(authority("127.0.0.1:9477").unwrap(), "127.0.0.1:9477");
        assert_eq!(authority("http://[::1]:9477/").unwrap(), "[::1]:9477");
        assert_eq!(authority("http://localhost:80").unwrap(), "localhost:80");
        assert!(authority("https://example.com:443")
            .unwrap_err()
            .to_string()
            .contains("https is not supported"));
        for bad in ["127.0.0.1", "http://h:1/x", "h:port", "h:70000"] {
            assert!(authority(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(segment("user.created"), "user.created");
        assert_eq!(segment("bad topic/x?"), "bad%20topic%2Fx%3F");
        assert_eq!(segment("é"), "%C3%A9");
    }
}
