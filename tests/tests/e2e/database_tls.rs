//! A relay on PostgreSQL over TLS: `sslmode=verify-full` with `sslrootcert` (a private CA) in
//! the URL, against a real PostgreSQL with TLS on. Every connection of the relay is encrypted;
//! a relay that cannot verify the server's certificate refuses to start, saying why.

use crate::e2e::tls::make_certs;
use crate::DEADLINE;
use flotilla_tests::harness::{bin, Relay};
use flotilla_tests::pg::PgServer;

/// The relay's connections by whether they use TLS: (with, without).
fn relay_connections(pg: &PgServer) -> (u32, u32) {
    let count = |ssl: &str| -> u32 {
        pg.psql(&format!(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = 'flotilla-relay' AND s.ssl = {ssl}"
        ))
        .parse()
        .unwrap()
    };
    (count("true"), count("false"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_reaches_postgresql_over_verified_tls() {
    let pg = PgServer::start();
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certs(certs.path());
    pg.enable_tls(&cert, &key);
    let url = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        pg.url,
        ca.display()
    );
    let relay = Relay::start_with_env(&[("FLOTILLA_DATABASE_URL", &url)]).await;
    // A write and a read through the API, on the encrypted connections.
    let token = relay.enrollment_token("tier=tls").await;
    assert!(!token.is_empty());
    let (tls, plain) = relay_connections(&pg);
    assert!(tls >= 2, "the relay's pool and its listener use TLS: {tls}");
    assert_eq!(plain, 0, "no connection of the relay is in the clear");

    // Trusting only the system roots, the same server's certificate is refused.
    let dir = tempfile::tempdir().unwrap();
    let strict = format!("{}?sslmode=require", pg.url);
    let out = tokio::time::timeout(
        DEADLINE,
        tokio::process::Command::new(bin("flotilla-relay"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .env("FLOTILLA_DATABASE_URL", &strict)
            .output(),
    )
    .await
    .expect("the relay gives up")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("certificate"), "{stderr}");
    // And a CA file that is not one is named.
    let out = tokio::process::Command::new(bin("flotilla-relay"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env(
            "FLOTILLA_DATABASE_URL",
            format!(
                "{}?sslmode=verify-full&sslrootcert={}",
                pg.url,
                key.display()
            ),
        )
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&key.display().to_string()) && stderr.contains("no PEM certificates"),
        "{stderr}"
    );
}
