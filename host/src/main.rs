//! The `plughost` command. See `plughost --help`.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
