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

impl PgServer {
    /// Turns TLS on, with `cert` and `key` (PEM) copied into the data directory as the
    /// server's certificate and key (owned like the data directory, the key private).
    pub fn enable_tls(&self, cert: &std::path::Path, key: &std::path::Path) {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let data = self.dir.path().join("pg");
        let owner = std::fs::metadata(&data).expect("the data directory");
        for (from, name, mode) in [(cert, "server.crt", 0o644), (key, "server.key", 0o600)] {
            let to = data.join(name);
            std::fs::copy(from, &to).expect("copy into the data directory");
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode)).unwrap();
            std::os::unix::fs::chown(&to, Some(owner.uid()), Some(owner.gid()))
                .expect("chown to the server's user");
        }
        self.psql("ALTER SYSTEM SET ssl = on");
        self.psql("SELECT pg_reload_conf()");
        flotilla_testkit::wait::Poller::new(std::time::Duration::from_secs(10))
            .poll_blocking(|| (self.psql("SHOW ssl") == "on").then_some(()))
            .expect("PostgreSQL did not turn TLS on");
    }

    /// Runs `sql` with `psql` on the server's `postgres` database (stopping at the first
    /// error); what it printed, unaligned and without headers. Panics naming the statement
    /// when it fails.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new("psql")
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &self.url,
                "-c",
                sql,
            ])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
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
