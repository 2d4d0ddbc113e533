//! The bytes of published agent builds, in the database (see `store/releases.rs`).
//!
//! `release_chunks` holds each build as [`CHUNK_BYTES`] pieces in order (`seq` from 0), so
//! every relay on a shared database can serve every build, and a relay's backup, restore and
//! `migrate` carry the builds with the rest of its state. The file under
//! `<data_dir>/releases/` stays what downloads stream from: a cache each relay fills from
//! these rows when it lacks it (`crate::releases::materialise`).

use super::super::StoreError;
use super::{params, Conn, ConnExt, Optional, Sql};
use std::io::Read;
use std::path::Path;

/// Migration 16: the builds' bytes.
pub(in crate::store) const SCHEMA: &str = r#"
CREATE TABLE release_chunks (
    version TEXT NOT NULL,
    arch TEXT NOT NULL,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (version, arch, seq),
    FOREIGN KEY (version, arch) REFERENCES releases(version, arch)
);
"#;

/// Size of one stored piece of a build: small enough that a copy of the table (`migrate`
/// reads rows in batches of a few hundred) stays a few tens of MiB in memory.
pub const CHUNK_BYTES: usize = 256 * 1024;

impl Sql {
    /// Replaces the stored bytes of (version, arch) with the file at `path`, read in
    /// [`CHUNK_BYTES`] pieces inside the caller's transaction, which fails (so nothing is
    /// stored) unless what was read has the build's size and SHA-256: the file may have
    /// changed since it was checked. The number of bytes stored.
    pub(in crate::store) fn put_release_chunks(
        tx: &mut dyn Conn,
        version: &str,
        arch: &str,
        path: &Path,
        expected: (u64, &str),
    ) -> Result<u64, StoreError> {
        let unreadable =
            |e: std::io::Error| StoreError::File(format!("cannot read {}: {e}", path.display()));
        let mut file = std::fs::File::open(path).map_err(unreadable)?;
        tx.execute(
            "DELETE FROM release_chunks WHERE version = ?1 AND arch = ?2",
            params![version, arch],
        )?;
        let mut buf = vec![0u8; CHUNK_BYTES];
        let mut total = 0u64;
        let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
        for seq in 0i64.. {
            let mut filled = 0;
            while filled < CHUNK_BYTES {
                match file.read(&mut buf[filled..]).map_err(unreadable)? {
                    0 => break,
                    n => filled += n,
                }
            }
            if filled == 0 {
                break;
            }
            tx.execute(
                "INSERT INTO release_chunks (version, arch, seq, data) VALUES (?1, ?2, ?3, ?4)",
                params![version, arch, seq, buf[..filled].to_vec()],
            )?;
            sha.update(&buf[..filled]);
            total += filled as u64;
            if filled < CHUNK_BYTES || total > expected.0 {
                break;
            }
        }
        let sha256 = hex::encode(sha.finish().as_ref());
        if (total, sha256.as_str()) != expected {
            return Err(StoreError::File(format!(
                "{} no longer holds flotilla-agent {version} for {arch}: {total} bytes with sha256 \
                 {sha256}, not {} bytes with sha256 {}",
                path.display(),
                expected.0,
                expected.1
            )));
        }
        Ok(total)
    }

    /// Piece `seq` of (version, arch)'s stored bytes; None past the last one (or when none
    /// are stored).
    pub(in crate::store) fn release_chunk(
        tx: &mut dyn Conn,
        version: &str,
        arch: &str,
        seq: u32,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(tx
            .query_row(
                "SELECT data FROM release_chunks WHERE version = ?1 AND arch = ?2 AND seq = ?3",
                params![version, arch, i64::from(seq)],
                |r| r.get::<Vec<u8>>(0),
            )
            .optional()?)
    }

    /// Published builds whose bytes are not in the database (published before it kept them),
    /// as (version, arch).
    pub(in crate::store) fn releases_without_chunks(
        tx: &mut dyn Conn,
    ) -> Result<Vec<(String, String)>, StoreError> {
        Ok(tx.query_map(
            "SELECT r.version, r.arch FROM releases r WHERE NOT EXISTS \
             (SELECT 1 FROM release_chunks c WHERE c.version = r.version AND c.arch = r.arch) \
             ORDER BY r.version, r.arch",
            params![],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?)
    }
}
