//! The bytes of published builds in the database (`sql/releasefiles.rs`), and the files a relay
//! writes from them (`crate::releases::files`), on both backends.

use super::*;
use crate::releases::{backfill, binary_path, materialise, MaterialiseError};
use crate::store::releases::NewRelease;
use crate::store::sql::releasefiles::CHUNK_BYTES;
use flotilla_shared::release::ReleaseManifest;

/// Bytes that differ from chunk to chunk (a misordered copy would not hash the same).
fn build_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 1000) as u8).collect()
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

fn new_release(version: &str, bytes: &[u8], file: Option<std::path::PathBuf>) -> NewRelease {
    let created_at = now();
    let manifest = ReleaseManifest {
        name: "flotilla-agent".into(),
        version: version.into(),
        arch: "x86_64".into(),
        size: bytes.len() as u64,
        sha256: sha256(bytes),
        created_at,
    }
    .sign(&SigningKey::generate());
    NewRelease {
        file,
        version: version.into(),
        arch: "x86_64".into(),
        size: bytes.len() as u64,
        sha256: sha256(bytes),
        manifest,
        created_at,
        published_by: "admin".into(),
    }
}

async fn stored_bytes(store: &Store, version: &str) -> Vec<u8> {
    let mut all = Vec::new();
    for seq in 0.. {
        match store
            .release_chunk(version.into(), "x86_64".into(), seq)
            .await
            .unwrap()
        {
            Some(chunk) => {
                assert!(chunk.len() <= CHUNK_BYTES);
                all.extend_from_slice(&chunk);
            }
            None => break,
        }
    }
    all
}

#[tokio::test]
async fn a_published_build_keeps_its_bytes_in_the_database_in_order() {
    let store = Store::open_for_test();
    let dir = tempfile::tempdir().unwrap();
    // Two full chunks and a short one; and a build of exactly one chunk.
    for (version, len) in [("1.0.0", 2 * CHUNK_BYTES + 1234), ("1.1.0", CHUNK_BYTES)] {
        let bytes = build_bytes(len);
        let file = dir.path().join(version);
        std::fs::write(&file, &bytes).unwrap();
        let created = store
            .create_release(new_release(version, &bytes, Some(file)))
            .await
            .unwrap();
        assert!(created);
        assert_eq!(stored_bytes(&store, version).await, bytes, "{version}");
    }
    assert!(store.releases_without_bytes().await.unwrap().is_empty());

    // A record without its bytes (published before the database kept them) is listed, and
    // gets them from a file.
    let bytes = build_bytes(1000);
    store
        .create_release(new_release("0.9.0", &bytes, None))
        .await
        .unwrap();
    assert_eq!(
        store.releases_without_bytes().await.unwrap(),
        vec![("0.9.0".to_string(), "x86_64".to_string())]
    );
    let file = dir.path().join("old");
    std::fs::write(&file, b"not these bytes").unwrap();
    let err = store
        .store_release_bytes("0.9.0".into(), "x86_64".into(), file.clone())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no longer holds"), "{err}");
    assert!(stored_bytes(&store, "0.9.0").await.is_empty());
    std::fs::write(&file, &bytes).unwrap();
    let n = store
        .store_release_bytes("0.9.0".into(), "x86_64".into(), file.clone())
        .await
        .unwrap();
    assert_eq!(n, Some(1000));
    assert_eq!(stored_bytes(&store, "0.9.0").await, bytes);
    assert!(store.releases_without_bytes().await.unwrap().is_empty());
    // Stored again: replaced, not appended.
    store
        .store_release_bytes("0.9.0".into(), "x86_64".into(), file.clone())
        .await
        .unwrap();
    assert_eq!(stored_bytes(&store, "0.9.0").await, bytes);

    // No such build: nothing stored; an unreadable file: an error naming it, nothing changed.
    let none = store
        .store_release_bytes("9.9.9".into(), "x86_64".into(), file)
        .await
        .unwrap();
    assert_eq!(none, None);
    let missing = dir.path().join("gone");
    let err = store
        .store_release_bytes("0.9.0".into(), "x86_64".into(), missing.clone())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
    assert_eq!(stored_bytes(&store, "0.9.0").await, bytes);
}

#[tokio::test]
async fn a_relay_without_the_file_writes_it_from_the_database() {
    let store = Store::open_for_test();
    let publisher = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let bytes = build_bytes(CHUNK_BYTES + 77);
    let file = publisher.path().join("build");
    std::fs::write(&file, &bytes).unwrap();
    store
        .create_release(new_release("2.0.0", &bytes, Some(file)))
        .await
        .unwrap();
    let release = store
        .release("2.0.0".into(), "x86_64".into())
        .await
        .unwrap()
        .unwrap();

    // Missing: written, with the exact bytes.
    let path = binary_path(other.path(), "2.0.0", "x86_64");
    assert!(materialise(&store, other.path(), &release).await.unwrap());
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    // Damaged (cut short): rewritten.
    std::fs::write(&path, &bytes[..100]).unwrap();
    assert!(materialise(&store, other.path(), &release).await.unwrap());
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    // No temporary file is left beside it.
    let names: Vec<String> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["flotilla-agent".to_string()]);

    // Bytes in the database that do not match the manifest are refused, and no file appears.
    let wrong = build_bytes(CHUNK_BYTES + 77)
        .into_iter()
        .map(|b| b ^ 1)
        .collect::<Vec<u8>>();
    let wrong_file = publisher.path().join("wrong");
    std::fs::write(&wrong_file, &wrong).unwrap();
    // Bytes that are not the build's are never stored through the store's operations ...
    let err = store
        .store_release_bytes("2.0.0".into(), "x86_64".into(), wrong_file)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no longer holds"), "{err}");
    assert_eq!(stored_bytes(&store, "2.0.0").await, bytes);
    // ... so damage them underneath (a restored or edited database).
    let first = wrong[..CHUNK_BYTES].to_vec();
    store
        .write_unfenced(move |c| {
            Ok(c.execute(
                "UPDATE release_chunks SET data = ?1 WHERE version = '2.0.0' AND seq = 0",
                params![first],
            )?)
        })
        .await
        .unwrap();
    let third = tempfile::tempdir().unwrap();
    let err = materialise(&store, third.path(), &release)
        .await
        .unwrap_err();
    assert!(matches!(err, MaterialiseError::Mismatch { .. }), "{err}");
    assert!(err.to_string().contains(&release.info.sha256), "{err}");
    let dir = binary_path(third.path(), "2.0.0", "x86_64");
    let left: Vec<_> = std::fs::read_dir(dir.parent().unwrap()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");

    // No bytes at all: nothing to write from.
    store
        .create_release(new_release("2.1.0", &bytes, None))
        .await
        .unwrap();
    let bare = store
        .release("2.1.0".into(), "x86_64".into())
        .await
        .unwrap()
        .unwrap();
    assert!(!materialise(&store, third.path(), &bare).await.unwrap());
}

#[tokio::test]
async fn start_up_stores_the_bytes_of_builds_that_were_files_only() {
    let store = Store::open_for_test();
    let data = tempfile::tempdir().unwrap();
    let good = build_bytes(5000);
    let path = binary_path(data.path(), "3.0.0", "x86_64");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &good).unwrap();
    store
        .create_release(new_release("3.0.0", &good, None))
        .await
        .unwrap();
    // A file that does not match its manifest is not stored.
    let damaged = binary_path(data.path(), "3.1.0", "x86_64");
    std::fs::create_dir_all(damaged.parent().unwrap()).unwrap();
    std::fs::write(&damaged, b"not the build").unwrap();
    store
        .create_release(new_release("3.1.0", &good, None))
        .await
        .unwrap();
    // And one with no file at all.
    store
        .create_release(new_release("3.2.0", &good, None))
        .await
        .unwrap();

    let done = backfill(&store, data.path()).await.unwrap();
    assert_eq!(done.stored, 1);
    assert_eq!(
        done.missing,
        vec!["3.1.0 (x86_64)".to_string(), "3.2.0 (x86_64)".to_string()]
    );
    assert_eq!(stored_bytes(&store, "3.0.0").await, good);
    assert!(stored_bytes(&store, "3.1.0").await.is_empty());
    // Nothing left to do the second time but the two it cannot repair.
    let again = backfill(&store, data.path()).await.unwrap();
    assert_eq!(again.stored, 0);
    assert_eq!(again.missing.len(), 2);
}

#[tokio::test]
async fn a_builds_bytes_move_with_the_rest_of_a_sqlite_relay_into_postgresql() {
    let dir = tempfile::tempdir().unwrap();
    let source = Store::open(&dir.path().join("relay.db")).await.unwrap();
    let bytes = build_bytes(CHUNK_BYTES + 4321);
    let file = dir.path().join("build");
    std::fs::write(&file, &bytes).unwrap();
    source
        .create_release(new_release("4.0.0", &bytes, Some(file)))
        .await
        .unwrap();
    let target = Store::open_for_test();
    if !target.is_shared() {
        return; // the copy needs PostgreSQL (see transfer.rs); its refusal is checked there
    }
    let report = source.copy_into(&target).await.unwrap();
    assert!(
        report
            .tables
            .iter()
            .any(|t| t.0 == "release_chunks" && t.1 == 2),
        "{report:?}"
    );
    assert_eq!(stored_bytes(&target, "4.0.0").await, bytes);
    // A relay on the target, with a data directory of its own, serves the build.
    let release = target
        .release("4.0.0".into(), "x86_64".into())
        .await
        .unwrap()
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    assert!(materialise(&target, data.path(), &release).await.unwrap());
    assert_eq!(
        std::fs::read(binary_path(data.path(), "4.0.0", "x86_64")).unwrap(),
        bytes
    );
}
