//! `flotilla`, the operator CLI: parses the command line and hands it to `flotilla_relay::cli`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    flotilla_relay::cli::main(flotilla_relay::cli::Cli::parse())
}
