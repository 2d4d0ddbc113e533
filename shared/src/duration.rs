//! Human durations for CLI flags and config: `90s`, `5m`, `1h`, `2d`, or bare seconds `30`.

use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {0:?}: expected a number with an optional unit s, m, h or d (e.g. 90s, 5m, 1h)")]
pub struct DurationParseError(pub String);

pub fn parse_duration(s: &str) -> Result<Duration, DurationParseError> {
    let t = s.trim();
    let err = || DurationParseError(s.to_string());
    let (num, mult) = match t.char_indices().last() {
        Some((i, 's')) => (&t[..i], 1),
        Some((i, 'm')) => (&t[..i], 60),
        Some((i, 'h')) => (&t[..i], 3600),
        Some((i, 'd')) => (&t[..i], 86_400),
        Some(_) => (t, 1),
        None => return Err(err()),
    };
    let n: u64 = num.trim().parse().map_err(|_| err())?;
    n.checked_mul(mult).map(Duration::from_secs).ok_or_else(err)
}

/// The shortest exact text form: `90s` → "90s", 3600 → "1h".
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    for (unit, secs) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if s > 0 && s % secs == 0 {
            return format!("{}{unit}", s / secs);
        }
    }
    format!("{s}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Option<u64>) {
        assert_eq!(
            parse_duration(input).ok().map(|d| d.as_secs()),
            expected,
            "{input}"
        );
    }

    #[test]
    fn parses_units() {
        check("30", Some(30));
        check("90s", Some(90));
        check("5m", Some(300));
        check("1h", Some(3600));
        check("2d", Some(172_800));
        check(" 10 m", Some(600));
        check("", None);
        check("h", None);
        check("1w", None);
        check("-1s", None);
        check("99999999999999999999d", None);
    }

    #[test]
    fn formats() {
        assert_eq!(format_duration(Duration::from_secs(3600)), "1h");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_secs(0)), "0s");
    }
}
