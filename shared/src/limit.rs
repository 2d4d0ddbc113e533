//! Concurrency and error limits given as a count (`10`) or a percentage of the targets (`10%`),
//! with the semantics of AWS SSM's MaxConcurrency / MaxErrors.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Limit {
    Count(u32),
    Percent(u8),
}

impl Limit {
    /// The limit as a number of targets out of `total`. Percentages round up, so `10%` of 5
    /// targets is 1, never 0 (a percentage limit of 0 % stays 0).
    pub fn resolve(self, total: usize) -> usize {
        match self {
            Limit::Count(n) => n as usize,
            Limit::Percent(p) => (total * p as usize).div_ceil(100),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid limit {0:?}: expected a count like `10` or a percentage like `10%` (0-100)")]
pub struct LimitParseError(pub String);

impl FromStr for Limit {
    type Err = LimitParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let err = || LimitParseError(s.to_string());
        if let Some(p) = t.strip_suffix('%') {
            let p: u8 = p.trim().parse().map_err(|_| err())?;
            if p > 100 {
                return Err(err());
            }
            Ok(Limit::Percent(p))
        } else {
            Ok(Limit::Count(t.parse().map_err(|_| err())?))
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Count(n) => write!(f, "{n}"),
            Limit::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl TryFrom<String> for Limit {
    type Error = LimitParseError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Limit> for String {
    fn from(l: Limit) -> String {
        l.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, total: usize, expected: Option<usize>) {
        let got = input.parse::<Limit>().ok().map(|l| l.resolve(total));
        assert_eq!(got, expected, "{input} of {total}");
    }

    #[test]
    fn counts_and_percentages() {
        check("3", 10, Some(3));
        check("10%", 10, Some(1));
        check("10%", 5, Some(1));
        check("50%", 5, Some(3));
        check("100%", 7, Some(7));
        check("0", 7, Some(0));
        check("0%", 7, Some(0));
        check(" 25 % ", 8, Some(2));
        check("101%", 7, None);
        check("-1", 7, None);
        check("ten", 7, None);
        check("", 7, None);
    }

    #[test]
    fn serde_as_string() {
        let l: Limit = serde_json::from_str("\"20%\"").unwrap();
        assert_eq!(l, Limit::Percent(20));
        assert_eq!(serde_json::to_string(&Limit::Count(4)).unwrap(), "\"4\"");
    }
}
