//! The control socket of `plughost run`: where it is, and binding it.
//!
//! While `run` runs it serves the admin API ([`plughost_admin`]) on a Unix domain socket:
//! `<plugins_dir>/.plughost.sock`, or the path given with `--control` (to `run` and to the
//! commands that talk to it alike). The socket is its owner's alone (mode 0600), which is why
//! its clients need no token; a stale one left by a host that died is replaced, a live one
//! makes `run` refuse to start (another host serves that folder); it is removed when `run`
//! ends. What is served on it, and how a slow or hostile client is bounded, is the admin
//! server's business.

// Elsewhere only the messages are used.
#![cfg_attr(not(unix), allow(dead_code))]

use std::path::{Path, PathBuf};

use plughost::HostConfig;

/// The socket's name in the plugins folder.
const SOCKET_NAME: &str = ".plughost.sock";

/// Where the control socket of a host is, and how to talk about it.
#[derive(Debug, Clone)]
pub(crate) struct Socket {
    path: PathBuf,
    /// Whether it was given with `--control` (rather than derived from the plugins folder).
    explicit: bool,
}

impl Socket {
    /// `explicit` if given, else `.plughost.sock` in the plugins folder of `config`.
    pub(crate) fn of(config: &HostConfig, explicit: Option<&Path>) -> Self {
        match explicit {
            Some(path) => Socket {
                path: path.to_owned(),
                explicit: true,
            },
            None => Socket {
                path: config.host.plugins_dir.join(SOCKET_NAME),
                explicit: false,
            },
        }
    }

    /// Whether a socket file is there (a host may serve it, or it may be stale).
    pub(crate) fn exists(&self) -> bool {
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileTypeExt;
            std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.file_type().is_socket())
        }
        #[cfg(not(unix))]
        {
            false
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// How to start a host that listens here, for a client's message.
    pub(crate) fn how_to_start(&self) -> String {
        if self.explicit {
            format!(
                "start one with `plughost run --control {}`",
                self.path.display()
            )
        } else {
            "start one with `plughost run`, or pass --admin ADDR".to_owned()
        }
    }

    /// The one-line message for a `run` that found another host on its socket.
    #[cfg(unix)]
    fn taken(&self) -> String {
        let path = self.path.display();
        if self.explicit {
            format!("another plughost already listens on {path}: stop it first")
        } else {
            let folder = self.path.parent().unwrap_or(Path::new("."));
            format!(
                "another plughost already serves {} (its control socket {path} answers): stop \
                 it first, or give this one --control PATH",
                folder.join("").display()
            )
        }
    }
}

#[cfg(unix)]
pub(crate) use imp::{bind, SocketFile};

#[cfg(unix)]
mod imp {
    use std::io::ErrorKind;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    use std::os::unix::net::{UnixListener, UnixStream};

    use anyhow::{bail, Context as _};

    use super::*;

    /// The socket file, for as long as `run` serves on it: dropping it removes the file, if it
    /// is still the one bound (not one another host has bound since).
    pub(crate) struct SocketFile {
        path: PathBuf,
        /// Device and inode of the socket file bound.
        identity: (u64, u64),
    }

    impl Drop for SocketFile {
        fn drop(&mut self) {
            if std::fs::symlink_metadata(&self.path)
                .is_ok_and(|m| (m.dev(), m.ino()) == self.identity)
            {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }

    /// The longest socket path the platform takes (`sun_path`, less its NUL).
    const MAX_SOCKET_PATH: usize = if cfg!(target_os = "linux") { 107 } else { 103 };

    /// Binds a socket at `path` that only its owner can connect to, whatever the umask: bound
    /// in a folder of its own (mode 0700), made 0600 there, then renamed into place. (Bound
    /// at `path` and changed after, it would be connectable by others in between, and a
    /// connection made then stays open.) The staging folder's name is shorter than the
    /// socket's, so a path that fits fits staged too.
    fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
        use std::os::unix::fs::DirBuilderExt;
        let parent = path.parent().unwrap_or(Path::new("."));
        let staging = parent.join(format!(".phs{}", std::process::id()));
        std::fs::DirBuilder::new().mode(0o700).create(&staging)?;
        let staged = staging.join("s");
        let bound = UnixListener::bind(&staged).and_then(|listener| {
            std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
            std::fs::rename(&staged, path)?;
            Ok(listener)
        });
        let _ = std::fs::remove_file(&staged);
        let _ = std::fs::remove_dir(&staging);
        bound
    }

    /// Binds `socket`, replacing a stale one and refusing if another host answers on it; the
    /// listener to serve on, and the file to remove at the end. `None` (said in the log) when
    /// its path is too long for a socket: running matters more than being reachable.
    pub(crate) fn bind(socket: &Socket) -> anyhow::Result<Option<(UnixListener, SocketFile)>> {
        let path = socket.path();
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                bail!(
                    "cannot listen on {}: something that is not a socket is there; remove it \
                     or pass --control PATH",
                    path.display()
                );
            }
            match UnixStream::connect(path) {
                Ok(_) => bail!("{}", socket.taken()),
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                    tracing::info!("replacing the stale control socket {}", path.display());
                    std::fs::remove_file(path).with_context(|| {
                        format!("cannot remove the stale control socket {}", path.display())
                    })?;
                }
                Err(e) => bail!("cannot use the control socket {}: {e}", path.display()),
            }
        }
        if path.as_os_str().len() > MAX_SOCKET_PATH {
            tracing::warn!(
                "no control socket: {} is {} bytes long, more than a Unix socket address \
                 takes ({MAX_SOCKET_PATH}); plughost status, reload, call, emit and events \
                 cannot reach this host through it (pass --control with a shorter path, or \
                 --admin ADDR)",
                path.display(),
                path.as_os_str().len()
            );
            return Ok(None);
        }
        let listener = bind_private(path).with_context(|| {
            format!(
                "cannot listen on {} (pass --control PATH for another place)",
                path.display()
            )
        })?;
        let meta = std::fs::symlink_metadata(path)
            .with_context(|| format!("cannot read the control socket {}", path.display()))?;
        tracing::info!("control socket {}", path.display());
        Ok(Some((
            listener,
            SocketFile {
                path: path.to_owned(),
                identity: (meta.dev(), meta.ino()),
            },
        )))
    }
}
