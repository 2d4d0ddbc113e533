//! Optional encryption of dumps to age recipients (X25519 `age1...` public keys), so an operator
//! decrypts a backup with the standard tool: `age -d -i key.txt dump.zst.age | zstd -d`.
//!
//! The agent holds public keys, never identities: it reads an encrypted backup back only in a
//! restore given an identity file by the operator (`decrypt.rs`); verify checks the checksum
//! only, and a restore without an identity file is refused. Everything
//! here is synchronous and runs on the blocking thread that writes the dump; memory stays at
//! one age chunk (64 KiB) whatever the dump's size.

use std::fmt;
use std::io::{self, Read, Write};
use std::path::Path;

/// Largest recipients file read: a recipient line is 62 bytes, so this is thousands of them,
/// and it keeps a wrong path (a log, a device) from being read whole.
const MAX_RECIPIENTS_FILE_BYTES: u64 = 1024 * 1024;

/// Parsed age recipients; empty means "do not encrypt".
#[derive(Clone, Default)]
pub struct Recipients(Vec<age::x25519::Recipient>);

impl Recipients {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl fmt::Debug for Recipients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|r| r.to_string()))
            .finish()
    }
}

flotilla_shared::message_error!(
    /// An age recipient line that is not a recipient (the message names the line).
    pub InvalidRecipients
);

/// Parses recipients, one per entry. Blank entries and `#` comments are ignored; leading and
/// trailing whitespace is not part of a key. The error names the bad entry (1-based) and its
/// text, so a typo in agent.toml or the recipients file is found without guessing.
pub fn parse_recipients(lines: &[String]) -> Result<Recipients, InvalidRecipients> {
    parse_recipients_message(lines).map_err(InvalidRecipients)
}

fn parse_recipients_message(lines: &[String]) -> Result<Recipients, String> {
    let mut recipients: Vec<age::x25519::Recipient> = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let text = line.trim();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        let recipient = text.parse::<age::x25519::Recipient>().map_err(|reason| {
            let line = index + 1;
            if text.starts_with("AGE-SECRET-KEY-") {
                // Never echo a private key into logs and command results.
                format!(
                    "age recipient line {line}: this is a private key (AGE-SECRET-KEY-...); \
                     configure its public key (age1...), printed by `age-keygen -y`"
                )
            } else if text.starts_with("ssh-") {
                format!(
                    "age recipient line {line} ({text:?}): ssh keys are not supported, only \
                     X25519 recipients (age1...)"
                )
            } else {
                format!("age recipient line {line} ({text:?}): {reason}")
            }
        })?;
        // A key listed twice (in agent.toml and in the file) would only add a stanza.
        if !recipients
            .iter()
            .any(|r| r.to_string() == recipient.to_string())
        {
            recipients.push(recipient);
        }
    }
    Ok(Recipients(recipients))
}

flotilla_shared::message_error!(
    /// An age recipients file that cannot be read or holds no recipient.
    pub RecipientsFileError
);

/// Reads a recipients file: the lines that are neither blank nor `#` comments, trimmed, ready
/// for [`parse_recipients`]. Blocking: call it from a blocking thread.
pub fn read_recipients_file(path: &Path) -> Result<Vec<String>, RecipientsFileError> {
    read_recipients_file_message(path).map_err(RecipientsFileError)
}

fn read_recipients_file_message(path: &Path) -> Result<Vec<String>, String> {
    let file = std::fs::File::open(path)
        .map_err(|e| format!("cannot read age recipients file {}: {e}", path.display()))?;
    let mut text = String::new();
    file.take(MAX_RECIPIENTS_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read age recipients file {}: {e}", path.display()))?;
    if text.len() as u64 > MAX_RECIPIENTS_FILE_BYTES {
        return Err(format!(
            "age recipients file {} is larger than {MAX_RECIPIENTS_FILE_BYTES} bytes",
            path.display()
        ));
    }
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

/// A writer that encrypts what is written to it into `W` (the age binary format).
///
/// [`EncryptingWriter::finish`] must be called after the last write: it writes the final,
/// authenticated chunk without which the file does not decrypt. Dropping the writer without
/// it leaves a truncated file that `age -d` rejects, never a silently short one.
pub struct EncryptingWriter<W: Write> {
    inner: age::stream::StreamWriter<W>,
}

impl<W: Write> EncryptingWriter<W> {
    /// Writes the last chunk, flushes and returns the inner writer (to fsync it, for example).
    pub fn finish(self) -> io::Result<W> {
        let mut out = self.inner.finish()?;
        out.flush()?;
        Ok(out)
    }
}

impl<W: Write> Write for EncryptingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

flotilla_shared::message_error!(
    /// Why age encryption could not start.
    pub EncryptError
);

/// Starts an age file to `recipients` in `out` (writes its header). Fails when there are no
/// recipients: an unencrypted dump must be the caller's explicit choice, not an accident.
pub fn encrypt_to<W: Write>(
    recipients: &Recipients,
    out: W,
) -> Result<EncryptingWriter<W>, EncryptError> {
    encrypt_to_message::<W>(recipients, out).map_err(EncryptError)
}

fn encrypt_to_message<W: Write>(
    recipients: &Recipients,
    out: W,
) -> Result<EncryptingWriter<W>, String> {
    if recipients.is_empty() {
        return Err("no age recipients to encrypt to".into());
    }
    let encryptor =
        age::Encryptor::with_recipients(recipients.0.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| format!("cannot encrypt to the age recipients: {e}"))?;
    let inner = encryptor
        .wrap_output(out)
        .map_err(|e| format!("cannot write the age header: {e}"))?;
    Ok(EncryptingWriter { inner })
}

#[cfg(test)]
mod tests {
    use super::*;
    use age::secrecy::ExposeSecret;
    use std::io::Read;

    /// Deterministic, incompressible-looking bytes (xorshift), so tests need no rand crate.
    fn pseudo_random_bytes(len: usize, mut seed: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            out.extend_from_slice(&seed.to_le_bytes());
        }
        out.truncate(len);
        out
    }

    fn encrypt(recipients: &Recipients, plaintext: &[u8]) -> Vec<u8> {
        let mut writer = encrypt_to(recipients, Vec::new()).unwrap();
        // Odd-sized writes cross the 64 KiB chunk boundaries at arbitrary offsets.
        for piece in plaintext.chunks(100_003) {
            writer.write_all(piece).unwrap();
        }
        writer.finish().unwrap()
    }

    #[test]
    fn encrypted_stream_decrypts_with_the_age_crate_and_the_age_tool() {
        let identity = age::x25519::Identity::generate();
        let recipients = parse_recipients(&[identity.to_public().to_string()]).unwrap();
        let plaintext = pseudo_random_bytes(3 * 1024 * 1024 + 17, 0x9e37_79b9_7f4a_7c15);
        let ciphertext = encrypt(&recipients, &plaintext);
        assert!(ciphertext.starts_with(b"age-encryption.org/v1\n"));

        let decryptor = age::Decryptor::new(&ciphertext[..]).unwrap();
        let mut reader = decryptor
            .decrypt(std::iter::once(&identity as &dyn age::Identity))
            .unwrap();
        let mut decrypted = Vec::new();
        reader.read_to_end(&mut decrypted).unwrap();
        assert!(decrypted == plaintext, "age crate decryption differs");

        // The promise to operators is the standard tool, so check it with the real binary.
        let tool = Path::new("/usr/bin/age");
        assert!(
            tool.exists(),
            "/usr/bin/age is missing: install the Debian package age (apt-get install age); \
             scripts/test installs it"
        );
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("key.txt");
        std::fs::write(
            &key_file,
            format!("{}\n", identity.to_string().expose_secret()),
        )
        .unwrap();
        let encrypted_file = dir.path().join("dump.age");
        std::fs::write(&encrypted_file, &ciphertext).unwrap();
        let output = std::process::Command::new(tool)
            .arg("-d")
            .arg("-i")
            .arg(&key_file)
            .arg(&encrypted_file)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "age -d failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.stdout == plaintext, "age tool decryption differs");
    }

    #[test]
    fn every_recipient_can_decrypt_and_an_empty_stream_is_valid() {
        let first = age::x25519::Identity::generate();
        let second = age::x25519::Identity::generate();
        let recipients = parse_recipients(&[
            "# operators".to_string(),
            format!("  {}  ", first.to_public()),
            String::new(),
            second.to_public().to_string(),
            first.to_public().to_string(),
        ])
        .unwrap();
        assert_eq!(
            recipients.len(),
            2,
            "blank, comment and duplicate lines are skipped"
        );
        let ciphertext = encrypt(&recipients, b"");
        for identity in [&first, &second] {
            let mut reader = age::Decryptor::new(&ciphertext[..])
                .unwrap()
                .decrypt(std::iter::once(identity as &dyn age::Identity))
                .unwrap();
            let mut decrypted = Vec::new();
            reader.read_to_end(&mut decrypted).unwrap();
            assert!(decrypted.is_empty());
        }
    }

    #[test]
    fn a_stream_without_finish_does_not_decrypt() {
        let identity = age::x25519::Identity::generate();
        let recipients = parse_recipients(&[identity.to_public().to_string()]).unwrap();
        let mut out = Vec::new();
        {
            let mut writer = encrypt_to(&recipients, &mut out).unwrap();
            writer.write_all(&pseudo_random_bytes(200_000, 7)).unwrap();
        }
        let mut reader = age::Decryptor::new(&out[..])
            .unwrap()
            .decrypt(std::iter::once(&identity as &dyn age::Identity))
            .unwrap();
        let mut decrypted = Vec::new();
        assert!(reader.read_to_end(&mut decrypted).is_err());
    }

    #[test]
    fn bad_recipients_are_named() {
        let good = age::x25519::Identity::generate().to_public().to_string();
        let e = parse_recipients(&[good.clone(), "age1notakey".into()]).unwrap_err();
        assert!(e.contains("line 2") && e.contains("age1notakey"), "{e}");

        let secret = age::x25519::Identity::generate();
        let secret = secret.to_string().expose_secret().to_string();
        let e = parse_recipients(std::slice::from_ref(&secret)).unwrap_err();
        assert!(e.contains("private key") && !e.contains(&secret), "{e}");

        let e = parse_recipients(&["ssh-ed25519 AAAA".into()]).unwrap_err();
        assert!(e.contains("ssh keys are not supported"), "{e}");

        let none = parse_recipients(&["# nobody".into(), "".into()]).unwrap();
        assert!(none.is_empty());
        let e = encrypt_to(&none, Vec::new()).err().unwrap();
        assert!(e.contains("no age recipients"), "{e}");
    }

    #[test]
    fn recipients_file_skips_comments_and_names_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let key = age::x25519::Identity::generate().to_public().to_string();
        let path = dir.path().join("recipients.txt");
        std::fs::write(&path, format!("# backup key\n\n  {key}\r\n")).unwrap();
        assert_eq!(read_recipients_file(&path).unwrap(), vec![key]);

        let missing = dir.path().join("missing.txt");
        let e = read_recipients_file(&missing).unwrap_err();
        assert!(e.contains("missing.txt"), "{e}");
    }
}
