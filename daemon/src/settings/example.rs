//! The check that keeps an example config file (`packaging/agent.toml`) and a settings table
//! in step: [`drift`] lists every key one has and the other lacks, and every key whose
//! `Env: FLOTILLA_…` note differs from the table's variable. The daemons' config tests call it
//! on their example file.
//!
//! What the file must look like: a key is documented by `key = …` or `# key = …` (below
//! `[section]`: `section.key`); the comment lines directly above it name its variable as
//! `Env: NAME` (none for a file-only key). A commented header `# [[section.key]]` or
//! `# [section.key.name]` documents `section.key`, and the commented example lines right below
//! it are that key's own fields. A setting only a variable sets is named `Env only: NAME`.

use super::{Env, Setting};
use std::collections::{BTreeMap, BTreeSet};

/// The name of the key a line sets or shows (`key = …` or `# key = …`).
fn key_of(line: &str) -> Option<&str> {
    let line = line.trim();
    let body = line.strip_prefix('#').map(str::trim_start).unwrap_or(line);
    let (name, _) = body.split_once(" = ")?;
    let ok = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    ok.then_some(name)
}

/// The table header a line opens, and whether it is commented out (an example).
fn header_of(line: &str) -> Option<(&str, bool)> {
    let line = line.trim();
    let (body, commented) = match line.strip_prefix('#') {
        Some(rest) => (rest.trim_start(), true),
        None => (line, false),
    };
    let path = body.strip_prefix('[')?.strip_suffix(']')?;
    let path = path.trim_start_matches('[').trim_end_matches(']');
    let ok = !path.is_empty()
        && path
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.');
    ok.then_some((path, commented))
}

/// The variable names following `marker` (`Env: `) in `line`.
fn names_after<'a>(line: &'a str, marker: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    line.match_indices(marker).map(move |(at, _)| {
        let rest = &line[at + marker.len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(rest.len());
        &rest[..end]
    })
}

/// The `Env: NAME` names in the comment lines directly above line `i` (up to a blank line, a
/// line that is not a comment, or another key or header).
fn env_names_above(lines: &[&str], i: usize) -> Vec<String> {
    let mut names = Vec::new();
    for line in lines[..i].iter().rev() {
        let l = line.trim();
        if !l.starts_with('#') || key_of(l).is_some() || header_of(l).is_some() {
            break;
        }
        names.extend(names_after(l, "Env: ").map(str::to_string));
    }
    names
}

/// The keys `text` documents, each with the `Env:` names its comments give.
fn documented_keys(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let lines: Vec<&str> = text.lines().collect();
    let mut keys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut section: Option<String> = None;
    let mut in_example = false;
    for (i, line) in lines.iter().enumerate() {
        let commented_key = line.trim().starts_with('#') && key_of(line).is_some();
        if in_example && commented_key {
            continue;
        }
        in_example = false;
        let key = match (header_of(line), key_of(line)) {
            (Some((path, false)), _) => {
                section = Some(path.to_string());
                continue;
            }
            (Some((path, true)), _) => {
                in_example = true;
                path.split('.').take(2).collect::<Vec<_>>().join(".")
            }
            (None, Some(name)) => match &section {
                Some(s) => format!("{s}.{name}"),
                None => name.to_string(),
            },
            (None, None) => continue,
        };
        keys.entry(key)
            .or_default()
            .extend(env_names_above(&lines, i));
    }
    keys
}

/// What differs between `text` (the example file, called `file` in the messages) and
/// `settings`; empty when they agree.
pub fn drift(text: &str, file: &str, settings: &[Setting]) -> Vec<String> {
    let documented = documented_keys(text);
    let mut problems = Vec::new();
    for key in documented.keys() {
        if !settings.iter().any(|s| s.key == key && s.in_file()) {
            problems.push(format!("{key} is in {file} but not in the settings table"));
        }
    }
    for s in settings {
        if let Env::Only { name, .. } = s.env {
            if !names_after(text, "Env only: ").any(|n| n == name) {
                problems.push(format!(
                    "{file} does not name {}'s variable as \"Env only: {name}\"",
                    s.key
                ));
            }
            continue;
        }
        let Some(given) = documented.get(s.key) else {
            problems.push(format!(
                "{} is in the settings table but not in {file}",
                s.key
            ));
            continue;
        };
        let want: BTreeSet<String> = s.env_name().map(str::to_string).into_iter().collect();
        if *given != want {
            problems.push(format!(
                "{file} gives {} the Env: names {given:?}, the table {want:?}",
                s.key
            ));
        }
    }
    let known: BTreeSet<&str> = settings.iter().filter_map(Setting::env_name).collect();
    let named: BTreeSet<&str> = names_after(text, "Env: ")
        .chain(names_after(text, "Env only: "))
        .collect();
    for name in named.difference(&known) {
        problems.push(format!(
            "{file} names the variable {name}, which no setting has"
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: &[Setting] = &[
        Setting {
            key: "listen",
            ty: "SocketAddr",
            env: Env::Var {
                name: "FLOTILLA_LISTEN",
                expected: "",
            },
        },
        Setting {
            key: "sec.list",
            ty: "Vec<Item>",
            env: Env::FileOnly { why: "tables" },
        },
        Setting {
            key: "sec.sub.n",
            ty: "u32",
            env: Env::Var {
                name: "FLOTILLA_SEC_SUB_N",
                expected: "",
            },
        },
        Setting {
            key: "hook",
            ty: "Option<u32>",
            env: Env::Only {
                name: "FLOTILLA_HOOK",
                expected: "",
            },
        },
    ];

    const FILE: &str = "\
# Address. Env: FLOTILLA_LISTEN.
listen = \"127.0.0.1:1\"
# A test hook. Env only: FLOTILLA_HOOK.

[sec]
# Tables, no variable.
list = []
# [[sec.list]]
# name = \"x\"

[sec.sub]
# Env: FLOTILLA_SEC_SUB_N.
n = 1
";

    #[test]
    fn an_example_that_agrees_has_no_drift() {
        assert_eq!(drift(FILE, "x.toml", SETTINGS), Vec::<String>::new());
    }

    #[test]
    fn drift_is_seen_in_each_direction() {
        let renamed = FILE.replace("Env: FLOTILLA_SEC_SUB_N", "Env: FLOTILLA_N");
        assert_eq!(
            drift(&renamed, "x.toml", SETTINGS),
            [
                "x.toml gives sec.sub.n the Env: names {\"FLOTILLA_N\"}, the table \
                 {\"FLOTILLA_SEC_SUB_N\"}",
                "x.toml names the variable FLOTILLA_N, which no setting has"
            ]
        );
        let added = FILE.replace("[sec]\n", "[sec]\n# Soon.\n# more = 1\n");
        assert_eq!(
            drift(&added, "x.toml", SETTINGS),
            ["sec.more is in x.toml but not in the settings table"]
        );
        let removed = FILE.replace("# Env: FLOTILLA_SEC_SUB_N.\nn = 1\n", "");
        assert_eq!(
            drift(&removed, "x.toml", SETTINGS),
            ["sec.sub.n is in the settings table but not in x.toml"]
        );
        let hook = FILE.replace("Env only: FLOTILLA_HOOK", "FLOTILLA_HOOK");
        assert_eq!(
            drift(&hook, "x.toml", SETTINGS),
            ["x.toml does not name hook's variable as \"Env only: FLOTILLA_HOOK\""]
        );
        let hook_key = FILE.replace("# A test hook.", "# A test hook.\nhook = 1\n#");
        assert_eq!(
            drift(&hook_key, "x.toml", SETTINGS),
            ["hook is in x.toml but not in the settings table"]
        );
    }
}
