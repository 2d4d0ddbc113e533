//! A line-oriented scanner of compose files: finds `services: <name>: image:` and the byte
//! span of its value, so that an edit replaces exactly those bytes and leaves every comment,
//! quote, blank line and indentation as it was. It understands the block style compose files
//! are written in; anything it cannot be sure of (flow mappings, aliases, merge keys, block
//! scalars, tabs, escapes in quoted values) is refused with a message naming the line, never
//! guessed at.

use std::ops::Range;

/// Where a service's image is written in one compose file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSpan {
    /// The value as written (inside its quotes, if any).
    pub value: String,
    /// Byte range of `value` in the file's text.
    pub span: Range<usize>,
    /// 1-based line of the `image:` key.
    pub line: usize,
}

/// What the scanner found for one service in one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// The file does not mention the service (an override file may not).
    NoService,
    /// The service is there but sets no `image:` in this file.
    NoImage,
    Image(ImageSpan),
}

flotilla_shared::message_error!(
    /// A compose file the scanner cannot read safely (the message names the line).
    pub YamlError
);

struct Line<'a> {
    /// 1-based.
    number: usize,
    /// Byte offset of the line's first byte in the text.
    start: usize,
    indent: usize,
    /// The line after its indentation, without the line break.
    content: &'a str,
}

fn content_lines(text: &str) -> Result<Vec<Line<'_>>, YamlError> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, raw) in text.split_inclusive('\n').enumerate() {
        let line_start = start;
        start += raw.len();
        let line = raw.trim_end_matches(['\n', '\r']);
        let trimmed = line.trim_start_matches(' ');
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if trimmed.starts_with('\t') {
            return Err(YamlError(format!(
                "line {}: indented with a tab, which YAML does not allow",
                i + 1
            )));
        }
        if line_start == 0 && trimmed.trim_end() == "---" {
            continue;
        }
        if line.starts_with("---") || line.trim_end() == "..." {
            return Err(YamlError(format!(
                "line {}: a second YAML document; only single-document compose files are edited",
                i + 1
            )));
        }
        out.push(Line {
            number: i + 1,
            start: line_start,
            indent: line.len() - trimmed.len(),
            content: trimmed,
        });
    }
    Ok(out)
}

/// `key: rest` → (key, byte offset of `rest` in `content`). None when the line is no mapping
/// key (a list item, a scalar continuation).
fn split_key(content: &str) -> Option<(String, usize)> {
    let (key, after) = match content.chars().next()? {
        q @ ('"' | '\'') => {
            let end = content[1..].find(q)? + 1;
            (content[1..end].to_string(), end + 1)
        }
        '-' if content.len() == 1 || content[1..].starts_with(' ') => return None,
        _ => {
            let mut at = None;
            for (i, c) in content.char_indices() {
                if c == ':' && content[i + 1..].chars().next().is_none_or(|n| n == ' ') {
                    at = Some(i);
                    break;
                }
                if c == '#' && i > 0 && content[..i].ends_with(' ') {
                    return None;
                }
            }
            let i = at?;
            (content[..i].trim_end().to_string(), i)
        }
    };
    let rest = content[after..].strip_prefix(':')?;
    if !(rest.is_empty() || rest.starts_with(' ')) {
        return None;
    }
    Some((key, after + 1))
}

/// The rest of a key line with its comment and surrounding blanks removed.
fn rest_without_comment(rest: &str) -> &str {
    let rest = rest.trim_start();
    if rest.starts_with('#') {
        return "";
    }
    match rest.find(" #") {
        Some(i) => rest[..i].trim_end(),
        None => rest.trim_end(),
    }
}

/// The lines of the block under `lines[at]` (deeper indented, up to the next line at most as
/// deep).
fn block<'a, 'b>(lines: &'b [Line<'a>], at: usize) -> &'b [Line<'a>] {
    let indent = lines[at].indent;
    let end = lines[at + 1..]
        .iter()
        .position(|l| l.indent <= indent)
        .map(|p| at + 1 + p)
        .unwrap_or(lines.len());
    &lines[at + 1..end]
}

/// Finds the `image:` of `service` in `text` (one compose file).
pub fn find_image(text: &str, service: &str) -> Result<Found, YamlError> {
    let lines = content_lines(text)?;
    let services = lines
        .iter()
        .position(|l| l.indent == 0 && split_key(l.content).is_some_and(|(k, _)| k == "services"));
    let Some(services) = services else {
        return Ok(Found::NoService);
    };
    let (_, off) = split_key(lines[services].content).unwrap_or_default();
    if !rest_without_comment(&lines[services].content[off..]).is_empty() {
        return Err(YamlError(format!(
            "line {}: `services:` is not written as a block mapping",
            lines[services].number
        )));
    }
    let under = block(&lines, services);
    let Some(first) = under.first() else {
        return Ok(Found::NoService);
    };
    let service_indent = first.indent;
    let mut found = None;
    for (i, l) in under.iter().enumerate() {
        if l.indent != service_indent {
            continue;
        }
        if split_key(l.content).is_some_and(|(k, _)| k == service) {
            if found.is_some() {
                return Err(YamlError(format!(
                    "line {}: service {service} is defined twice",
                    l.number
                )));
            }
            found = Some(i);
        }
    }
    let Some(at) = found else {
        return Ok(Found::NoService);
    };
    let line = &under[at];
    let (_, off) = split_key(line.content).unwrap_or_default();
    let rest = rest_without_comment(&line.content[off..]);
    let anchor_only =
        rest.starts_with('&') && !rest.contains(' ') && rest.len() > 1 && !rest.contains('*');
    if !rest.is_empty() && !anchor_only {
        return Err(YamlError(format!(
            "line {}: service {service} is written as {rest:?} (flow style, an alias or a tag), \
             which is not edited automatically",
            line.number
        )));
    }
    let body = block(under, at);
    let Some(first) = body.first() else {
        return Ok(Found::NoImage);
    };
    let key_indent = first.indent;
    let mut image = None;
    let mut merge = None;
    for l in body.iter().filter(|l| l.indent == key_indent) {
        match split_key(l.content) {
            Some((k, off)) if k == "image" => {
                if image.is_some() {
                    return Err(YamlError(format!(
                        "line {}: service {service} has two image keys",
                        l.number
                    )));
                }
                image = Some(value_span(l, off, service)?);
            }
            Some((k, _)) if k == "<<" => merge = Some(l.number),
            _ => {}
        }
    }
    match (image, merge) {
        (Some(span), _) => Ok(Found::Image(span)),
        (None, Some(n)) => Err(YamlError(format!(
            "line {n}: service {service} takes its keys from a YAML merge key (`<<`); its image \
             is not edited automatically"
        ))),
        (None, None) => Ok(Found::NoImage),
    }
}

/// The value of `image:` on `line` (`off`: where the value part starts in its content).
fn value_span(line: &Line<'_>, off: usize, service: &str) -> Result<ImageSpan, YamlError> {
    let content = line.content;
    let lead = content[off..].len() - content[off..].trim_start().len();
    let v_start = off + lead;
    let v = &content[v_start..];
    let bad = |why: &str| {
        YamlError(format!(
            "line {}: the image of service {service} {why}, which is not edited automatically",
            line.number
        ))
    };
    let (start, end) = match v.chars().next() {
        None | Some('#') => return Err(bad("is empty")),
        Some(q @ ('"' | '\'')) => {
            let close = v[1..].find(q).ok_or_else(|| bad("has no closing quote"))? + 1;
            let inner = &v[1..close];
            if (q == '"' && inner.contains('\\')) || (q == '\'' && v[close + 1..].starts_with('\''))
            {
                return Err(bad("uses escapes in its quotes"));
            }
            let after = v[close + 1..].trim_start();
            if !(after.is_empty() || after.starts_with('#')) {
                return Err(bad("has text after its closing quote"));
            }
            (v_start + 1, v_start + close)
        }
        Some('&' | '*' | '!' | '|' | '>' | '{' | '[' | '@' | '`' | '%') => {
            return Err(bad("is an anchor, alias, tag, block scalar or flow value"))
        }
        Some(_) => {
            let end = v.find(" #").unwrap_or(v.len());
            let value = v[..end].trim_end();
            (v_start, v_start + value.len())
        }
    };
    let value = content[start..end].to_string();
    if value.trim().is_empty() {
        return Err(bad("is empty"));
    }
    let base = line.start + line.indent;
    Ok(ImageSpan {
        value,
        span: base + start..base + end,
        line: line.number,
    })
}

/// `text` with `span` replaced by `with`.
pub fn splice(text: &str, span: &Range<usize>, with: &str) -> String {
    let mut out = String::with_capacity(text.len() + with.len());
    out.push_str(&text[..span.start]);
    out.push_str(with);
    out.push_str(&text[span.end..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(text: &str, service: &str) -> ImageSpan {
        match find_image(text, service).unwrap() {
            Found::Image(s) => {
                assert_eq!(&text[s.span.clone()], s.value);
                s
            }
            other => panic!("expected an image, got {other:?}"),
        }
    }

    const FILE: &str = "# the shop\nversion: \"3.8\"\nservices:\n  db:\n    image: postgres:15 # pinned\n    environment:\n      image: not-this\n  web:   # the app\n\n    # the image line follows\n    image: \"registry.example.com/shop:v1\"\n    ports: [\"80:80\"]\n  'worker':\n    image: 'registry.example.com/shop:v1'\n  job: &job\n    build: .\nvolumes:\n  web:\n    image: nope\n";

    #[test]
    fn finds_each_services_image_and_edits_only_its_value() {
        let db = image(FILE, "db");
        assert_eq!(db.value, "postgres:15");
        assert_eq!(db.line, 5);
        let web = image(FILE, "web");
        assert_eq!(web.value, "registry.example.com/shop:v1");
        let worker = image(FILE, "worker");
        assert_eq!(worker.line, 14);
        assert_eq!(find_image(FILE, "job").unwrap(), Found::NoImage);
        assert_eq!(find_image(FILE, "missing").unwrap(), Found::NoService);
        let edited = splice(FILE, &web.span, "registry.example.com/shop:v2");
        assert_eq!(
            edited,
            FILE.replace(
                "image: \"registry.example.com/shop:v1\"\n    ports",
                "image: \"registry.example.com/shop:v2\"\n    ports"
            )
        );
        let db2 = splice(FILE, &db.span, "postgres:16");
        assert!(db2.contains("    image: postgres:16 # pinned\n"));
    }

    #[test]
    fn crlf_and_nested_indentation_are_kept() {
        let text = "services:\r\n    web:\r\n        image: app:v1\r\n";
        let s = image(text, "web");
        assert_eq!(
            splice(text, &s.span, "app:v2"),
            "services:\r\n    web:\r\n        image: app:v2\r\n"
        );
    }

    #[test]
    fn what_cannot_be_edited_safely_is_refused_with_the_line() {
        let cases = [
            ("services:\n  web: {image: a}\n", "line 2"),
            ("services:\n  web: *base\n", "line 2"),
            (
                "services:\n  web:\n    <<: *base\n    ports: []\n",
                "merge key",
            ),
            ("services:\n  web:\n    image: *img\n", "alias"),
            ("services:\n  web:\n    image: \"a\\u0041\"\n", "escapes"),
            ("services:\n  web:\n    image: >\n      a\n", "block scalar"),
            ("services:\n\tweb:\n", "tab"),
            (
                "services:\n  web:\n    image: a\n    image: b\n",
                "two image keys",
            ),
            ("services:\n  web:\n    image: \"a\n", "closing quote"),
            (
                "services:\n  web:\n    image: a\n---\nservices: {}\n",
                "second YAML document",
            ),
            ("services: {web: {image: a}}\n", "block mapping"),
        ];
        for (text, why) in cases {
            let e = find_image(text, "web").unwrap_err().to_string();
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }

    #[test]
    fn a_merge_key_beside_an_image_is_fine_and_anchors_on_the_service_too() {
        let text = "services:\n  web: &web\n    <<: *base\n    image: app:v1\n";
        assert_eq!(image(text, "web").value, "app:v1");
    }
}
