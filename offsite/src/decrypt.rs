//! Decryption of age-encrypted backups at restore time (issue 17 §3): the operator gives an
//! identity file (`age-keygen` output, `AGE-SECRET-KEY-1...` lines) on the agent's host with
//! the restore; it is read for that restore only, held in memory while it runs and never
//! written, logged or sent. Only X25519 identities, the kind the agent encrypts to.

use std::fmt;
use std::io::{self, Read};
use std::path::Path;

/// An identity file is a few lines; a larger file is the wrong one.
const MAX_IDENTITY_FILE_BYTES: u64 = 64 * 1024;

/// The X25519 identities of one identity file.
#[derive(Clone)]
pub struct Identities(Vec<age::x25519::Identity>);

impl fmt::Debug for Identities {
    // Never the keys themselves.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identities({} keys)", self.0.len())
    }
}

flotilla_shared::message_error!(
    /// An identity file that cannot be read or holds no usable identity (the message names
    /// the file and the line, never a key).
    pub IdentityFileError
);

/// Reads an identity file; blank lines and `#` comments are skipped. Blocking.
pub fn read_identity_file(path: &Path) -> Result<Identities, IdentityFileError> {
    read_message(path).map_err(IdentityFileError)
}

fn read_message(path: &Path) -> Result<Identities, String> {
    let shown = path.display();
    let file = std::fs::File::open(path)
        .map_err(|e| format!("cannot read the age identity file {shown}: {e}"))?;
    let mut text = String::new();
    file.take(MAX_IDENTITY_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read the age identity file {shown}: {e}"))?;
    if text.len() as u64 > MAX_IDENTITY_FILE_BYTES {
        return Err(format!(
            "{shown} is larger than {MAX_IDENTITY_FILE_BYTES} bytes: not an age identity file"
        ));
    }
    parse(&text).map_err(|e| format!("age identity file {shown}: {e}"))
}

fn parse(text: &str) -> Result<Identities, String> {
    let mut out = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        if l.starts_with("age1") {
            return Err(format!(
                "line {line_no} is a public key (recipient); give the file with the private \
                 key (AGE-SECRET-KEY-1..., made by age-keygen)"
            ));
        }
        let identity = l
            .parse::<age::x25519::Identity>()
            .map_err(|_| format!("line {line_no} is not an age X25519 identity"))?;
        out.push(identity);
    }
    if out.is_empty() {
        return Err("no identity (AGE-SECRET-KEY-1...) in the file".into());
    }
    Ok(Identities(out))
}

/// A reader of the plaintext of age-encrypted `input`. Fails at once (before any plaintext)
/// when none of the identities opens the file.
pub fn decrypting<R: Read>(ids: &Identities, input: R) -> io::Result<impl Read> {
    let decryptor = age::Decryptor::new(input).map_err(|e| io::Error::other(describe(e)))?;
    decryptor
        .decrypt(ids.0.iter().map(|i| i as &dyn age::Identity))
        .map_err(|e| io::Error::other(describe(e)))
}

/// Checks that the identities open the file at `path` (reads only its header). Blocking.
pub fn check(ids: &Identities, path: &Path) -> io::Result<()> {
    let file = std::fs::File::open(path)?;
    decrypting(ids, io::BufReader::new(file)).map(|_| ())
}

fn describe(e: age::DecryptError) -> String {
    match e {
        age::DecryptError::NoMatchingKeys => {
            "the identity file holds no key this backup was encrypted to".into()
        }
        e => format!("cannot decrypt the backup: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn identities_round_trip_and_mismatches_are_named() {
        let identity = age::x25519::Identity::generate();
        let other = age::x25519::Identity::generate();
        let recipients =
            super::super::encrypt::parse_recipients(&[identity.to_public().to_string()]).unwrap();
        let mut ciphertext = Vec::new();
        {
            let mut w = super::super::encrypt::encrypt_to(&recipients, &mut ciphertext).unwrap();
            w.write_all(b"PGDMP and the rest").unwrap();
            w.finish().unwrap();
        }
        use age::secrecy::ExposeSecret;
        let text = format!(
            "# created: now\n# public key: {}\n{}\n",
            identity.to_public(),
            identity.to_string().expose_secret()
        );
        let ids = parse(&text).unwrap();
        assert_eq!(format!("{ids:?}"), "Identities(1 keys)");
        let mut plain = Vec::new();
        decrypting(&ids, &ciphertext[..])
            .unwrap()
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain, b"PGDMP and the rest");
        let wrong = parse(other.to_string().expose_secret()).unwrap();
        let e = decrypting(&wrong, &ciphertext[..]).err().unwrap();
        assert!(e.to_string().contains("no key this backup"), "{e}");
        assert!(parse("").unwrap_err().contains("no identity"));
        assert!(parse(&identity.to_public().to_string())
            .unwrap_err()
            .contains("public key"));
        let e = parse("AGE-SECRET-KEY-1NOTAKEY\n").unwrap_err();
        assert!(e.contains("line 1") && !e.contains("NOTAKEY"), "{e}");
    }
}
