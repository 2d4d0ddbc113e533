//! The XML of S3 answers and requests, by hand: the handful of elements backups read (a
//! ListObjectsV2 page, an upload id, an error's code and message) found by tag, with entity
//! escaping both ways. No XML crate: the answers are small, flat and machine-written.

use super::Error;
use crate::destination::RemoteObject;

/// One page of ListObjectsV2: the objects and the continuation token, if truncated.
pub(super) fn parse_list(xml: &str) -> Result<(Vec<RemoteObject>, Option<String>), Error> {
    let mut objects = Vec::new();
    for contents in xml_elements(xml, "Contents") {
        let key = xml_value(contents, "Key")
            .ok_or_else(|| Error::protocol("a listed object has no Key"))?;
        let size = xml_value(contents, "Size")
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| Error::protocol("a listed object has no Size"))?;
        objects.push(RemoteObject {
            location: xml_unescape(key),
            size,
        });
    }
    let truncated = xml_value(xml, "IsTruncated").is_some_and(|t| t.trim() == "true");
    let next = match truncated {
        false => None,
        true => Some(
            xml_value(xml, "NextContinuationToken")
                .map(xml_unescape)
                .ok_or_else(|| Error::protocol("a truncated listing has no continuation token"))?,
        ),
    };
    Ok((objects, next))
}

/// The text of every `<tag>...</tag>` element, in order. Enough for S3's answers, whose
/// elements of interest carry no attributes and do not nest in themselves.
pub(super) fn xml_elements<'x>(xml: &'x str, tag: &str) -> Vec<&'x str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut found = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else { break };
        found.push(&after[..end]);
        rest = &after[end + close.len()..];
    }
    found
}

pub(super) fn xml_value<'x>(xml: &'x str, tag: &str) -> Option<&'x str> {
    xml_elements(xml, tag).into_iter().next()
}

pub(super) fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

pub(super) fn xml_unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let Some(semi) = rest.find(';') else { break };
        let entity = &rest[1..semi];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .map(|hex| u32::from_str_radix(hex, 16).ok())
                .unwrap_or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_parse_with_escapes_and_continuation() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>bk</Name>
<Prefix>a/</Prefix><KeyCount>2</KeyCount><IsTruncated>true</IsTruncated>
<NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=</NextContinuationToken>
<Contents><Key>a/x&amp;y.zst</Key><Size>10</Size><ETag>&quot;e&quot;</ETag></Contents>
<Contents><Key>a/&#x41;&#66;</Key><Size>0</Size></Contents></ListBucketResult>"#;
        let (objects, next) = parse_list(xml).unwrap();
        assert_eq!(
            objects,
            vec![
                RemoteObject {
                    location: "a/x&y.zst".into(),
                    size: 10
                },
                RemoteObject {
                    location: "a/AB".into(),
                    size: 0
                },
            ]
        );
        assert_eq!(
            next.as_deref(),
            Some("1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=")
        );
        let (objects, next) =
            parse_list("<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>")
                .unwrap();
        assert!(objects.is_empty() && next.is_none());
        assert_eq!(xml_unescape("a &bogus; &amp"), "a &bogus; &amp");
        assert_eq!(xml_escape("\"e<&>\""), "&quot;e&lt;&amp;&gt;&quot;");
    }
}
