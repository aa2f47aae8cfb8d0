//! Project chores, shared by `cargo xtask` and the end-to-end tests: building plugin crates
//! with cargo and installing their libraries safely.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};
use cargo_metadata::{Message, MetadataCommand};

/// The workspace's root folder.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one folder below the workspace root")
        .to_owned()
}

/// The cargo that runs us, so that nested builds use the same toolchain.
fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// The workspace packages whose manifests live under `folder` (relative to the root).
pub fn packages_under(folder: &str) -> anyhow::Result<Vec<String>> {
    let root = workspace_root();
    let metadata = MetadataCommand::new()
        .cargo_path(cargo())
        .current_dir(&root)
        .no_deps()
        .exec()
        .context("cargo metadata failed")?;
    let base = root.join(folder);
    let mut names: Vec<String> = metadata
        .workspace_packages()
        .into_iter()
        .filter(|p| p.manifest_path.as_std_path().starts_with(&base))
        .map(|p| p.name.to_string())
        .collect();
    names.sort();
    Ok(names)
}

/// One built plugin library.
#[derive(Debug, Clone)]
pub struct BuiltLibrary {
    /// The cargo package it came from.
    pub package: String,
    /// The library in cargo's target folder.
    pub path: PathBuf,
}

/// What a build shows while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Nothing: cargo's messages are kept and shown only if the build fails (the tests' builds).
    Quiet,
    /// Cargo's own progress on stderr (`Compiling ...` lines, and its progress bar at a
    /// terminal), as `cargo xtask build-plugins` shows it.
    Show,
}

/// Builds `packages` and returns their dynamic libraries (`cdylib` targets), quietly.
pub fn build_libraries(packages: &[String], release: bool) -> anyhow::Result<Vec<BuiltLibrary>> {
    build_libraries_with(packages, release, Progress::Quiet)
}

/// [`build_libraries`], showing cargo's progress or not.
pub fn build_libraries_with(
    packages: &[String],
    release: bool,
    progress: Progress,
) -> anyhow::Result<Vec<BuiltLibrary>> {
    if packages.is_empty() {
        return Ok(Vec::new());
    }
    let mut args = vec!["build".to_owned()];
    for package in packages {
        args.extend(["--package".to_owned(), package.clone()]);
    }
    let mut built = Vec::new();
    cargo_build(&args, release, progress, |artifact| {
        if !artifact
            .target
            .kind
            .iter()
            .any(|k| k.to_string() == "cdylib")
        {
            return;
        }
        for file in &artifact.filenames {
            if file.as_str().ends_with(std::env::consts::DLL_SUFFIX) {
                built.push(BuiltLibrary {
                    package: artifact.target.name.replace('_', "-"),
                    path: file.clone().into_std_path_buf(),
                });
            }
        }
    })?;
    Ok(built)
}

/// Builds the binary `bin` of `package` and returns the executable's path.
pub fn build_binary(package: &str, bin: &str, release: bool) -> anyhow::Result<PathBuf> {
    let args = ["build", "--package", package, "--bin", bin].map(str::to_owned);
    let mut executable = None;
    cargo_build(&args, release, Progress::Quiet, |artifact| {
        if artifact.target.name == bin {
            if let Some(path) = &artifact.executable {
                executable = Some(path.clone().into_std_path_buf());
            }
        }
    })?;
    executable.with_context(|| format!("cargo built no executable {bin}"))
}

/// Runs `cargo <args>` in the workspace, handing every artifact message to `on_artifact`.
/// Cargo's messages for people go to stderr: passed through with [`Progress::Show`], else
/// kept (their last lines) for the error if the build fails.
fn cargo_build(
    args: &[String],
    release: bool,
    progress: Progress,
    mut on_artifact: impl FnMut(&cargo_metadata::Artifact),
) -> anyhow::Result<()> {
    let mut command = Command::new(cargo());
    command
        .current_dir(workspace_root())
        .args(args)
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped());
    if release {
        command.arg("--release");
    }
    if progress == Progress::Quiet {
        command.stderr(Stdio::piped());
    }
    let mut child = command.spawn().context("cannot run cargo build")?;
    let stdout = child.stdout.take().context("cargo build has no stdout")?;
    // Read on a thread of its own while stdout is read here: neither pipe may fill up.
    let said = child.stderr.take().map(|stderr| {
        std::thread::spawn(move || {
            let mut tail = std::collections::VecDeque::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tail.len() == 200 {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
            Vec::from(tail).join("\n")
        })
    });
    for message in Message::parse_stream(BufReader::new(stdout)) {
        if let Message::CompilerArtifact(artifact) = message.context("reading cargo's output")? {
            on_artifact(&artifact);
        }
    }
    let status = child.wait().context("waiting for cargo build")?;
    let said = said
        .and_then(|reader| reader.join().ok())
        .unwrap_or_default();
    if !status.success() {
        if said.is_empty() {
            bail!("cargo {} failed ({status})", args.join(" "));
        }
        bail!("cargo {} failed ({status}):\n{said}", args.join(" "));
    }
    Ok(())
}

/// Installs `library` into `dest` under its own file name without ever writing into a file a
/// running host may have loaded: write a hidden temporary file in `dest`, then rename it over
/// the target. A rename swaps the directory entry; the old file's inode (and any mapping of it)
/// is untouched, whereas copying over it in place can crash a process that has it mapped.
pub fn install(library: &Path, dest: &Path) -> anyhow::Result<PathBuf> {
    let name = library
        .file_name()
        .with_context(|| format!("{} has no file name", library.display()))?;
    std::fs::create_dir_all(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    let target = dest.join(name);
    let temp = dest.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    std::fs::copy(library, &temp)
        .with_context(|| format!("cannot copy {} to {}", library.display(), temp.display()))?;
    std::fs::rename(&temp, &target).with_context(|| {
        let _ = std::fs::remove_file(&temp);
        format!("cannot rename {} to {}", temp.display(), target.display())
    })?;
    Ok(target)
}

/// Signs `libraries` with the minisign secret key `key` through `plughost sign` (run with
/// `cargo run`, so built first if need be): the one home of signing, with its password rules
/// (`PLUGHOST_SIGNING_PASSWORD`, else the terminal) and its atomic install of each
/// `LIBRARY.minisig`.
pub fn sign(libraries: &[PathBuf], key: &Path) -> anyhow::Result<()> {
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(workspace_root())
        .args([
            "run",
            "--quiet",
            "-p",
            "plughost-cli",
            "--bin",
            "plughost",
            "--",
            "sign",
        ])
        .arg("--key")
        .arg(key)
        .args(libraries)
        .status()
        .context("cannot run `plughost sign`")?;
    if !status.success() {
        bail!("`plughost sign` failed ({status}): the libraries are installed, unsigned");
    }
    Ok(())
}
