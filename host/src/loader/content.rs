//! A library file's bytes, read once ([`read`]); every check after works on them, and the
//! private copy that is loaded holds exactly them.
//!
//! On Linux the file is read straight into an anonymous memory file (`memfd_create`), sealed
//! against any change, and the checks read it through a read-only mapping. That memory file is
//! also the private copy the loader opens ([`ShadowCopy`]), so the bytes never pass through the
//! heap (glibc keeps freed heap memory, and the process would grow with the largest plugin
//! read), nothing is written to disk, and no window is left in which anything could change
//! them between the check and the load. Where memory files are refused (an old kernel, a
//! sandbox), and on other systems, the bytes are read into the heap and copied to the shadow
//! folder.

use std::path::Path;

use super::ownership;
use super::shadow::ShadowCopy;
use crate::config::OwnershipCheck;
use crate::error::LoadError;
#[cfg(target_os = "linux")]
pub(crate) use memory::MemoryFile;

/// The largest library file the host reads: far above any real plugin (a debug build with
/// everything is tens of MB), low enough that a hostile file cannot exhaust memory.
pub(crate) const MAX_LIBRARY_SIZE: u64 = 512 * 1024 * 1024;

/// A library file's content, read once.
pub(crate) struct Content {
    bytes: Bytes,
}

enum Bytes {
    Heap(Vec<u8>),
    #[cfg(target_os = "linux")]
    Memory {
        file: std::sync::Arc<MemoryFile>,
        map: memory::Mapping,
    },
}

impl std::ops::Deref for Content {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.bytes {
            Bytes::Heap(bytes) => bytes,
            #[cfg(target_os = "linux")]
            Bytes::Memory { map, .. } => map.bytes(),
        }
    }
}

impl Content {
    /// The private copy these bytes already are, if they were read into a memory file.
    pub(crate) fn memory_copy(&self) -> Option<ShadowCopy> {
        match &self.bytes {
            Bytes::Heap(_) => None,
            #[cfg(target_os = "linux")]
            Bytes::Memory { file, .. } => Some(ShadowCopy::memory(file.clone())),
        }
    }
}

/// Reads a whole library file, safely for whatever the path holds: it is opened without
/// blocking (a named pipe would otherwise wait for a writer for ever), checked to be a regular
/// file on the open descriptor (no race with a swap between checking and opening), and read no
/// further than [`MAX_LIBRARY_SIZE`]. For the host's own copies; a file the operator put in
/// place is read with [`read_library`].
pub(crate) fn read(path: &Path) -> Result<Content, LoadError> {
    read_checked(path, None)
}

/// [`read`] of a library the operator put in place, whose owner and mode, and its folders',
/// are first checked as `ownership` says ([`ownership::check`]): the file's on the descriptor
/// then read, so nothing can be swapped in between.
pub(crate) fn read_library(path: &Path, ownership: OwnershipCheck) -> Result<Content, LoadError> {
    read_checked(path, Some(ownership))
}

fn read_checked(path: &Path, ownership: Option<OwnershipCheck>) -> Result<Content, LoadError> {
    let read_error = |source| LoadError::Read {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(read_error)?;
    let metadata = file.metadata().map_err(read_error)?;
    if !metadata.is_file() {
        return Err(LoadError::NotAFile {
            path: path.to_owned(),
            kind: file_kind(&metadata),
        });
    }
    if let Some(setting) = ownership {
        ownership::check(path, &ownership::Stat::of(path, &file, &metadata), setting)?;
    }
    if metadata.len() > MAX_LIBRARY_SIZE {
        return Err(too_large(path, metadata.len()));
    }
    #[cfg(target_os = "linux")]
    if let Some(created) = memory::create(path) {
        let bytes = memory::fill(path, &file, created?)?;
        return Ok(Content { bytes });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0));
    // One byte more than allowed tells a file that grew since `metadata` apart.
    std::io::Read::read_to_end(
        &mut std::io::Read::take(&file, MAX_LIBRARY_SIZE + 1),
        &mut bytes,
    )
    .map_err(read_error)?;
    if bytes.len() as u64 > MAX_LIBRARY_SIZE {
        return Err(too_large(path, bytes.len() as u64));
    }
    Ok(Content {
        bytes: Bytes::Heap(bytes),
    })
}

fn too_large(path: &Path, size: u64) -> LoadError {
    LoadError::TooLarge {
        path: path.to_owned(),
        size,
        limit: MAX_LIBRARY_SIZE,
    }
}

/// What a path that is not a regular file is, for messages.
pub(super) fn file_kind(metadata: &std::fs::Metadata) -> &'static str {
    let kind = metadata.file_type();
    if kind.is_dir() {
        return "a folder";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a named pipe (FIFO)";
        }
        if kind.is_socket() {
            return "a socket";
        }
        if kind.is_char_device() || kind.is_block_device() {
            return "a device";
        }
    }
    "not a regular file"
}

/// Memory files: creating, filling and sealing one, and the mapping the checks read.
#[cfg(target_os = "linux")]
mod memory {
    use std::fs::File;
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, OnceLock};

    use super::{too_large, Bytes, MAX_LIBRARY_SIZE};
    use crate::error::LoadError;

    /// Set once memory files were refused: from then on the shadow folder is used.
    static REFUSED: AtomicBool = AtomicBool::new(false);
    /// Memory files open in this process.
    static OPEN: AtomicUsize = AtomicUsize::new(0);
    /// Set once the descriptor budget was reached (said once, in the log).
    static FULL: AtomicBool = AtomicBool::new(false);

    /// A sealed memory file holding a library's bytes. Each loaded library keeps its own open
    /// for as long as it is in memory, so they are counted against [`budget`].
    #[derive(Debug)]
    pub(crate) struct MemoryFile(File);

    impl std::ops::Deref for MemoryFile {
        type Target = File;
        fn deref(&self) -> &File {
            &self.0
        }
    }

    impl Drop for MemoryFile {
        fn drop(&mut self) {
            OPEN.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// How many memory files may be open at once: half the process's descriptor limit, so that
    /// a host with more plugins than that (the usual soft limit is 1,024) goes on, with copies
    /// on disk, and keeps descriptors for everything else.
    fn budget() -> usize {
        static BUDGET: OnceLock<usize> = OnceLock::new();
        *BUDGET.get_or_init(|| {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: `getrlimit` writes the limit into the struct it is given, which lives
            // across the call.
            let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
            if got != 0 {
                return 512;
            }
            usize::try_from(limit.rlim_cur / 2).unwrap_or(usize::MAX)
        })
    }

    /// A new memory file for the content of `path`: `None` where memory files are refused
    /// (said once, in the log), an error if creating it failed otherwise.
    pub(super) fn create(path: &Path) -> Option<Result<memfd::Memfd, LoadError>> {
        if REFUSED.load(Ordering::Relaxed) {
            return None;
        }
        if OPEN.load(Ordering::Relaxed) >= budget() {
            if !FULL.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "{} plugin libraries are held in memory files, half the descriptor limit \
                     (`ulimit -n`): private copies of further ones are written to the shadow \
                     folder; raise the limit to keep them off the disk",
                    budget()
                );
            }
            return None;
        }
        // Shown in /proc/PID/maps and /proc/PID/fd as `/memfd:plughost:<file> (deleted)`, so
        // that an operator can tell which file a copy came from; the end of a long path is kept
        // (names are limited to 249 bytes).
        let shown = path.to_string_lossy();
        let mut start = shown.len().saturating_sub(200);
        while !shown.is_char_boundary(start) {
            start += 1;
        }
        let name = format!("plughost:{}", &shown[start..]);
        let created = memfd::MemfdOptions::default()
            .close_on_exec(true)
            .allow_sealing(true)
            .create(&name);
        match created {
            Ok(memfd) => Some(Ok(memfd)),
            Err(memfd::Error::Create(e)) if is_refusal(&e) => {
                if !REFUSED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "memory files are not available ({e}): private copies of plugins are \
                         written to the shadow folder instead"
                    );
                }
                None
            }
            Err(e) => Some(Err(LoadError::Shadow {
                path: path.to_owned(),
                shadow: format!("memfd:{name}").into(),
                source: std::io::Error::other(e.to_string()),
            })),
        }
    }

    /// Errors that mean "not here" rather than "not now".
    fn is_refusal(e: &std::io::Error) -> bool {
        matches!(
            e.raw_os_error(),
            Some(libc::ENOSYS | libc::EINVAL | libc::EPERM | libc::EACCES)
        )
    }

    /// Copies `file` (the open `path`) into `memfd`, seals it, and maps it for reading.
    pub(super) fn fill(path: &Path, file: &File, memfd: memfd::Memfd) -> Result<Bytes, LoadError> {
        use memfd::FileSeal;
        let read_error = |source| LoadError::Read {
            path: path.to_owned(),
            source,
        };
        // In the kernel where it can (`copy_file_range`, `sendfile`): no buffer here. One
        // byte more than allowed tells a file that grew since it was measured apart.
        let len = std::io::copy(
            &mut std::io::Read::take(file, MAX_LIBRARY_SIZE + 1),
            &mut memfd.as_file(),
        )
        .map_err(read_error)?;
        if len > MAX_LIBRARY_SIZE {
            return Err(too_large(path, len));
        }
        // Sealed whole: no one holding the descriptor (a child it is passed to included) can
        // change, shrink or grow it, so the bytes checked are the bytes loaded, and reading the
        // mapping can never fault.
        let seals = [
            FileSeal::SealShrink,
            FileSeal::SealGrow,
            FileSeal::SealWrite,
            FileSeal::SealSeal,
        ];
        // The kernel copies with splice, whose pipe may still hold the memfd's pages for a
        // moment; the write seal waits a little for them and then says EBUSY (seen on a loaded
        // machine). Asked again after a pause, it succeeds.
        let mut pause = std::time::Duration::from_millis(5);
        let mut sealed = memfd.add_seals(&seals);
        while let Err(memfd::Error::AddSeals(e)) = &sealed {
            if e.raw_os_error() != Some(libc::EBUSY)
                || pause > std::time::Duration::from_millis(500)
            {
                break;
            }
            std::thread::sleep(pause);
            pause *= 2;
            sealed = memfd.add_seals(&seals);
        }
        sealed.map_err(|e| LoadError::Shadow {
            path: path.to_owned(),
            shadow: "memfd".into(),
            source: match e {
                memfd::Error::Create(e) | memfd::Error::AddSeals(e) | memfd::Error::GetSeals(e) => {
                    std::io::Error::new(e.kind(), format!("cannot seal it: {e}"))
                }
            },
        })?;
        OPEN.fetch_add(1, Ordering::Relaxed);
        let file = Arc::new(MemoryFile(memfd.into_file()));
        let map = Mapping::new(&file, len as usize).map_err(read_error)?;
        Ok(Bytes::Memory { file, map })
    }

    /// A read-only mapping of a sealed memory file.
    pub(super) struct Mapping {
        base: *const u8,
        len: usize,
    }

    // SAFETY: the mapping is read-only and its file sealed against writes: shared references to
    // its bytes are sound from any thread.
    unsafe impl Send for Mapping {}
    // SAFETY: as above.
    unsafe impl Sync for Mapping {}

    impl Mapping {
        fn new(file: &File, len: usize) -> std::io::Result<Self> {
            use std::os::fd::AsRawFd;
            if len == 0 {
                // `mmap` refuses an empty length.
                return Ok(Mapping {
                    base: std::ptr::NonNull::dangling().as_ptr(),
                    len: 0,
                });
            }
            // SAFETY: a fresh read-only mapping of `len` bytes of a file that has exactly that
            // length and is sealed against shrinking; the kernel picks an unused address.
            let base = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ,
                    libc::MAP_SHARED,
                    file.as_raw_fd(),
                    0,
                )
            };
            if base == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error());
            }
            Ok(Mapping {
                base: base.cast(),
                len,
            })
        }

        pub(super) fn bytes(&self) -> &[u8] {
            // SAFETY: `len` readable bytes at `base`, mapped until `self` is dropped, and sealed
            // against any change; for `len == 0` the pointer is dangling but aligned.
            unsafe { std::slice::from_raw_parts(self.base, self.len) }
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            if self.len > 0 {
                // SAFETY: the mapping made in `new`, unmapped once; no reference to its bytes
                // outlives `self` (they borrow from it).
                unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
            }
        }
    }
}
