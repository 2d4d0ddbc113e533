//! Renders the shell completions and man pages of `flotilla-agent` from its clap definitions
//! (`src/cli.rs`, shared with the binary) for the .deb (scripts/build-release).
//!
//! `cargo run --example flotilla-agent-docs -- OUT_DIR`; the rendering itself is
//! `flotilla_testkit::docs` (shared by the three binaries' examples). An example rather than a
//! subcommand so that clap_complete and clap_mangen (via the testkit, a dev-dependency) are
//! never linked into the binary.

// The generator reads the definitions only, never the parsed values.
#[allow(dead_code)]
#[path = "../src/cli.rs"]
mod cli;

use clap::CommandFactory;

const BIN: &str = "flotilla-agent";

fn main() -> std::process::ExitCode {
    flotilla_testkit::docs::main(BIN, cli::Cli::command())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_and_man_pages_name_every_subcommand() {
        flotilla_testkit::docs::check_every_subcommand(BIN, cli::Cli::command());
    }
}
