//! Renders the shell completions and man pages of `flotilla-agent` from its clap definitions
//! (`src/cli.rs`, shared with the binary) for the .deb (scripts/build-release):
//!
//! `cargo run -p flotilla-agent --example flotilla-agent-docs -- OUT_DIR` writes
//! `OUT_DIR/completions/{bash/flotilla-agent, zsh/_flotilla-agent, fish/flotilla-agent.fish}`
//! and `OUT_DIR/man/flotilla-agent*.1` (one page per command and subcommand, uncompressed).
//! `FLOTILLA_DOCS_VERSION` overrides the version the pages show.
//!
//! An example rather than a subcommand so that clap_complete and clap_mangen (dev-dependencies)
//! are never linked into the size-sensitive agent binary.

// The generator reads the definitions only, never the parsed values.
#[allow(dead_code)]
#[path = "../src/cli.rs"]
mod cli;

use clap::CommandFactory;
use clap_complete::Shell;
use std::path::Path;

const BIN: &str = "flotilla-agent";

fn main() -> std::process::ExitCode {
    let Some(out) = std::env::args_os().nth(1) else {
        eprintln!("usage: {BIN}-docs OUT_DIR");
        return std::process::ExitCode::from(2);
    };
    let mut cmd = cli::Cli::command();
    // The version the packages carry (scripts/build-release --version), which the binaries get
    // by being stamped after the build; this example is not stamped.
    if let Ok(version) = std::env::var("FLOTILLA_DOCS_VERSION") {
        cmd = cmd.version(&*version.leak());
    }
    match write_docs(cmd, BIN, Path::new(&out)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The completions for bash, zsh and fish under the names their Debian directories expect, and
/// the man pages.
fn write_docs(mut cmd: clap::Command, bin: &str, out: &Path) -> Result<(), String> {
    let completions = [
        (Shell::Bash, "bash", bin.to_string()),
        (Shell::Zsh, "zsh", format!("_{bin}")),
        (Shell::Fish, "fish", format!("{bin}.fish")),
    ];
    for (shell, dir, file) in completions {
        let dir = out.join("completions").join(dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let path = dir.join(file);
        let mut f = std::fs::File::create(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        clap_complete::generate(shell, &mut cmd, bin, &mut f);
    }
    let man = out.join("man");
    std::fs::create_dir_all(&man).map_err(|e| format!("cannot create {}: {e}", man.display()))?;
    clap_mangen::generate_to(cmd, &man)
        .map_err(|e| format!("cannot write the man pages to {}: {e}", man.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each rendering names every subcommand the binary has (help aside), and every subcommand
    /// has its own page.
    #[test]
    fn completions_and_man_pages_name_every_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        write_docs(cli::Cli::command(), BIN, dir.path()).unwrap();
        let read = |p: &str| std::fs::read_to_string(dir.path().join(p)).unwrap();
        let rendered = [
            read(&format!("completions/bash/{BIN}")),
            read(&format!("completions/zsh/_{BIN}")),
            read(&format!("completions/fish/{BIN}.fish")),
            // roff writes a hyphen as `\-`.
            read(&format!("man/{BIN}.1")).replace("\\-", "-"),
        ];
        let subcommands: Vec<String> = cli::Cli::command()
            .get_subcommands()
            .map(|s| s.get_name().to_string())
            .collect();
        assert!(subcommands.len() >= 2, "{subcommands:?}");
        for name in &subcommands {
            for text in &rendered {
                assert!(text.contains(name.as_str()), "{name} missing from:\n{text}");
            }
            let page = dir.path().join(format!("man/{BIN}-{name}.1"));
            assert!(page.is_file(), "no man page {}", page.display());
        }
    }
}
