//! Renders the shell completions and man pages of `flotilla` from its clap definitions
//! (`flotilla_cli::Cli`, the type the binary parses) for the .deb (scripts/build-release).
//!
//! `cargo run --example flotilla-docs -- OUT_DIR`; the rendering itself is
//! `flotilla_testkit::docs` (shared by the three binaries' examples). An example rather than a
//! subcommand so that clap_complete and clap_mangen (via the testkit, a dev-dependency) are
//! never linked into the binary.

use clap::CommandFactory;

const BIN: &str = "flotilla";

fn main() -> std::process::ExitCode {
    flotilla_testkit::docs::main(BIN, flotilla_cli::Cli::command())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_and_man_pages_name_every_subcommand() {
        flotilla_testkit::docs::check_every_subcommand(BIN, flotilla_cli::Cli::command());
    }
}
