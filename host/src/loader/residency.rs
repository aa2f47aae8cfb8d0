//! Whether a closed library really left the address space.
//!
//! `dlclose` reports success even when nothing was unmapped: glibc keeps a library mapped while
//! a thread-local destructor it registered is pending on a live thread, e.g. after plugin code
//! touched a `thread_local!` with a destructor, or called `std::thread::spawn`, on a host
//! thread. So the host checks instead of trusting it (docs/design.md, "Unloading and
//! thread-local destructors").

use std::path::Path;

/// What became of a closed library.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum UnloadStatus {
    /// Gone from the address space.
    Unmapped,
    /// Still mapped: something the plugin left on a live thread (a thread-local destructor, a
    /// thread it started) pins it. Harmless, but its memory stays in use until that thread ends.
    StillMapped,
    /// Not closed at all: plugin code the host gave up on (a stuck Init, Shutdown or check)
    /// may still be running in it, and unmapping running code would crash the process.
    LeftLoaded,
    /// It ran in a worker process, which exited: nothing of it was ever in the host.
    Exited,
    /// This platform gives no way to tell (only Linux is checked; macOS never unloads Rust
    /// libraries with thread-locals, and musl never unloads at all).
    Unknown,
}

impl UnloadStatus {
    /// The words used in log lines, about `subject` ("old version", "library").
    pub(crate) fn describe(self, subject: &str) -> String {
        match self {
            UnloadStatus::Unmapped => format!("{subject} unloaded"),
            UnloadStatus::StillMapped => format!(
                "{subject} still mapped: a thread-local destructor or a thread the plugin left on \
                 a live thread keeps it in memory until that thread ends"
            ),
            UnloadStatus::LeftLoaded => format!(
                "{subject} left loaded: code of it the host gave up on may still be running"
            ),
            UnloadStatus::Exited => format!("{subject}'s worker process exited"),
            UnloadStatus::Unknown => {
                format!("{subject} closed; this platform cannot tell whether it left memory")
            }
        }
    }
}

/// Whether a library opened from `path` (the exact path given to `dlopen`) is still in this
/// process, if the platform can tell: asked of the dynamic loader's own list of loaded objects
/// (`dl_iterate_phdr`), which costs microseconds whatever else is mapped. An object leaves that
/// list when it is unmapped, and stays in it while anything keeps it loaded.
pub(crate) fn is_loaded(path: &Path) -> Option<bool> {
    loaded::contains(path)
}

#[cfg(target_os = "linux")]
mod loaded {
    use std::ffi::{c_int, c_void, CStr};
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    pub(super) fn contains(path: &Path) -> Option<bool> {
        struct Search<'a> {
            wanted: &'a [u8],
            found: bool,
        }
        /// # Safety
        ///
        /// Called by `dl_iterate_phdr` with a valid `info` and the `data` passed to it.
        unsafe extern "C" fn visit(
            info: *mut libc::dl_phdr_info,
            _size: libc::size_t,
            data: *mut c_void,
        ) -> c_int {
            // SAFETY: `data` is the `Search` passed below, alive and not otherwise borrowed
            // during the iteration; `info` is valid for this call (the caller's promise).
            let (search, name) = unsafe { (&mut *data.cast::<Search>(), (*info).dlpi_name) };
            // SAFETY: a non-null `dlpi_name` is a NUL-terminated string owned by the loader,
            // valid during this call.
            if !name.is_null() && unsafe { CStr::from_ptr(name) }.to_bytes() == search.wanted {
                search.found = true;
                return 1; // stop
            }
            0
        }
        let mut search = Search {
            wanted: path.as_os_str().as_bytes(),
            found: false,
        };
        // SAFETY: `visit` only reads the entries it is given and writes `search`, which
        // outlives the call; it does not call back into the loader.
        unsafe { libc::dl_iterate_phdr(Some(visit), (&mut search as *mut Search).cast()) };
        Some(search.found)
    }
}

#[cfg(not(target_os = "linux"))]
mod loaded {
    pub(super) fn contains(_: &std::path::Path) -> Option<bool> {
        None
    }
}
