//! `cargo xtask <chore>`: see `cargo xtask --help`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
    /// plugins folder (atomically: temp file + rename), where `plughost run` finds it.
    BuildPlugins {
        /// Build with optimisations.
        #[arg(long)]
        release: bool,
        /// Install into this folder instead of plugins/.
        #[arg(long, value_name = "DIR")]
        dest: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Chore::BuildPlugins { release, dest } => {
            let dest = dest.unwrap_or_else(|| xtask::workspace_root().join("plugins"));
            let packages = xtask::packages_under("plugins")?;
            for library in xtask::build_libraries(&packages, release)? {
                let installed = xtask::install(&library.path, &dest)?;
                println!("installed {} -> {}", library.package, installed.display());
            }
            Ok(())
        }
    }
}
