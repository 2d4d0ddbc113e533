//! `flotilla`, the operator CLI: parses the command line and hands it to `flotilla_cli`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    flotilla_cli::main(flotilla_cli::Cli::parse())
}
