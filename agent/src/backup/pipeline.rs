//! The byte paths of a backup, on blocking threads: dump chunks → zstd → (age) → SHA-256 →
//! `*.partial` → fsync, and back again for verify and restore. Memory stays bounded whatever
//! the database's size: chunks arrive through a bounded channel and every stage streams.

use bytes::Bytes;
use ring::digest::{Context as Digest, SHA256};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Chunks in flight between the exec stream and the compressor (each up to ~32 KiB as the
/// engine frames them, or `READ_CHUNK` on the way back).
pub const CHANNEL_CHUNKS: usize = 16;
/// Size of the chunks read back from a file for a restore or a listing.
const READ_CHUNK: usize = 128 * 1024;
/// How much of the dump's start and end is kept for the completeness check.
const HEAD_BYTES: usize = 64;
const TAIL_BYTES: usize = 64 * 1024;

/// `redis-cli --rdb -` (7.0) copies the 40-character end mark of a diskless transfer to its
/// output after the RDB; the sink holds back that many bytes and drops them when they are one.
const REDIS_EOF_MARK_BYTES: usize = 40;

/// Whether `held` (the stream's last bytes) is a diskless-transfer end mark after a complete
/// RDB (`...` 0xFF + 8-byte checksum, then 40 hex characters).
fn is_redis_eof_mark(written_tail: &[u8], held: &[u8]) -> bool {
    held.len() == REDIS_EOF_MARK_BYTES
        && held.iter().all(|b| b.is_ascii_hexdigit())
        && written_tail.len() >= 9
        && written_tail[written_tail.len() - 9] == 0xFF
}

/// What the sink wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// Bytes of the dump before compression.
    pub raw_bytes: u64,
    /// Bytes of the file.
    pub stored_bytes: u64,
    /// Hex SHA-256 of the file.
    pub sha256: String,
    pub head: Vec<u8>,
    pub tail: Vec<u8>,
}

/// Counts and hashes what passes through to the file.
struct Hashing<W> {
    inner: W,
    digest: Digest,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.digest.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Keeps the first and last bytes of a stream.
#[derive(Default)]
pub struct Ends {
    pub head: Vec<u8>,
    pub tail: Vec<u8>,
    pub bytes: u64,
}

impl Ends {
    pub fn push(&mut self, chunk: &[u8]) {
        self.bytes += chunk.len() as u64;
        if self.head.len() < HEAD_BYTES {
            let take = (HEAD_BYTES - self.head.len()).min(chunk.len());
            self.head.extend_from_slice(&chunk[..take]);
        }
        if chunk.len() >= TAIL_BYTES {
            self.tail.clear();
            self.tail
                .extend_from_slice(&chunk[chunk.len() - TAIL_BYTES..]);
        } else {
            self.tail.extend_from_slice(chunk);
            if self.tail.len() > TAIL_BYTES {
                let cut = self.tail.len() - TAIL_BYTES;
                self.tail.drain(..cut);
            }
        }
    }
}

/// The compressor, optionally encrypting what it writes.
enum Chain {
    Plain(zstd::stream::write::Encoder<'static, Hashing<BufWriter<File>>>),
    Encrypted(
        zstd::stream::write::Encoder<
            'static,
            super::encrypt::EncryptingWriter<Hashing<BufWriter<File>>>,
        >,
    ),
}

impl Chain {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Chain::Plain(w) => w.write_all(buf),
            Chain::Encrypted(w) => w.write_all(buf),
        }
    }

    fn finish(self) -> io::Result<Hashing<BufWriter<File>>> {
        match self {
            Chain::Plain(w) => w.finish(),
            Chain::Encrypted(w) => w.finish()?.finish(),
        }
    }
}

/// Starts the blocking writer of one dump: returns the sender to feed chunks into and the
/// task that ends with what was written once the sender is dropped. On error the task stops
/// taking chunks (the sender's `send` fails, which ends the dump) and removes the partial file.
pub fn spawn_sink(
    partial: PathBuf,
    level: i32,
    recipients: Option<super::encrypt::Recipients>,
    strip_redis_eof_mark: bool,
) -> (mpsc::Sender<Bytes>, JoinHandle<io::Result<Written>>) {
    let hold_back = if strip_redis_eof_mark {
        REDIS_EOF_MARK_BYTES
    } else {
        0
    };
    let (tx, mut rx) = mpsc::channel::<Bytes>(CHANNEL_CHUNKS);
    let task = tokio::task::spawn_blocking(move || {
        let result = (|| {
            let file = create_new(&partial)?;
            let hashing = Hashing {
                inner: BufWriter::with_capacity(256 * 1024, file),
                digest: Digest::new(&SHA256),
                bytes: 0,
            };
            let mut chain = match &recipients {
                None => Chain::Plain(zstd::stream::write::Encoder::new(hashing, level)?),
                Some(r) => Chain::Encrypted(zstd::stream::write::Encoder::new(
                    super::encrypt::encrypt_to(r, hashing).map_err(io::Error::other)?,
                    level,
                )?),
            };
            let mut ends = Ends::default();
            // The last `hold_back` bytes stay here until the end decides what they are.
            let mut held: Vec<u8> = Vec::new();
            while let Some(chunk) = rx.blocking_recv() {
                if hold_back == 0 {
                    ends.push(&chunk);
                    chain.write_all(&chunk)?;
                    continue;
                }
                held.extend_from_slice(&chunk);
                if held.len() > hold_back {
                    let out: Vec<u8> = held.drain(..held.len() - hold_back).collect();
                    ends.push(&out);
                    chain.write_all(&out)?;
                }
            }
            if !held.is_empty() && !is_redis_eof_mark(&ends.tail, &held) {
                ends.push(&held);
                chain.write_all(&held)?;
            }
            let mut hashing = chain.finish()?;
            hashing.flush()?;
            let stored_bytes = hashing.bytes;
            let sha256 = hex::encode(hashing.digest.finish().as_ref());
            let file = hashing.inner.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            Ok(Written {
                raw_bytes: ends.bytes,
                stored_bytes,
                sha256,
                head: ends.head,
                tail: ends.tail,
            })
        })();
        if result.is_err() {
            rx.close();
            let _ = std::fs::remove_file(&partial);
        }
        result
    });
    (tx, task)
}

fn create_new(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

/// Moves a finished partial file to its name and makes the rename durable.
pub fn commit(partial: &Path, final_path: &Path) -> io::Result<()> {
    std::fs::rename(partial, final_path)?;
    if let Some(dir) = final_path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Writes a small file atomically (manifests).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = create_new(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    commit(&tmp, path)
}

/// Hex SHA-256 and size of a file, read in chunks.
pub fn file_sha256(path: &Path) -> io::Result<(String, u64)> {
    let mut file = BufReader::with_capacity(READ_CHUNK, File::open(path)?);
    let mut digest = Digest::new(&SHA256);
    let mut buf = vec![0u8; READ_CHUNK];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        digest.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hex::encode(digest.finish().as_ref()), total))
}

/// Decompresses a (not encrypted) backup file, handing each chunk to `each`; returns the
/// start, end and size of the dump.
pub fn decompress_each(path: &Path, each: impl FnMut(&[u8]) -> bool) -> io::Result<Ends> {
    decompress_reader(File::open(path)?, each)
}

/// [`decompress_each`] of any reader (a decrypting one, for an encrypted backup).
pub fn decompress_reader<R: Read>(
    input: R,
    mut each: impl FnMut(&[u8]) -> bool,
) -> io::Result<Ends> {
    let mut decoder = zstd::stream::read::Decoder::new(input)?;
    let mut buf = vec![0u8; READ_CHUNK];
    let mut ends = Ends::default();
    loop {
        let n = decoder.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ends.push(&buf[..n]);
        if !each(&buf[..n]) {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the receiving command stopped reading",
            ));
        }
    }
    Ok(ends)
}

/// Starts a blocking reader that decompresses a backup file into chunks for an exec's stdin.
pub fn spawn_source(path: PathBuf) -> (mpsc::Receiver<Bytes>, JoinHandle<io::Result<Ends>>) {
    let (tx, rx) = mpsc::channel::<Bytes>(CHANNEL_CHUNKS);
    let task = tokio::task::spawn_blocking(move || {
        decompress_each(&path, |chunk| {
            tx.blocking_send(Bytes::copy_from_slice(chunk)).is_ok()
        })
    });
    (rx, task)
}

/// [`spawn_source`] that first decrypts with `identities` when given (issue 17 §3: an
/// encrypted backup restored with an identity file).
pub fn spawn_source_with(
    path: PathBuf,
    identities: Option<super::decrypt::Identities>,
) -> (mpsc::Receiver<Bytes>, JoinHandle<io::Result<Ends>>) {
    let Some(ids) = identities else {
        return spawn_source(path);
    };
    let (tx, rx) = mpsc::channel::<Bytes>(CHANNEL_CHUNKS);
    let task = tokio::task::spawn_blocking(move || {
        let file = BufReader::with_capacity(READ_CHUNK, File::open(&path)?);
        let plain = super::decrypt::decrypting(&ids, file)?;
        decompress_reader(plain, |chunk| {
            tx.blocking_send(Bytes::copy_from_slice(chunk)).is_ok()
        })
    });
    (rx, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sink_of(chunks: &[&[u8]], strip: bool) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join("x.partial");
        let (tx, task) = spawn_sink(partial.clone(), 1, None, strip);
        for c in chunks {
            tx.send(Bytes::copy_from_slice(c)).await.unwrap();
        }
        drop(tx);
        let w = task.await.unwrap().unwrap();
        let mut back = Vec::new();
        decompress_each(&partial, |c| {
            back.extend_from_slice(c);
            true
        })
        .unwrap();
        assert_eq!(w.raw_bytes, back.len() as u64);
        back
    }

    #[tokio::test]
    async fn a_redis_end_mark_is_dropped_and_nothing_else() {
        let mut rdb = b"REDIS0010 data".to_vec();
        rdb.push(0xFF);
        rdb.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        let mark = b"edd708702b95cfaec6ccb593fc91e1fe4f87c43a";
        // Split across chunks anywhere.
        let (a, b) = rdb.split_at(5);
        assert_eq!(sink_of(&[a, b, &mark[..10], &mark[10..]], true).await, rdb);
        // Without a mark, everything stays; a short stream stays whole.
        assert_eq!(sink_of(&[&rdb], true).await, rdb);
        assert_eq!(sink_of(&[b"abc"], true).await, b"abc");
        let mut with = rdb.clone();
        with.extend_from_slice(mark);
        assert_eq!(sink_of(&[&with], false).await, with);
    }

    #[test]
    fn ends_keep_head_and_tail() {
        let mut e = Ends::default();
        e.push(b"PGDMP");
        e.push(&vec![7u8; TAIL_BYTES + 10]);
        e.push(b"end");
        assert!(e.head.starts_with(b"PGDMP"));
        assert_eq!(e.head.len(), HEAD_BYTES);
        assert_eq!(e.tail.len(), TAIL_BYTES);
        assert!(e.tail.ends_with(b"\x07end"));
        assert_eq!(e.bytes, 5 + TAIL_BYTES as u64 + 10 + 3);
    }

    #[tokio::test]
    async fn sink_compresses_hashes_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join("x.zst.partial");
        let (tx, task) = spawn_sink(partial.clone(), 3, None, false);
        let mut expected = Vec::new();
        for i in 0..200u32 {
            let chunk = format!("row {i} {}\n", "x".repeat(i as usize)).into_bytes();
            expected.extend_from_slice(&chunk);
            tx.send(Bytes::from(chunk)).await.unwrap();
        }
        drop(tx);
        let written = task.await.unwrap().unwrap();
        assert_eq!(written.raw_bytes, expected.len() as u64);
        let (sha, size) = file_sha256(&partial).unwrap();
        assert_eq!((sha, size), (written.sha256.clone(), written.stored_bytes));
        assert!(written.stored_bytes < written.raw_bytes);
        let final_path = dir.path().join("x.zst");
        commit(&partial, &final_path).unwrap();
        let mut back = Vec::new();
        let ends = decompress_each(&final_path, |c| {
            back.extend_from_slice(c);
            true
        })
        .unwrap();
        assert_eq!(back, expected);
        assert_eq!(ends.bytes, expected.len() as u64);
        assert!(ends.tail.ends_with(b"\n"));
    }
}
