//! Certificate files on the host: the configured paths, directories and globs expanded to
//! files, and each file read (bounded) into a [`HostCertificate`] or a warning. Blocking:
//! runs on the blocking pool.

use chrono::Utc;
use flotilla_shared::heartbeat::{CertificateSourceKind, HostCertificate};
use std::io::Read;
use std::path::{Path, PathBuf};

/// A certificate file larger than this is not a certificate (a chain is a few KiB).
const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// File extensions read from a directory given in `paths`.
const CERT_EXTENSIONS: [&str; 3] = ["pem", "crt", "cer"];

/// One thing to report: a file to read, or a pattern that could not be expanded.
#[derive(Debug, PartialEq)]
pub(super) enum Target {
    File(PathBuf),
    Problem { source: String, warning: String },
}

/// The files (and problems) of the configured patterns, deduplicated, in order, at most
/// `limit`. `quiet` patterns (the certbot default) say nothing when their directory is
/// missing: a host without certbot has no certificates there.
pub(super) fn targets(patterns: &[(String, bool)], limit: usize) -> Vec<Target> {
    let mut out: Vec<Target> = Vec::new();
    let push = |t: Target, out: &mut Vec<Target>| {
        if out.len() < limit && !out.contains(&t) {
            out.push(t);
        }
    };
    for (pattern, quiet) in patterns {
        let problem = |warning: String| Target::Problem {
            source: pattern.clone(),
            warning,
        };
        let path = Path::new(pattern);
        if !path.is_absolute() {
            push(problem("not an absolute path".into()), &mut out);
            continue;
        }
        if pattern.contains(['*', '?']) {
            match expand_glob(pattern) {
                Ok(files) => {
                    for f in files {
                        push(Target::File(f), &mut out);
                    }
                }
                Err((e, dir)) if e.kind() == std::io::ErrorKind::NotFound && *quiet => {
                    let _ = dir;
                }
                Err((e, dir)) => push(problem(list_error(&dir, &e)), &mut out),
            }
            continue;
        }
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => match certificate_files_in(path) {
                Ok(files) => {
                    for f in files {
                        push(Target::File(f), &mut out);
                    }
                }
                Err(e) => push(problem(list_error(path, &e)), &mut out),
            },
            Ok(_) => push(Target::File(path.to_path_buf()), &mut out),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && *quiet => {}
            Err(e) => push(problem(read_error(&e)), &mut out),
        }
    }
    out
}

fn list_error(dir: &Path, e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        format!(
            "cannot list {}: permission denied (give the agent's user read access, e.g. \
             `setfacl -R -m u:flotilla-agent:rX` on it)",
            dir.display()
        )
    } else {
        format!("cannot list {}: {e}", dir.display())
    }
}

fn read_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => {
            "cannot read: permission denied (give the agent's user read access)".into()
        }
        _ => format!("cannot read: {e}"),
    }
}

/// Regular files with a certificate extension directly in `dir`, sorted.
fn certificate_files_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| CERT_EXTENSIONS.contains(&x.to_ascii_lowercase().as_str()))
                && p.is_file()
        })
        .collect();
    files.sort();
    Ok(files)
}

/// `*` and `?` within path segments (no `**`); hidden names only match a pattern that
/// starts with `.`. The error names the directory that could not be listed.
fn expand_glob(pattern: &str) -> Result<Vec<PathBuf>, (std::io::Error, PathBuf)> {
    let mut current = vec![PathBuf::from("/")];
    let segments: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        let mut next = Vec::new();
        for dir in &current {
            if !segment.contains(['*', '?']) {
                let p = dir.join(segment);
                if p.exists() {
                    next.push(p);
                } else if current.len() == 1 && !last {
                    // The fixed part of the pattern is missing: say which.
                    return Err((std::io::ErrorKind::NotFound.into(), p));
                }
                continue;
            }
            let entries = match std::fs::read_dir(dir) {
                Ok(e) => e,
                Err(e) => return Err((e, dir.clone())),
            };
            let mut names: Vec<String> = entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| {
                    (!n.starts_with('.') || segment.starts_with('.')) && matches(segment, n)
                })
                .collect();
            names.sort();
            next.extend(names.into_iter().map(|n| dir.join(n)));
        }
        current = next;
    }
    Ok(current.into_iter().filter(|p| p.is_file()).collect())
}

/// Whether `name` matches `pattern` (`*` any run, `?` one character).
fn matches(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Reads one file: its first certificate (the leaf of a chain), PEM or DER. None for a file
/// that holds only a private key (a directory of keys and certificates).
pub(super) fn read(path: &Path) -> Option<HostCertificate> {
    let mut report = HostCertificate {
        kind: CertificateSourceKind::File,
        source: path.display().to_string(),
        subject: None,
        sans: Vec::new(),
        issuer: None,
        not_after: None,
        warning: None,
        checked_at: Utc::now(),
    };
    match load(path) {
        Ok(Some(der)) => match flotilla_shared::x509::parse_certificate(&der) {
            Ok(facts) => {
                report.subject = facts.subject_cn;
                report.sans = facts.sans;
                report.issuer = facts.issuer;
                report.not_after = Some(facts.not_after);
            }
            Err(e) => report.warning = Some(e.0),
        },
        Ok(None) => return None,
        Err(warning) => report.warning = Some(warning),
    }
    Some(report)
}

/// The DER of the file's first certificate; None for a private-key-only file.
fn load(path: &Path) -> Result<Option<Vec<u8>>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    // A FIFO or device named like a certificate must not block the reading: checked before
    // opening, and opened non-blocking (no effect on regular files) in case it was swapped.
    let meta = std::fs::metadata(path).map_err(|e| read_error(&e))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(|e| read_error(&e))?;
    let meta = file.metadata().map_err(|e| read_error(&e))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "{} bytes: larger than any certificate ({MAX_FILE_BYTES} bytes at most)",
            meta.len()
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_FILE_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| read_error(&e))?;
    let text = String::from_utf8_lossy(&bytes);
    if text.contains("-----BEGIN CERTIFICATE-----") {
        let first = rustls_pemfile::certs(&mut bytes.as_slice()).next();
        return match first {
            Some(Ok(der)) => Ok(Some(der.as_ref().to_vec())),
            Some(Err(e)) => Err(format!("invalid PEM certificate: {e}")),
            None => Err("invalid PEM certificate block".into()),
        };
    }
    if text.contains("PRIVATE KEY-----") {
        return Ok(None);
    }
    if bytes.first() == Some(&0x30) {
        return Ok(Some(bytes));
    }
    if bytes.is_empty() {
        return Err("the file is empty".into());
    }
    Err("no certificate in the file (neither a PEM CERTIFICATE block nor DER)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_within_a_segment() {
        assert!(matches("*", "shop.example.com"));
        assert!(matches("fullchain.pem", "fullchain.pem"));
        assert!(matches("*.pem", "a.pem"));
        assert!(matches("cert?.pem", "cert1.pem"));
        assert!(!matches("cert?.pem", "cert12.pem"));
        assert!(matches("*chain*", "fullchain.pem"));
        assert!(!matches("*.crt", "a.pem"));
    }

    #[test]
    fn patterns_expand_to_files_and_problems() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("live");
        for site in ["a.example", "b.example"] {
            std::fs::create_dir_all(live.join(site)).unwrap();
            std::fs::write(live.join(site).join("fullchain.pem"), "x").unwrap();
            std::fs::write(live.join(site).join("privkey.pem"), "x").unwrap();
        }
        std::fs::create_dir_all(live.join(".hidden")).unwrap();
        std::fs::write(live.join(".hidden/fullchain.pem"), "x").unwrap();
        std::fs::write(live.join("README"), "x").unwrap();
        let glob = format!("{}/*/fullchain.pem", live.display());
        let missing = format!("{}/nope/*/fullchain.pem", dir.path().display());
        let got = targets(
            &[
                (glob.clone(), false),
                (glob, false),
                (live.join("a.example").display().to_string(), false),
                (missing.clone(), true),
                (missing.clone(), false),
                ("relative/x.pem".into(), false),
                (dir.path().join("gone.pem").display().to_string(), false),
            ],
            100,
        );
        let files: Vec<String> = got
            .iter()
            .filter_map(|t| match t {
                Target::File(p) => Some(p.strip_prefix(&live).unwrap().display().to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(
            files,
            [
                "a.example/fullchain.pem",
                "b.example/fullchain.pem",
                "a.example/privkey.pem"
            ]
        );
        let problems: Vec<&str> = got
            .iter()
            .filter_map(|t| match t {
                Target::Problem { warning, .. } => Some(warning.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("cannot list"), "{problems:?}");
        assert_eq!(problems[1], "not an absolute path");
        assert_eq!(problems[2], "no such file");
        assert_eq!(targets(&[(missing, false)], 0).len(), 0, "the limit holds");
    }

    #[test]
    fn garbage_keys_and_empty_files_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        std::fs::write(p("garbage.pem"), "hello, this is not a certificate\n").unwrap();
        std::fs::write(p("empty.pem"), "").unwrap();
        std::fs::write(
            p("key.pem"),
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        std::fs::write(
            p("bad.pem"),
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        std::fs::write(p("der.crt"), [0x30, 0x03, 0x02, 0x01, 0x00]).unwrap();
        let warning = |n: &str| read(&p(n)).unwrap().warning.unwrap();
        assert!(warning("garbage.pem").contains("no certificate"));
        assert!(warning("empty.pem").contains("empty"));
        assert!(read(&p("key.pem")).is_none());
        assert!(
            warning("bad.pem").contains("certificate"),
            "{}",
            warning("bad.pem")
        );
        assert!(
            warning("der.crt").contains("X.509"),
            "{}",
            warning("der.crt")
        );
        assert!(warning("missing.pem").contains("no such file"));
        let fifo = p("fifo.pem");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        assert_eq!(warning("fifo.pem"), "not a regular file");
    }
}
