//! Checks a library's bytes *before* the dynamic loader sees them.
//!
//! `dlopen` runs a library's constructors, so peers that check a magic value after loading
//! have already run the code they meant to vet (docs/design.md, "Checking before loading"). Here the file is parsed with the
//! `object` crate first: it must be a shared library (not an executable, PIE included) for
//! this platform's format and architecture, export [`HEADER_SYMBOL`], and that header's magic,
//! header version and plugin-api version, read straight from the file, must pass [`validate`].
//! Only then is it loaded, and the header is checked again in memory.

use std::path::Path;

use object::{Object, ObjectKind, ObjectSection};
use plugin_api::ffi::{ApiVersion, HEADER_SYMBOL};

use super::validate;
use crate::error::LoadError;

/// Runs every check that needs only the file's bytes.
pub(crate) fn check_bytes(path: &Path, bytes: &[u8]) -> Result<(), LoadError> {
    let not_a_library = |reason: String| LoadError::NotALibrary {
        path: path.to_owned(),
        reason,
    };
    if bytes.is_empty() {
        return Err(LoadError::Empty {
            path: path.to_owned(),
        });
    }
    let file =
        object::File::parse(bytes).map_err(|e| not_a_library(describe_parse_error(bytes, e)))?;

    let (format, arch) = host_format();
    if file.format() != format || file.architecture() != arch {
        return Err(not_a_library(format!(
            "built for {:?} {:?}, this host needs {format:?} {arch:?}",
            file.format(),
            file.architecture()
        )));
    }
    if file.kind() == ObjectKind::Executable || is_pie_executable(&file) {
        return Err(not_a_library(
            "it is an executable program, not a shared library".into(),
        ));
    }
    if file.kind() != ObjectKind::Dynamic {
        return Err(not_a_library(format!(
            "it is a {:?} object, not a shared library",
            file.kind()
        )));
    }

    loader_tables(bytes).map_err(|reason| not_a_library(format!("damaged library: {reason}")))?;

    let header = read_header(&file).map_err(|reason| LoadError::NotAPlugin {
        path: path.to_owned(),
        reason,
    })?;
    validate::check_header_fields(
        path,
        header.magic,
        header.header_version,
        header.api_version,
    )
}

/// Checks the tables the dynamic loader indexes without checking (docs/design.md, "Checking
/// before loading"): every dynamic symbol's version index must name a version the file defines
/// or needs (a larger one makes `ld.so` read past its table, and crash or not depending on its
/// heap), the version tables themselves must hold together, and every relocation must name a
/// symbol of its table. 64-bit ELF only; other formats pass.
fn loader_tables(bytes: &[u8]) -> Result<(), String> {
    use object::read::elf::{ElfFile64, SectionHeader as _};
    let Ok(elf) = ElfFile64::<object::Endianness>::parse(bytes) else {
        return Ok(());
    };
    let endian = elf.endian();
    let sections = elf.elf_section_table();
    let symbols_in = |table: object::SectionIndex| -> Result<usize, String> {
        if table.0 == 0 {
            return Ok(0);
        }
        sections
            .symbol_table_by_index(endian, bytes, table)
            .map(|symbols| symbols.len())
            .map_err(|e| format!("a relocation section's symbol table is unreadable ({e})"))
    };
    let versions = sections
        .versions(endian, bytes)
        .map_err(|e| format!("the symbol version tables are inconsistent ({e})"))?;
    if let Some(versions) = versions {
        let dynamic = sections
            .symbols(endian, bytes, object::elf::SHT_DYNSYM)
            .map_err(|e| format!("the dynamic symbol table is unreadable ({e})"))?;
        for index in 0..dynamic.len() {
            let version = versions.version_index(endian, object::SymbolIndex(index));
            versions.version(version).map_err(|_| {
                format!(
                    "symbol {index} has version index {}, which no version table defines",
                    version.index()
                )
            })?;
        }
    }
    for section in sections.iter() {
        let unreadable = |e| format!("a relocation section is unreadable ({e})");
        if let Some((relocations, table)) = section.rela(endian, bytes).map_err(unreadable)? {
            let count = symbols_in(table)?;
            if let Some(bad) = relocations
                .iter()
                .map(|r| r.r_sym(endian, false) as usize)
                .find(|&symbol| symbol != 0 && symbol >= count)
            {
                return Err(format!(
                    "a relocation names symbol {bad} of a table of {count}"
                ));
            }
        }
        if let Some((relocations, table)) = section.rel(endian, bytes).map_err(unreadable)? {
            let count = symbols_in(table)?;
            if let Some(bad) = relocations
                .iter()
                .map(|r| r.r_sym(endian) as usize)
                .find(|&symbol| symbol != 0 && symbol >= count)
            {
                return Err(format!(
                    "a relocation names symbol {bad} of a table of {count}"
                ));
            }
        }
    }
    Ok(())
}

/// The frozen, integer-only start of a `PluginHeader`, as found in the file.
struct RawHeader {
    magic: [u8; 8],
    header_version: u32,
    api_version: ApiVersion,
}

fn read_header(file: &object::File<'_>) -> Result<RawHeader, String> {
    let exports = file
        .exports()
        .map_err(|e| format!("cannot read its exported symbols: {e}"))?;
    // Mach-O prefixes C symbol names with an underscore.
    let export = exports
        .iter()
        .find(|e| e.name().strip_prefix(b"_").unwrap_or(e.name()) == HEADER_SYMBOL.as_bytes())
        .ok_or_else(|| format!("it does not export {HEADER_SYMBOL}"))?;
    // Every offset comes from the file: checked arithmetic, so a crafted file is refused
    // instead of overflowing.
    let address = export.address();
    let section = file
        .sections()
        .find(|s| {
            address
                .checked_sub(s.address())
                .is_some_and(|offset| offset < s.size())
        })
        .ok_or_else(|| format!("{HEADER_SYMBOL} points outside every section"))?;
    let data = section
        .data()
        .map_err(|e| format!("cannot read the section holding {HEADER_SYMBOL}: {e}"))?;
    let raw = usize::try_from(address - section.address())
        .ok()
        .and_then(|start| data.get(start..start.checked_add(24)?))
        .ok_or_else(|| format!("{HEADER_SYMBOL} is cut short (truncated file?)"))?;
    let u32_at = |i: usize| {
        let bytes: [u8; 4] = raw[i..i + 4].try_into().expect("4 bytes");
        if file.is_little_endian() {
            u32::from_le_bytes(bytes)
        } else {
            u32::from_be_bytes(bytes)
        }
    };
    Ok(RawHeader {
        magic: raw[..8].try_into().expect("8 bytes"),
        header_version: u32_at(8),
        api_version: ApiVersion {
            major: u32_at(12),
            minor: u32_at(16),
            patch: u32_at(20),
        },
    })
}

/// Whether an ELF "shared object" is really a position-independent executable: the linker
/// marks those with `DF_1_PIE` in `DT_FLAGS_1`. (An `.interp` section is no proof: glibc's
/// `libc.so.6` has one so that it can be run to print its version.)
fn is_pie_executable(file: &object::File<'_>) -> bool {
    const DT_NULL: u64 = 0;
    const DT_FLAGS_1: u64 = 0x6fff_fffb;
    const DF_1_PIE: u64 = 0x0800_0000;
    let Some(dynamic) = file.section_by_name(".dynamic") else {
        return false;
    };
    let Ok(data) = dynamic.data() else {
        return false;
    };
    let word = if file.is_64() { 8 } else { 4 };
    let read = |bytes: &[u8]| -> u64 {
        let mut buf = [0u8; 8];
        if file.is_little_endian() {
            buf[..word].copy_from_slice(bytes);
            u64::from_le_bytes(buf)
        } else {
            buf[8 - word..].copy_from_slice(bytes);
            u64::from_be_bytes(buf)
        }
    };
    for entry in data.chunks_exact(2 * word) {
        let (tag, value) = (read(&entry[..word]), read(&entry[word..]));
        if tag == DT_NULL {
            break;
        }
        if tag == DT_FLAGS_1 {
            return value & DF_1_PIE != 0;
        }
    }
    false
}

/// The object format and architecture of the running host.
fn host_format() -> (object::BinaryFormat, object::Architecture) {
    let format = if cfg!(target_vendor = "apple") {
        object::BinaryFormat::MachO
    } else if cfg!(windows) {
        object::BinaryFormat::Pe
    } else {
        object::BinaryFormat::Elf
    };
    let arch = match std::env::consts::ARCH {
        "x86_64" => object::Architecture::X86_64,
        "x86" => object::Architecture::I386,
        "aarch64" => object::Architecture::Aarch64,
        "arm" => object::Architecture::Arm,
        "riscv64" => object::Architecture::Riscv64,
        "powerpc64" => object::Architecture::PowerPc64,
        "s390x" => object::Architecture::S390x,
        "loongarch64" => object::Architecture::LoongArch64,
        _ => object::Architecture::Unknown,
    };
    (format, arch)
}

/// Turns the parser's terse error into something a user can act on.
fn describe_parse_error(bytes: &[u8], error: object::Error) -> String {
    let looks_like_text = bytes
        .iter()
        .take(512)
        .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace());
    if looks_like_text {
        "it is a text file".to_owned()
    } else if bytes.starts_with(b"\x7fELF")
        || bytes.starts_with(b"MZ")
        || bytes.starts_with(&[0xcf, 0xfa, 0xed, 0xfe])
    {
        format!("damaged or truncated library ({error})")
    } else {
        format!("unknown file format ({error})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small, fixed generator: the same inputs on every run.
    fn generator(seed: u64) -> impl FnMut() -> u64 {
        let mut state = seed;
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }

    /// The C library this test runs with: a real shared library, if not a plugin.
    #[cfg(target_os = "linux")]
    fn a_shared_library() -> Vec<u8> {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let path = maps
            .lines()
            .filter_map(|line| line.split_whitespace().nth(5))
            .find(|path| path.contains("/libc.so") || path.contains("/libc-"))
            .expect("libc is mapped");
        std::fs::read(path).unwrap()
    }

    /// Damaged bytes are refused or accepted; the preflight never panics on them (it runs
    /// before anything else, on bytes anyone may have written).
    #[cfg(target_os = "linux")]
    #[test]
    fn damaged_libraries_never_make_the_preflight_panic() {
        let original = a_shared_library();
        let mut next = generator(0x00c0_ffee_1234_5678);
        let path = Path::new("libmutant.so");
        for round in 0..300 {
            let mut bytes = original.clone();
            // The headers and tables the parser reads first, then anywhere.
            let span = if round % 2 == 0 { 4096 } else { bytes.len() };
            for _ in 0..1 + round % 16 {
                let at = (next() as usize) % span;
                bytes[at] = next() as u8;
            }
            if round % 7 == 0 {
                bytes.truncate((next() as usize) % bytes.len());
            }
            let outcome = std::panic::catch_unwind(|| check_bytes(path, &bytes).is_ok());
            assert!(outcome.is_ok(), "round {round}: the preflight panicked");
        }
    }
}
