//! `cargo xtask <chore>`: see `cargo xtask --help`.

use std::path::PathBuf;
use std::time::Instant;

use clap::{Parser, Subcommand};
use xtask::Progress;

/// plughost project chores.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Chore,
}

#[derive(Debug, Subcommand)]
enum Chore {
    /// Build every plugin crate under plugins/ and install each library at the top of the
    /// plugins folder (atomically: temp file + rename), where `plughost run` finds it; with
    /// --sign KEY, each with its signature beside it.
    BuildPlugins {
        /// Build with optimisations.
        #[arg(long)]
        release: bool,
        /// Install into this folder instead of plugins/.
        #[arg(long, value_name = "DIR")]
        dest: Option<PathBuf>,
        /// Sign each library installed with this minisign secret key (from plughost keygen or
        /// minisign -G), through `plughost sign`: LIBRARY.minisig is installed beside it, after
        /// it. An encrypted key's password comes from PLUGHOST_SIGNING_PASSWORD, else is asked
        /// at the terminal once the build is done.
        #[arg(long, value_name = "KEY")]
        sign: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Chore::BuildPlugins {
            release,
            dest,
            sign,
        } => {
            let started = Instant::now();
            if let Some(key) = sign.as_deref().filter(|key| !key.is_file()) {
                anyhow::bail!("{}: no such secret key file", key.display());
            }
            let dest = dest.unwrap_or_else(|| xtask::workspace_root().join("plugins"));
            let packages = xtask::packages_under("plugins")?;
            // Cargo's own lines follow (a first build compiles the dependencies too, and takes
            // minutes): say first what they are for.
            eprintln!(
                "building {} plugin crate(s) ({}) in {} mode; a first build also compiles \
                 their dependencies",
                packages.len(),
                packages.join(", "),
                if release { "release" } else { "debug" }
            );
            let libraries = xtask::build_libraries_with(&packages, release, Progress::Show)?;
            let mut installed = Vec::with_capacity(libraries.len());
            for library in &libraries {
                let target = xtask::install(&library.path, &dest)?;
                println!("installed {} -> {}", library.package, target.display());
                installed.push(target);
            }
            if let Some(key) = &sign {
                xtask::sign(&installed, key)?;
            }
            eprintln!(
                "{} plugin librar{} installed in {} ({:.1} s)",
                libraries.len(),
                if libraries.len() == 1 { "y" } else { "ies" },
                dest.display(),
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
    }
}
