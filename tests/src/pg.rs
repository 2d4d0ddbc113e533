//! A throwaway PostgreSQL server for the tests of several relays on one database: Debian's
//! server binaries through `scripts/pg-cluster`, on a free loopback port, stopped on drop. A
//! test that needs it fails (never skips) when the server cannot start.

use std::path::PathBuf;
use std::process::Command;

pub struct PgServer {
    /// Holds the cluster's data directory (`<dir>/pg`).
    dir: tempfile::TempDir,
    /// `postgres://postgres@127.0.0.1:PORT/postgres` (trust authentication on loopback).
    pub url: String,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/pg-cluster")
}

impl PgServer {
    pub fn start() -> PgServer {
        let dir = tempfile::Builder::new()
            .prefix("flotilla-pg-")
            .tempdir()
            .expect("tempdir");
        // The server may run as the `postgres` user: it must reach its data directory.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod the PostgreSQL tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(dir.path().join("pg"))
            .arg(port.to_string())
            .output()
            .expect("run scripts/pg-cluster");
        assert!(
            out.status.success(),
            "cannot start PostgreSQL (is Debian's postgresql installed?): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
        PgServer { dir, url }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(self.dir.path().join("pg"))
            .output();
    }
}
