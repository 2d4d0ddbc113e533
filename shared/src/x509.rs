//! A small DER reader for the few facts of an X.509 certificate that expiry checks need:
//! the subject's and issuer's common names, the subjectAltName DNS names and IP addresses,
//! and notAfter. No signature or trust decision is made here; the agent (host certificates)
//! reads certificates it does not necessarily trust, to tell when they expire.
//!
//! Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signature }
//! TBSCertificate ::= SEQUENCE { [0] version OPTIONAL, serialNumber, signature, issuer Name,
//! validity SEQUENCE { notBefore, notAfter }, subject Name, subjectPublicKeyInfo,
//! [1] issuerUniqueID OPTIONAL, [2] subjectUniqueID OPTIONAL, [3] extensions OPTIONAL }
//!
//! Every read is bounds-checked: hostile bytes give an error naming the part that did not
//! parse, never a panic.

use chrono::{DateTime, NaiveDate, Utc};

/// What an expiry check reports of one certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertificateFacts {
    pub subject_cn: Option<String>,
    /// The issuer's common name, else its organisation.
    pub issuer: Option<String>,
    /// subjectAltName dNSName entries, then iPAddress entries (dotted or RFC 5952 text).
    pub sans: Vec<String>,
    pub not_before: Option<DateTime<Utc>>,
    pub not_after: DateTime<Utc>,
}

crate::message_error!(
    /// Bytes that are not a DER X.509 certificate (the message names the part that failed).
    pub BadCertificate
);

const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
const OID_O: &[u8] = &[0x55, 0x04, 0x0a];
const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];

/// Reads a DER certificate.
pub fn parse_certificate(der: &[u8]) -> Result<CertificateFacts, BadCertificate> {
    parse_message(der).map_err(BadCertificate)
}

fn parse_message(der: &[u8]) -> Result<CertificateFacts, String> {
    let bad = |what: &str| format!("not an X.509 certificate: cannot parse its {what}");
    let cert = expect(der, 0x30).ok_or_else(|| bad("outer sequence"))?;
    let tbs = expect(cert, 0x30).ok_or_else(|| bad("tbsCertificate"))?;
    let mut rest = tbs;
    let (tag, _, after) = read_tlv(rest).ok_or_else(|| bad("version"))?;
    if tag == 0xa0 {
        rest = after;
    }
    let (_, _, after) = read_tlv(rest).ok_or_else(|| bad("serial number"))?;
    let (_, _, after) = read_tlv(after).ok_or_else(|| bad("signature algorithm"))?;
    let (tag, issuer, after) = read_tlv(after).ok_or_else(|| bad("issuer"))?;
    if tag != 0x30 {
        return Err(bad("issuer"));
    }
    let (tag, validity, after) = read_tlv(after).ok_or_else(|| bad("validity"))?;
    if tag != 0x30 {
        return Err(bad("validity"));
    }
    let (tag, before, v_rest) = read_tlv(validity).ok_or_else(|| bad("notBefore"))?;
    let not_before = parse_time(tag, before);
    let (tag, time, _) = read_tlv(v_rest).ok_or_else(|| bad("notAfter"))?;
    let not_after = parse_time(tag, time).ok_or_else(|| bad("notAfter time"))?;
    let (tag, subject, mut after) = read_tlv(after).ok_or_else(|| bad("subject"))?;
    if tag != 0x30 {
        return Err(bad("subject"));
    }
    let mut sans = Vec::new();
    // subjectPublicKeyInfo, then the optional unique ids and extensions.
    if let Some((_, _, a)) = read_tlv(after) {
        after = a;
        while let Some((tag, value, a)) = read_tlv(after) {
            after = a;
            if tag == 0xa3 {
                sans = subject_alt_names(value).ok_or_else(|| bad("extensions"))?;
            }
        }
    }
    let issuer_name = name_attribute(issuer, OID_CN).or_else(|| name_attribute(issuer, OID_O));
    Ok(CertificateFacts {
        subject_cn: name_attribute(subject, OID_CN),
        issuer: issuer_name,
        sans,
        not_before,
        not_after,
    })
}

/// The value of a TLV with `tag` at the start of `b`.
fn expect(b: &[u8], tag: u8) -> Option<&[u8]> {
    let (t, v, _) = read_tlv(b)?;
    (t == tag).then_some(v)
}

/// One DER tag-length-value: (tag, value, what follows). Single-byte tags only (all that
/// X.509 uses); lengths up to 4 bytes.
fn read_tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let first = *b.get(1)? as usize;
    let (len, header) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    if end > b.len() {
        return None;
    }
    Some((tag, &b[header..end], &b[end..]))
}

/// The first attribute `oid` of a Name (SEQUENCE OF SET OF SEQUENCE { OID, value }), as text.
fn name_attribute(name: &[u8], oid: &[u8]) -> Option<String> {
    let mut rdns = name;
    while let Some((_, set, after)) = read_tlv(rdns) {
        rdns = after;
        let mut atvs = set;
        while let Some((_, atv, after)) = read_tlv(atvs) {
            atvs = after;
            let (tag, id, rest) = read_tlv(atv)?;
            if tag == 0x06 && id == oid {
                let (tag, value, _) = read_tlv(rest)?;
                return string_value(tag, value);
            }
        }
    }
    None
}

/// UTF8String, PrintableString, IA5String, T61String (read as Latin-1), BMPString.
fn string_value(tag: u8, v: &[u8]) -> Option<String> {
    let text = match tag {
        0x0c | 0x13 | 0x16 => String::from_utf8_lossy(v).into_owned(),
        0x14 => v.iter().map(|&b| b as char).collect(),
        0x1e => {
            let units: Vec<u16> = v
                .chunks(2)
                .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))
                .collect();
            String::from_utf16_lossy(&units)
        }
        _ => return None,
    };
    Some(clean(&text))
}

/// Control characters out (agents' text reaches logs and alert messages), at most 255 chars.
fn clean(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(255).collect()
}

/// The subjectAltName names of an `[3] { SEQUENCE OF Extension }` block. None when the block
/// does not parse; an empty list when there is no subjectAltName.
fn subject_alt_names(block: &[u8]) -> Option<Vec<String>> {
    let mut exts = expect(block, 0x30)?;
    let mut out = Vec::new();
    while let Some((_, ext, after)) = read_tlv(exts) {
        exts = after;
        let (tag, oid, mut rest) = read_tlv(ext)?;
        if tag != 0x06 || oid != OID_SAN {
            continue;
        }
        // critical BOOLEAN DEFAULT FALSE, then extnValue OCTET STRING.
        let (mut tag, mut value, after) = read_tlv(rest)?;
        if tag == 0x01 {
            rest = after;
            (tag, value, _) = read_tlv(rest)?;
        }
        if tag != 0x04 {
            return None;
        }
        let mut names = expect(value, 0x30)?;
        let mut ips = Vec::new();
        while let Some((tag, v, after)) = read_tlv(names) {
            names = after;
            match tag {
                0x82 => out.push(clean(&String::from_utf8_lossy(v))),
                0x87 => {
                    if let Some(ip) = ip_text(v) {
                        ips.push(ip);
                    }
                }
                _ => {}
            }
        }
        out.extend(ips);
        out.truncate(100);
    }
    Some(out)
}

fn ip_text(v: &[u8]) -> Option<String> {
    match v.len() {
        4 => Some(std::net::Ipv4Addr::new(v[0], v[1], v[2], v[3]).to_string()),
        16 => {
            let b: [u8; 16] = v.try_into().ok()?;
            Some(std::net::Ipv6Addr::from(b).to_string())
        }
        _ => None,
    }
}

/// UTCTime (`YYMMDDHHMMSSZ`, years 1950-2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn parse_time(tag: u8, v: &[u8]) -> Option<DateTime<Utc>> {
    let s = std::str::from_utf8(v).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 => {
            let yy: i32 = s.get(..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, s.get(2..)?)
        }
        0x18 => (s.get(..4)?.parse().ok()?, s.get(4..)?),
        _ => return None,
    };
    if rest.len() != 10 || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let num = |r: std::ops::Range<usize>| rest.get(r)?.parse::<u32>().ok();
    let date = NaiveDate::from_ymd_opt(year, num(0..2)?, num(2..4)?)?;
    let t = date.and_hms_opt(num(4..6)?, num(6..8)?, num(8..10)?)?;
    Some(t.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let n = value.len();
        if n < 0x80 {
            out.push(n as u8);
        } else if n < 0x100 {
            out.extend([0x81, n as u8]);
        } else {
            out.extend([0x82, (n >> 8) as u8, n as u8]);
        }
        out.extend_from_slice(value);
        out
    }

    fn name(oid: &[u8], tag: u8, value: &str) -> Vec<u8> {
        let atv = tlv(0x30, &[tlv(0x06, oid), tlv(tag, value.as_bytes())].concat());
        tlv(0x30, &tlv(0x31, &atv))
    }

    /// A certificate built by hand, field by field, as the layout above says.
    fn certificate(with_san: bool, after: &[u8]) -> Vec<u8> {
        let mut tbs = Vec::new();
        tbs.extend(tlv(0xa0, &tlv(0x02, &[2])));
        tbs.extend(tlv(0x02, &[0x01, 0x02]));
        tbs.extend(tlv(0x30, &tlv(0x06, &[0x2a, 0x86, 0x48])));
        tbs.extend(name(OID_O, 0x13, "Let's Encrypt"));
        tbs.extend(tlv(
            0x30,
            &[tlv(0x17, b"260101000000Z"), after.to_vec()].concat(),
        ));
        tbs.extend(name(OID_CN, 0x0c, "shop.example.com"));
        tbs.extend(tlv(0x30, &tlv(0x03, &[0, 1, 2])));
        if with_san {
            let names = tlv(
                0x30,
                &[
                    tlv(0x82, b"shop.example.com"),
                    tlv(0x87, &[127, 0, 0, 1]),
                    tlv(0x82, b"*.shop.example.com"),
                ]
                .concat(),
            );
            let ext = tlv(
                0x30,
                &[tlv(0x06, OID_SAN), tlv(0x01, &[0]), tlv(0x04, &names)].concat(),
            );
            let other = tlv(
                0x30,
                &[tlv(0x06, &[0x55, 0x1d, 0x13]), tlv(0x04, &[0x30, 0])].concat(),
            );
            tbs.extend(tlv(0xa3, &tlv(0x30, &[other, ext].concat())));
        }
        let cert = [
            tlv(0x30, &tbs),
            tlv(0x30, &tlv(0x06, &[0x2a])),
            tlv(0x03, &[0, 9, 9]),
        ]
        .concat();
        tlv(0x30, &cert)
    }

    #[test]
    fn reads_names_and_validity() {
        let der = certificate(true, &tlv(0x18, b"20990228123456Z"));
        let f = parse_certificate(&der).unwrap();
        assert_eq!(f.subject_cn.as_deref(), Some("shop.example.com"));
        assert_eq!(f.issuer.as_deref(), Some("Let's Encrypt"));
        assert_eq!(
            f.sans,
            vec!["shop.example.com", "*.shop.example.com", "127.0.0.1"]
        );
        assert_eq!(f.not_after.to_rfc3339(), "2099-02-28T12:34:56+00:00");
        assert_eq!(
            f.not_before.unwrap().to_rfc3339(),
            "2026-01-01T00:00:00+00:00"
        );
        let f = parse_certificate(&certificate(false, &tlv(0x17, b"300101000000Z"))).unwrap();
        assert!(f.sans.is_empty());
        assert_eq!(f.not_after.to_rfc3339(), "2030-01-01T00:00:00+00:00");
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        let good = certificate(true, &tlv(0x18, b"20990228123456Z"));
        // Every truncation and every single-byte corruption: an error or a result, no panic.
        for cut in 0..good.len() {
            let _ = parse_certificate(&good[..cut]);
        }
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] ^= 0xff;
            let _ = parse_certificate(&b);
        }
        assert!(parse_certificate(b"").is_err());
        assert!(parse_certificate(b"hello world").is_err());
        let bad_time = certificate(false, &tlv(0x18, b"2099022812345xZ"));
        let e = parse_certificate(&bad_time).unwrap_err();
        assert!(e.contains("notAfter"), "{e}");
    }

    #[test]
    fn times_parse() {
        let t = parse_time(0x17, b"260101120000Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-01-01T12:00:00+00:00");
        let t = parse_time(0x17, b"491231235959Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2049-12-31T23:59:59+00:00");
        assert!(parse_time(0x17, b"2601011200Z").is_none());
        assert!(parse_time(0x18, b"20261301000000Z").is_none());
    }
}
