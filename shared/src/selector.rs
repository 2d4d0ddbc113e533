//! Agent labels (`key=value`) and the selectors that match them (`region=eu,tier!=build,gpu,!old`).
//!
//! A selector is a comma-separated conjunction of terms: `k=v` (label equals), `k!=v` (label
//! absent or different), `k` (label present), `!k` (label absent). The empty selector and `*`
//! match every agent.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LabelError {
    #[error("invalid label key {0:?}: use 1-63 characters from a-z A-Z 0-9 . _ - /")]
    Key(String),
    #[error("invalid label value {value:?} for {key:?}: use up to 253 characters from a-z A-Z 0-9 . _ - / : @ +")]
    Value { key: String, value: String },
    #[error("invalid label {0:?}: expected key=value")]
    Pair(String),
    #[error("invalid selector term {0:?}: expected key=value, key!=value, key or !key")]
    Term(String),
}

pub fn validate_key(k: &str) -> Result<(), LabelError> {
    let ok = !k.is_empty()
        && k.len() <= 63
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
    if ok {
        Ok(())
    } else {
        Err(LabelError::Key(k.to_string()))
    }
}

pub fn validate_value(k: &str, v: &str) -> Result<(), LabelError> {
    let ok = v.len() <= 253
        && v.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | ':' | '@' | '+')
        });
    if ok {
        Ok(())
    } else {
        Err(LabelError::Value {
            key: k.to_string(),
            value: v.to_string(),
        })
    }
}

pub fn validate_labels(labels: &Labels) -> Result<(), LabelError> {
    for (k, v) in labels {
        validate_key(k)?;
        validate_value(k, v)?;
    }
    Ok(())
}

/// Parses `k=v,k2=v2` (empty input gives no labels).
pub fn parse_labels(s: &str) -> Result<Labels, LabelError> {
    let mut out = Labels::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| LabelError::Pair(part.to_string()))?;
        let (k, v) = (k.trim(), v.trim());
        validate_key(k)?;
        validate_value(k, v)?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Term {
    Eq(String, String),
    NotEq(String, String),
    Exists(String),
    NotExists(String),
}

/// A parsed selector. Serialized as its text form.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Selector {
    terms: Vec<Term>,
}

impl Selector {
    pub fn all() -> Self {
        Selector { terms: Vec::new() }
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.terms.iter().all(|t| match t {
            Term::Eq(k, v) => labels.get(k) == Some(v),
            Term::NotEq(k, v) => labels.get(k) != Some(v),
            Term::Exists(k) => labels.contains_key(k),
            Term::NotExists(k) => !labels.contains_key(k),
        })
    }

    pub fn terms(&self) -> &[Term] {
        &self.terms
    }
}

impl FromStr for Selector {
    type Err = LabelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() || s == "*" {
            return Ok(Selector::all());
        }
        let mut terms = Vec::new();
        for part in s.split(',').map(str::trim) {
            let bad = || LabelError::Term(part.to_string());
            let term = if let Some((k, v)) = part.split_once("!=") {
                Term::NotEq(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = part.split_once('=') {
                Term::Eq(k.trim().to_string(), v.trim().to_string())
            } else if let Some(k) = part.strip_prefix('!') {
                Term::NotExists(k.trim().to_string())
            } else {
                Term::Exists(part.to_string())
            };
            match &term {
                Term::Eq(k, v) | Term::NotEq(k, v) => {
                    validate_key(k).map_err(|_| bad())?;
                    validate_value(k, v).map_err(|_| bad())?;
                }
                Term::Exists(k) | Term::NotExists(k) => validate_key(k).map_err(|_| bad())?,
            }
            terms.push(term);
        }
        Ok(Selector { terms })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.terms.is_empty() {
            return f.write_str("*");
        }
        for (i, t) in self.terms.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match t {
                Term::Eq(k, v) => write!(f, "{k}={v}")?,
                Term::NotEq(k, v) => write!(f, "{k}!={v}")?,
                Term::Exists(k) => write!(f, "{k}")?,
                Term::NotExists(k) => write!(f, "!{k}")?,
            }
        }
        Ok(())
    }
}

impl TryFrom<String> for Selector {
    type Error = LabelError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Selector> for String {
    fn from(s: Selector) -> String {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(s: &str) -> Labels {
        parse_labels(s).unwrap()
    }

    fn check(selector: &str, agent_labels: &str, expected: bool) {
        let sel: Selector = selector.parse().unwrap();
        assert_eq!(
            sel.matches(&labels(agent_labels)),
            expected,
            "{selector} vs {agent_labels}"
        );
    }

    #[test]
    fn matching() {
        check("", "a=1", true);
        check("*", "", true);
        check("region=eu", "region=eu,tier=build", true);
        check("region=eu,tier=build", "region=eu,tier=build", true);
        check("region=eu,tier=web", "region=eu,tier=build", false);
        check("tier!=build", "region=eu,tier=build", false);
        check("tier!=build", "region=eu", true);
        check("gpu", "gpu=yes", true);
        check("gpu", "cpu=yes", false);
        check("!gpu", "cpu=yes", true);
        check("!gpu", "gpu=", false);
    }

    #[test]
    fn parse_errors_name_the_term() {
        assert_eq!(
            "region=eu,=x".parse::<Selector>(),
            Err(LabelError::Term("=x".into()))
        );
        assert_eq!(
            "a b".parse::<Selector>(),
            Err(LabelError::Term("a b".into()))
        );
        assert!(parse_labels("novalue").is_err());
        assert!(parse_labels("k=v w").is_err());
    }

    #[test]
    fn display_round_trips() {
        for s in ["region=eu,tier!=build,gpu,!old", "*"] {
            let sel: Selector = s.parse().unwrap();
            assert_eq!(sel.to_string(), s);
            assert_eq!(sel.to_string().parse::<Selector>().unwrap(), sel);
        }
    }

    #[test]
    fn labels_parse_with_spaces() {
        let l = labels(" region = eu , tier=build ");
        assert_eq!(l.get("region").map(String::as_str), Some("eu"));
        assert_eq!(l.len(), 2);
    }
}
