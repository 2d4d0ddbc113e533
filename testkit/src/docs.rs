//! Shell completions and man pages of a binary, rendered from its clap definitions: what the
//! `*-docs` example of each binary crate (agent, relay, cli) runs for the .debs
//! (scripts/build-release, scripts/check-packaging) and checks in its test. One copy here, so
//! the three examples are a few lines each and render the same way.
//!
//! `write_docs` writes `OUT/completions/{bash/BIN, zsh/_BIN, fish/BIN.fish}` and
//! `OUT/man/BIN*.1` (one page per command and subcommand, uncompressed).

use clap_complete::Shell;
use std::path::Path;
use std::process::ExitCode;

/// The example's `main`: `OUT_DIR` from the first argument; `FLOTILLA_DOCS_VERSION` overrides
/// the version the pages show (the packages' version, which the binaries get by being stamped
/// after the build; the example is not stamped).
pub fn main(bin: &str, mut cmd: clap::Command) -> ExitCode {
    let Some(out) = std::env::args_os().nth(1) else {
        eprintln!("usage: {bin}-docs OUT_DIR");
        return ExitCode::from(2);
    };
    if let Ok(version) = std::env::var("FLOTILLA_DOCS_VERSION") {
        cmd = cmd.version(&*version.leak());
    }
    match write_docs(cmd, bin, Path::new(&out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The completions for bash, zsh and fish under the names their Debian directories expect, and
/// the man pages.
pub fn write_docs(mut cmd: clap::Command, bin: &str, out: &Path) -> Result<(), String> {
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

/// The examples' test: each rendering names every subcommand the binary has (help aside), and
/// every subcommand has its own page. Panics with what is missing.
pub fn check_every_subcommand(bin: &str, cmd: clap::Command) {
    let dir = tempfile::tempdir().unwrap();
    write_docs(cmd.clone(), bin, dir.path()).unwrap();
    let read = |p: &str| std::fs::read_to_string(dir.path().join(p)).unwrap();
    let rendered = [
        read(&format!("completions/bash/{bin}")),
        read(&format!("completions/zsh/_{bin}")),
        read(&format!("completions/fish/{bin}.fish")),
        // roff writes a hyphen as `\-`.
        read(&format!("man/{bin}.1")).replace("\\-", "-"),
    ];
    let subcommands: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    assert!(subcommands.len() >= 2, "{subcommands:?}");
    for name in &subcommands {
        for text in &rendered {
            assert!(text.contains(name.as_str()), "{name} missing from:\n{text}");
        }
        let page = dir.path().join(format!("man/{bin}-{name}.1"));
        assert!(page.is_file(), "no man page {}", page.display());
    }
}
