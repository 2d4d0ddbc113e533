//! Compose's variable interpolation in an `image:` value (`$VAR`, `${VAR}`, `${VAR:-default}`,
//! `${VAR-default}`, `${VAR:?error}`, `${VAR?error}`, `$$`) and the project's `.env` file
//! (`KEY=value`, optional quotes and `export `, `#` comments): enough to resolve what image a
//! service declares, and to say which one variable (its `.env` line, or its default in the
//! compose file) must change so that it declares another.

use std::collections::BTreeMap;
use std::ops::Range;

/// One part of an interpolated value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    Literal(String),
    Var {
        name: String,
        /// `Some((empty_counts_as_unset, text))` for `:-` / `-` defaults.
        default: Option<(bool, String)>,
        /// Byte range of the default's text in the value, when there is one.
        default_span: Option<Range<usize>>,
        /// `:?` / `?`: unset is an error.
        required: bool,
    },
}

flotilla_shared::message_error!(
    /// An interpolation that cannot be resolved or edited (the message says why).
    pub InterpError
);

/// Splits `value` into literals and variables.
pub fn parse(value: &str) -> Result<Vec<Part>, InterpError> {
    let mut parts = Vec::new();
    let mut lit = String::new();
    let b = value.as_bytes();
    let mut i = 0;
    let name_len = |s: &str| {
        s.char_indices()
            .take_while(|(j, c)| {
                c.is_ascii_alphabetic() || *c == '_' || (*j > 0 && c.is_ascii_digit())
            })
            .count()
    };
    while i < b.len() {
        if b[i] != b'$' {
            let c = value[i..].chars().next().unwrap_or_default();
            lit.push(c);
            i += c.len_utf8();
            continue;
        }
        match b.get(i + 1) {
            Some(b'$') => {
                lit.push('$');
                i += 2;
            }
            Some(b'{') => {
                let close = value[i..]
                    .find('}')
                    .map(|c| i + c)
                    .ok_or_else(|| InterpError(format!("{value:?}: `${{` without `}}`")))?;
                let inner = &value[i + 2..close];
                let n = name_len(inner);
                if n == 0 {
                    return Err(InterpError(format!(
                        "{value:?}: `${{{inner}}}` names no variable"
                    )));
                }
                let name = inner[..n].to_string();
                let op = &inner[n..];
                let op_start = i + 2 + n;
                let (default, default_span, required) = if op.is_empty() {
                    (None, None, false)
                } else if let Some(d) = op.strip_prefix(":-") {
                    (
                        Some((true, d.to_string())),
                        Some(op_start + 2..close),
                        false,
                    )
                } else if let Some(d) = op.strip_prefix('-') {
                    (
                        Some((false, d.to_string())),
                        Some(op_start + 1..close),
                        false,
                    )
                } else if op.starts_with(":?") || op.starts_with('?') {
                    (None, None, true)
                } else {
                    return Err(InterpError(format!(
                        "{value:?}: `${{{inner}}}` is not an interpolation compose understands"
                    )));
                };
                if default.as_ref().is_some_and(|(_, d)| d.contains('$')) {
                    return Err(InterpError(format!(
                        "{value:?}: a variable inside a default is not edited automatically"
                    )));
                }
                if !lit.is_empty() {
                    parts.push(Part::Literal(std::mem::take(&mut lit)));
                }
                parts.push(Part::Var {
                    name,
                    default,
                    default_span,
                    required,
                });
                i = close + 1;
            }
            _ => {
                let n = name_len(&value[i + 1..]);
                if n == 0 {
                    return Err(InterpError(format!(
                        "{value:?}: a lone `$` (write `$$` for a dollar sign)"
                    )));
                }
                if !lit.is_empty() {
                    parts.push(Part::Literal(std::mem::take(&mut lit)));
                }
                parts.push(Part::Var {
                    name: value[i + 1..i + 1 + n].to_string(),
                    default: None,
                    default_span: None,
                    required: false,
                });
                i += 1 + n;
            }
        }
    }
    if !lit.is_empty() {
        parts.push(Part::Literal(lit));
    }
    Ok(parts)
}

/// Whether the value interpolates anything.
pub fn has_vars(parts: &[Part]) -> bool {
    parts.iter().any(|p| matches!(p, Part::Var { .. }))
}

/// The value of one part given the variables (`vars`: the `.env` file's).
fn resolve_part(part: &Part, vars: &BTreeMap<String, EnvValue>) -> Result<String, InterpError> {
    match part {
        Part::Literal(s) => Ok(s.clone()),
        Part::Var {
            name,
            default,
            required,
            ..
        } => {
            let set = vars.get(name).map(|v| v.value.as_str());
            match (set, default) {
                (Some(""), Some((true, d))) => Ok(d.clone()),
                (Some(v), _) => Ok(v.to_string()),
                (None, Some((_, d))) => Ok(d.clone()),
                (None, None) if *required => Err(InterpError(format!(
                    "variable {name} is required and not set in the project's .env"
                ))),
                (None, None) => Err(InterpError(format!(
                    "variable {name} is not set in the project's .env: it comes from the \
                     environment of whoever runs docker-compose, which the agent cannot see"
                ))),
            }
        }
    }
}

/// The image the value declares.
pub fn resolve(parts: &[Part], vars: &BTreeMap<String, EnvValue>) -> Result<String, InterpError> {
    parts.iter().map(|p| resolve_part(p, vars)).collect()
}

/// How to make the value declare `new_image` by changing one variable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VarEdit {
    /// The image is already what the value declares.
    Nothing,
    /// Set the variable's `.env` value.
    EnvValue { name: String, value: String },
    /// Change the variable's default in the compose file (the variable is not in `.env`).
    Default {
        name: String,
        value: String,
        span: Range<usize>,
    },
}

/// Which single variable must change, and to what, for `parts` to resolve to `new_image`.
pub fn edit_for(
    parts: &[Part],
    vars: &BTreeMap<String, EnvValue>,
    new_image: &str,
) -> Result<VarEdit, InterpError> {
    let resolved: Vec<String> = parts
        .iter()
        .map(|p| resolve_part(p, vars))
        .collect::<Result<_, _>>()?;
    if resolved.concat() == new_image {
        return Ok(VarEdit::Nothing);
    }
    let template: String = parts
        .iter()
        .map(|p| match p {
            Part::Literal(s) => s.clone(),
            Part::Var { name, .. } => format!("${{{name}}}"),
        })
        .collect();
    let mut candidates = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let Part::Var {
            name,
            default,
            default_span,
            ..
        } = p
        else {
            continue;
        };
        let used_twice = parts
            .iter()
            .filter(|q| matches!(q, Part::Var { name: n, .. } if n == name))
            .count()
            > 1;
        if used_twice {
            continue;
        }
        let prefix = resolved[..i].concat();
        let suffix = resolved[i + 1..].concat();
        if new_image.len() < prefix.len() + suffix.len()
            || !new_image.starts_with(&prefix)
            || !new_image.ends_with(&suffix)
        {
            continue;
        }
        let value = new_image[prefix.len()..new_image.len() - suffix.len()].to_string();
        if value.is_empty()
            && default
                .as_ref()
                .is_some_and(|(empty_unset, _)| *empty_unset)
        {
            continue;
        }
        let edit = match (vars.get(name), default_span) {
            (Some(_), _) => VarEdit::EnvValue {
                name: name.clone(),
                value,
            },
            (None, Some(span)) => VarEdit::Default {
                name: name.clone(),
                value,
                span: span.clone(),
            },
            (None, None) => continue,
        };
        candidates.push(edit);
    }
    // Several would do (`${A}${B}`): the last one is the tag in every layout seen in practice.
    candidates.pop().ok_or_else(|| {
        InterpError(format!(
            "image {new_image} cannot be declared by changing one variable of {template} \
             (with the project's .env: {})",
            resolved.concat()
        ))
    })
}

/// One variable of a `.env` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvValue {
    pub value: String,
    /// Byte range of the value (inside its quotes) in the file.
    pub span: Range<usize>,
    /// Quoted with `"` or `'`.
    pub quoted: bool,
}

/// The variables of a `.env` file (the last definition of a key wins, as in compose).
pub fn parse_env(text: &str) -> BTreeMap<String, EnvValue> {
    let mut out = BTreeMap::new();
    let mut start = 0;
    for raw in text.split_inclusive('\n') {
        let line_start = start;
        start += raw.len();
        let line = raw.trim_end_matches(['\n', '\r']);
        let lead = line.len() - line.trim_start().len();
        let mut body = &line[lead..];
        let mut at = line_start + lead;
        if body.starts_with('#') || body.is_empty() {
            continue;
        }
        if let Some(rest) = body.strip_prefix("export ") {
            at += body.len() - rest.len();
            body = rest;
        }
        let Some(eq) = body.find('=') else { continue };
        let key = body[..eq].trim();
        if key.is_empty() || key.contains(char::is_whitespace) {
            continue;
        }
        let after = &body[eq + 1..];
        let vlead = after.len() - after.trim_start().len();
        let v = &after[vlead..];
        let v_at = at + eq + 1 + vlead;
        let parsed = match v.chars().next() {
            Some(q @ ('"' | '\'')) => v[1..].find(q).map(|close| EnvValue {
                value: v[1..close + 1].to_string(),
                span: v_at + 1..v_at + 1 + close,
                quoted: true,
            }),
            _ => {
                let end = v.find(" #").unwrap_or(v.len());
                let value = v[..end].trim_end();
                Some(EnvValue {
                    value: value.to_string(),
                    span: v_at..v_at + value.len(),
                    quoted: false,
                })
            }
        };
        if let Some(p) = parsed {
            out.insert(key.to_string(), p);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(text: &str) -> BTreeMap<String, EnvValue> {
        parse_env(text)
    }

    #[test]
    fn env_files_parse_with_spans_comments_quotes_and_export() {
        let text = "# tags\nTAG=v1 # the app\nexport REG=\"127.0.0.1:5000\"\n\nQ='a b'\nTAG=v1\n";
        let vars = env(text);
        assert_eq!(vars["TAG"].value, "v1");
        assert_eq!(&text[vars["TAG"].span.clone()], "v1");
        assert_eq!(
            vars["TAG"].span.start,
            text.rfind("v1").unwrap(),
            "last one wins"
        );
        assert_eq!(vars["REG"].value, "127.0.0.1:5000");
        assert_eq!(&text[vars["REG"].span.clone()], "127.0.0.1:5000");
        assert_eq!(vars["Q"].value, "a b");
    }

    #[test]
    fn values_resolve_with_env_and_defaults() {
        let vars = env("TAG=v1\nEMPTY=\n");
        let r = |v: &str| resolve(&parse(v).unwrap(), &vars);
        assert_eq!(r("app:${TAG}").unwrap(), "app:v1");
        assert_eq!(r("app:$TAG").unwrap(), "app:v1");
        assert_eq!(r("app:${NOPE:-v0}").unwrap(), "app:v0");
        assert_eq!(r("app:${EMPTY:-v0}").unwrap(), "app:v0");
        assert_eq!(r("app:${EMPTY-v0}").unwrap(), "app:");
        assert_eq!(r("a$$b").unwrap(), "a$b");
        assert!(r("app:${NOPE}")
            .unwrap_err()
            .to_string()
            .contains("environment"));
        assert!(r("app:${NOPE:?set it}")
            .unwrap_err()
            .to_string()
            .contains("required"));
        assert!(parse("app:$").is_err());
        assert!(parse("app:${TAG").is_err());
        assert!(parse("app:${TAG:-${X}}").is_err());
    }

    #[test]
    fn the_one_variable_to_change_is_found() {
        let vars = env("TAG=v1\nREG=127.0.0.1:5000\nIMAGE=app:v1\n");
        let e = |v: &str, new: &str| edit_for(&parse(v).unwrap(), &vars, new);
        assert_eq!(
            e("${REG}/app:${TAG}", "127.0.0.1:5000/app:v2").unwrap(),
            VarEdit::EnvValue {
                name: "TAG".into(),
                value: "v2".into()
            }
        );
        assert_eq!(
            e("${IMAGE}", "app:v2").unwrap(),
            VarEdit::EnvValue {
                name: "IMAGE".into(),
                value: "app:v2".into()
            }
        );
        assert_eq!(e("app:${TAG}", "app:v1").unwrap(), VarEdit::Nothing);
        let v = "app:${NEW_TAG:-v1}";
        match e(v, "app:v2").unwrap() {
            VarEdit::Default { name, value, span } => {
                assert_eq!((name.as_str(), value.as_str()), ("NEW_TAG", "v2"));
                assert_eq!(&v[span], "v1");
            }
            other => panic!("{other:?}"),
        }
        assert!(e("${REG}/app:${TAG}", "ghcr.io/other:v2")
            .unwrap_err()
            .to_string()
            .contains("one variable"));
    }
}
