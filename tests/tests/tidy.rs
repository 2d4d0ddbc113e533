//! Tidy tests: the code-shape invariants of ARCHITECTURE.md, checked over the source tree and
//! `cargo metadata` so that breaking one fails `scripts/test` instead of waiting for a reviewer.
//!
//! - crate dependency rules (the server does not depend on the agent, the CLI not on the
//!   server, only the agent and the end-to-end tests talk to Docker through bollard);
//! - only the agent's `docker/` module talks to the Docker engine (other agent code may name
//!   bollard's plain data types, never its client);
//! - SQL (rusqlite) only in the store modules and the agent's state module;
//! - no new import cycle between the modules of a crate (`use crate::…` paths);
//! - the relay's layers import downwards only (model, store, engines, adapters), and the
//!   agent's root updater imports only the agent's file helpers;
//! - no non-test file over 1,000 lines without an allow-list entry that gives a reason;
//! - every non-test file opens with a `//!` paragraph;
//! - tests sleep only inside testkit's waits.
//!
//! Allow-lists name today's debts: an entry can only shrink (a test fails when an entry is no
//! longer needed, so the list stays true).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root (this crate is `tests/`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The `src` directories of the workspace's crates, by crate name.
const CRATE_SOURCES: [(&str, &str); 9] = [
    ("flotilla-shared", "shared/src"),
    ("flotilla-testkit", "testkit/src"),
    ("flotilla-daemon", "daemon/src"),
    ("flotilla-agent", "agent/src"),
    ("flotilla-relay-server", "relay/src"),
    ("flotilla-relay", "relay/bin/src"),
    ("flotilla-cli", "cli/src"),
    ("flotilla-tests", "tests/src"),
    ("flotilla-testapp", "tests/testapp/src"),
];

/// Every `.rs` file below `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Whether `rel` (relative to a crate's `src`) holds only tests: `tests.rs` or anything in a
/// `tests/` directory.
fn is_test_file(rel: &Path) -> bool {
    rel.components().any(|c| c.as_os_str() == "tests")
        || rel.file_stem().is_some_and(|s| s == "tests")
}

/// The text of a file up to its `#[cfg(test)] mod …` block (the unit tests sit at the end).
fn without_unit_tests(text: &str) -> &str {
    let mut offset = 0;
    let mut lines = text.split_inclusive('\n').peekable();
    while let Some(line) = lines.next() {
        if line.trim() == "#[cfg(test)]" {
            if let Some(next) = lines.peek() {
                let next = next.trim_start();
                if next.starts_with("mod ") || next.starts_with("pub mod ") {
                    return &text[..offset];
                }
            }
        }
        offset += line.len();
    }
    text
}

/// The lines of `text` with `//` comments removed (doc comments included).
fn code_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().map(|l| match l.find("//") {
        Some(i) => &l[..i],
        None => l,
    })
}

/// Every non-test source file of the workspace: (path relative to the root, text).
fn non_test_sources() -> Vec<(PathBuf, String)> {
    let root = root();
    let mut out = Vec::new();
    for (_, src) in CRATE_SOURCES {
        let dir = root.join(src);
        for path in rust_files(&dir) {
            let rel = path.strip_prefix(&dir).unwrap();
            if is_test_file(rel) {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            out.push((path.strip_prefix(&root).unwrap().to_path_buf(), text));
        }
    }
    out
}

// === crate dependency rules ===

/// Normal (non-dev, non-build) dependencies of every workspace crate, transitively, by crate
/// name, from `cargo metadata`.
fn normal_dependency_closure() -> BTreeMap<String, BTreeSet<String>> {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(root())
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: BTreeMap<&str, &str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    // Direct normal dependencies per package id, from the resolved graph.
    let mut direct: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for node in meta["resolve"]["nodes"].as_array().unwrap() {
        let id = node["id"].as_str().unwrap();
        let deps = node["deps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| {
                d["dep_kinds"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|k| k["kind"].is_null())
            })
            .map(|d| d["pkg"].as_str().unwrap())
            .collect();
        direct.insert(id, deps);
    }
    let mut closure = BTreeMap::new();
    for member in meta["workspace_members"].as_array().unwrap() {
        let member = member.as_str().unwrap();
        let mut seen = BTreeSet::new();
        let mut stack = vec![member];
        while let Some(id) = stack.pop() {
            for dep in direct.get(id).map(Vec::as_slice).unwrap_or_default() {
                if seen.insert(names[dep].to_string()) {
                    stack.push(dep);
                }
            }
        }
        closure.insert(names[member].to_string(), seen);
    }
    closure
}

#[test]
fn crate_dependency_rules() {
    let closure = normal_dependency_closure();
    // (crate, crates it must not depend on, even indirectly, and why)
    let rules: [(&str, &[&str], &str); 6] = [
        (
            "flotilla-relay-server",
            // zstd and age came in with the relay's own backups (flotilla-offsite, shared with the agent).
            &["flotilla-agent", "bollard", "sysinfo"],
            "the server does not link the agent: dev mode (crate flotilla-relay) is the one place that links both",
        ),
        (
            "flotilla-cli",
            &["flotilla-relay-server", "flotilla-agent", "flotilla-daemon", "axum", "rusqlite", "bollard"],
            "the CLI is a client of the HTTP API: shared types and an HTTP client only",
        ),
        (
            "flotilla-agent",
            &["flotilla-relay-server", "flotilla-cli", "axum", "lettre"],
            "the agent does not link the relay",
        ),
        (
            "flotilla-daemon",
            &["flotilla-agent", "flotilla-relay-server", "bollard", "rusqlite"],
            "the daemons' shared helpers know neither daemon",
        ),
        (
            "flotilla-shared",
            &["flotilla-daemon", "flotilla-agent", "flotilla-relay-server", "tokio", "rusqlite"],
            "the shared types are plain data and pure functions",
        ),
        (
            "flotilla-tests",
            &["flotilla-relay-server", "flotilla-agent"],
            "the end-to-end tests drive the real binaries, not the libraries",
        ),
    ];
    let mut broken = Vec::new();
    for (krate, banned, why) in rules {
        let deps = closure
            .get(krate)
            .unwrap_or_else(|| panic!("{krate} is not a workspace member"));
        for b in banned {
            if deps.contains(*b) {
                broken.push(format!("{krate} depends on {b}: {why}"));
            }
        }
    }
    // Only the agent (its docker module) and the end-to-end tests' fixtures use bollard directly.
    for (krate, deps) in &closure {
        let direct_users = ["flotilla-agent", "flotilla-tests", "flotilla-relay"];
        if deps.contains("bollard") && !direct_users.contains(&krate.as_str()) {
            broken.push(format!("{krate} depends on bollard"));
        }
    }
    assert!(
        broken.is_empty(),
        "crate dependency rules broken:\n{}",
        broken.join("\n")
    );
}

// === the Docker API only in agent/src/docker ===

/// bollard paths agent code outside `agent/src/docker/` may name: plain data types, which do
/// not talk to the engine.
const BOLLARD_DATA_ONLY: [&str; 2] = ["bollard::models", "bollard::auth::DockerCredentials"];

#[test]
fn only_the_docker_module_talks_to_docker() {
    let mut broken = Vec::new();
    for (path, text) in non_test_sources() {
        let p = path.to_string_lossy().to_string();
        if !p.starts_with("agent/src/") || p.starts_with("agent/src/docker") {
            continue;
        }
        for line in code_lines(without_unit_tests(&text)) {
            for (i, _) in line.match_indices("bollard::") {
                if !BOLLARD_DATA_ONLY.iter().any(|ok| line[i..].starts_with(ok)) {
                    broken.push(format!("{p}: {}", line.trim()));
                }
            }
            if line.contains("use bollard::{") || line.trim() == "use bollard;" {
                broken.push(format!("{p}: {}", line.trim()));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "agent code outside agent/src/docker/ uses bollard's client (only docker/ talks to the \
         engine; others may name {BOLLARD_DATA_ONLY:?}):\n{}",
        broken.join("\n")
    );
}

// === SQL only in the store ===

/// Where rusqlite may be used, as path prefixes (a path equal to or below one of them).
const SQL_PLACES: [&str; 3] = ["relay/src/store", "agent/src/state.rs", "agent/src/state/"];

/// Files outside [`SQL_PLACES`] that still use rusqlite, with the reason (none today; an entry
/// here is a debt to pay, and the test fails once the file no longer needs it).
const SQL_DEBTS: [(&str, &str); 1] = [(
    "tests/src/bin/relay-backup-bench.rs",
    "fills a relay.db with 10,000 agents and 30 days of history by bulk SQL (the store's domain writes would take hours); to move behind a store bulk-load operation",
)];

#[test]
fn sql_only_in_the_store_modules() {
    let mut found = BTreeSet::new();
    for (path, text) in non_test_sources() {
        let p = path.to_string_lossy().to_string();
        if code_lines(&text).any(|l| l.contains("rusqlite"))
            && !SQL_PLACES.iter().any(|s| p.starts_with(s))
        {
            found.insert(p);
        }
    }
    let allowed: BTreeSet<String> = SQL_DEBTS.iter().map(|(p, _)| p.to_string()).collect();
    let new: Vec<_> = found.difference(&allowed).collect();
    let stale: Vec<_> = allowed.difference(&found).collect();
    assert!(
        new.is_empty(),
        "rusqlite used outside the store modules ({SQL_PLACES:?}): {new:?}"
    );
    assert!(
        stale.is_empty(),
        "SQL_DEBTS names files that no longer use rusqlite: {stale:?}"
    );
}

// === file size ===

/// Non-test files allowed over [`MAX_LINES`], with the reason.
const LONG_FILES: &[(&str, &str)] = &[
    ("agent/src/update/mod.rs", "the container update state machine with its recovery table, kept together on purpose until the phases get their own files"),
    ("agent/src/upgrade/agent.rs", "the agent side of self-update (download from the connected relay, verify, hand-off, report); grew with relay_urls: to split the download from the hand-off"),
    ("agent/src/upgrade/updater.rs", "the root updater's whole protocol (request, swap, watch, revert, resume) in one file on purpose: it runs as root and is read as one; tidy checks it imports only the agent's file helpers"),
    ("relay/src/store/sql/rollouts.rs", "rollout persistence: about thirty transactions, each with its state guards; its decisions are in model::rollouts; to split by phase (membership and dispatch, results, reverts, reads)"),
    ("relay/src/store/sql/releases.rs", "releases persistence and its transactions"),
    ("tests/src/fixtures/db.rs", "the database test images and servers (PostgreSQL, MariaDB, Redis): to split per engine"),
    ("tests/src/harness.rs", "the end-to-end harness (real relay and agent processes, API client, scoped containers); what other test crates share went to testkit: to split by part"),
];

const MAX_LINES: usize = 1000;

#[test]
fn no_file_over_a_thousand_lines_without_a_reason() {
    let mut long = BTreeMap::new();
    for (path, text) in non_test_sources() {
        let lines = text.lines().count();
        if lines > MAX_LINES {
            long.insert(path.to_string_lossy().to_string(), lines);
        }
    }
    let allowed: BTreeMap<&str, &str> = LONG_FILES.iter().copied().collect();
    let new: Vec<_> = long
        .iter()
        .filter(|(p, _)| !allowed.contains_key(p.as_str()))
        .map(|(p, n)| format!("{p} ({n} lines)"))
        .collect();
    let stale: Vec<_> = allowed.keys().filter(|p| !long.contains_key(**p)).collect();
    assert!(
        new.is_empty(),
        "files over {MAX_LINES} lines without an entry in LONG_FILES: {new:?}"
    );
    assert!(
        stale.is_empty(),
        "LONG_FILES names files that are no longer long: {stale:?}"
    );
}

// === doc paragraphs ===

#[test]
fn every_non_test_file_opens_with_a_module_doc() {
    let missing: Vec<_> = non_test_sources()
        .into_iter()
        .filter(|(_, text)| !text.trim_start().starts_with("//!"))
        .map(|(p, _)| p)
        .collect();
    assert!(
        missing.is_empty(),
        "files without a leading //! paragraph: {missing:?}"
    );
}

// === import cycles ===

/// The module path of a file relative to its crate's `src` (`a/b.rs` and `a/b/mod.rs` are
/// `a::b`, `lib.rs`/`main.rs` the root ""), or None for test files and extra binaries.
fn module_of(rel: &Path) -> Option<String> {
    if is_test_file(rel) || rel.starts_with("bin") {
        return None;
    }
    let mut parts: Vec<String> = rel
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("lib" | "main" | "mod")
    ) {
        parts.pop();
    }
    Some(parts.join("::"))
}

/// The modules a crate's code refers to through `crate::` paths (including `use crate::{a, b}`
/// groups), per module. References between a module and its own ancestors or descendants do
/// not count: that is the module tree itself.
fn crate_import_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = BTreeMap::new();
    for path in rust_files(src) {
        if let Some(m) = module_of(path.strip_prefix(src).unwrap()) {
            files.insert(m, path);
        }
    }
    let resolve = |path: &str| -> Option<String> {
        let segs: Vec<&str> = path.split("::").map(str::trim).collect();
        (1..=segs.len())
            .rev()
            .map(|k| segs[..k].join("::"))
            .find(|c| files.contains_key(c))
    };
    let related = |a: &str, b: &str| {
        a == b
            || a.is_empty()
            || b.is_empty()
            || a.starts_with(&format!("{b}::"))
            || b.starts_with(&format!("{a}::"))
    };
    let mut graph = BTreeMap::new();
    for (module, path) in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let mut targets = BTreeSet::new();
        for line in code_lines(without_unit_tests(&text)) {
            // `crate::…` paths, and `super::…` paths resolved against this module's parent.
            for prefix in ["crate::", "super::"] {
                for (i, _) in line.match_indices(prefix) {
                    // Not `flotilla_crate::…` or `super::super::…`'s second half: the prefix
                    // must start a path.
                    if i > 0
                        && line[..i]
                            .ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':')
                    {
                        continue;
                    }
                    let mut base: Vec<&str> = Vec::new();
                    let mut rest = &line[i + prefix.len()..];
                    if prefix == "super::" {
                        base = module.split("::").filter(|s| !s.is_empty()).collect();
                        base.pop();
                        while let Some(r) = rest.strip_prefix("super::") {
                            base.pop();
                            rest = r;
                        }
                    }
                    let mut paths = Vec::new();
                    if let Some(group) = rest.strip_prefix('{') {
                        let group = group.split('}').next().unwrap_or_default();
                        paths.extend(group.split(',').map(|s| s.trim().to_string()));
                    } else {
                        let end = rest
                            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                            .unwrap_or(rest.len());
                        paths.push(rest[..end].trim_end_matches(':').to_string());
                    }
                    for p in paths
                        .iter()
                        .filter(|p| !p.is_empty() && *p != "*" && *p != "self")
                    {
                        let full = if base.is_empty() {
                            p.clone()
                        } else {
                            format!("{}::{p}", base.join("::"))
                        };
                        if let Some(target) = resolve(&full) {
                            if !related(module, &target) {
                                targets.insert(target);
                            }
                        }
                    }
                }
            }
        }
        graph.insert(module.clone(), targets);
    }
    graph
}

/// The strongly connected components with more than one module (Tarjan's algorithm).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<BTreeSet<String>> {
    struct Walk<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<BTreeSet<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in &self.graph[v] {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(lw);
                } else if self.on_stack.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = BTreeSet::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.insert(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    self.out.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.out
}

/// Import cycles that exist today, per crate, exactly: a cycle may shrink or vanish (and is
/// then written down smaller), never grow or appear. None are left (issue 13 removed the
/// last ones); an entry here is a debt with a reason.
const KNOWN_CYCLES: &[(&str, &[&str])] = &[];

#[test]
fn no_new_import_cycles_between_modules() {
    let root = root();
    let mut problems = Vec::new();
    let mut seen_known = BTreeSet::new();
    for (_, src) in CRATE_SOURCES {
        let graph = crate_import_graph(&root.join(src));
        for cycle in cycles(&graph) {
            // Exactly a known cycle: one that shrank must be written down smaller.
            let known = KNOWN_CYCLES.iter().position(|(dir, members)| {
                *dir == src
                    && cycle.len() == members.len()
                    && cycle.iter().all(|m| members.contains(&m.as_str()))
            });
            match known {
                Some(i) => {
                    seen_known.insert(i);
                }
                None => problems.push(format!("{src}: {cycle:?}")),
            }
        }
    }
    assert!(
        problems.is_empty(),
        "new import cycles (modules that reach each other through `crate::` paths):\n{}",
        problems.join("\n")
    );
    let gone: Vec<_> = (0..KNOWN_CYCLES.len())
        .filter(|i| !seen_known.contains(i))
        .map(|i| KNOWN_CYCLES[i])
        .collect();
    assert!(
        gone.is_empty(),
        "KNOWN_CYCLES lists cycles that no longer exist: {gone:?}"
    );
}

/// The relay's layers, from its import graph: the pure model imports nothing else of the
/// crate; the store imports only the model (no engine, no adapter: a second backend sees the
/// same seam); only the HTTP/websocket adapters (the API, the dashboard, the agent socket) and the
/// composition root take the app state.
#[test]
fn the_relay_layers_import_downwards_only() {
    let graph = crate_import_graph(&root().join("relay/src"));
    let within = |m: &str, top: &str| m == top || m.starts_with(&format!("{top}::"));
    let mut broken = Vec::new();
    for (module, targets) in &graph {
        for t in targets {
            let allowed = if within(module, "model") {
                within(t, "model")
            } else if within(module, "store") {
                within(t, "model") || within(t, "store")
            } else if within(t, "state") {
                within(module, "api")
                    || within(module, "web")
                    || module == "ws"
                    || module == "server"
            } else {
                true
            };
            if !allowed {
                broken.push(format!("relay/src: {module} imports {t}"));
            }
        }
    }
    assert!(
        graph.contains_key("model") && graph.contains_key("store"),
        "the relay's model and store modules moved: update this test"
    );
    assert!(
        broken.is_empty(),
        "the relay's layering is broken (model <- store <- engines <- adapters; the app \
         state only in api/, web/, ws and server):\n{}",
        broken.join("\n")
    );
}

/// The root updater runs as root and judges the agent's build: it shares files with the agent
/// (the install helpers, the agent-id file), never its state, session or executor.
#[test]
fn the_root_updater_shares_only_files_with_the_agent() {
    let graph = crate_import_graph(&root().join("agent/src"));
    let allowed = ["upgrade::files", "agent_id"];
    let imports = graph
        .get("upgrade::updater")
        .expect("agent/src/upgrade/updater.rs moved: update this test");
    let wrong: Vec<_> = imports
        .iter()
        .filter(|m| !allowed.contains(&m.as_str()))
        .collect();
    assert!(
        wrong.is_empty(),
        "the root updater imports {wrong:?} from the agent (allowed: {allowed:?})"
    );
    // `super::` paths are not in the import graph: the updater's parent is `upgrade`, so only
    // `super::files` is allowed.
    let text = std::fs::read_to_string(root().join("agent/src/upgrade/updater.rs")).unwrap();
    let supers: Vec<&str> = code_lines(without_unit_tests(&text))
        .filter(|l| l.contains("super::") && !l.contains("super::files"))
        .collect();
    assert!(
        supers.is_empty(),
        "the root updater reaches the agent through super:: paths: {supers:?}"
    );
}

#[test]
fn the_cycle_finder_finds_a_cycle_and_ignores_the_module_tree() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
    .collect();
    let found = cycles(&graph);
    assert_eq!(found.len(), 1);
    assert_eq!(
        found[0],
        ["a", "b", "c"].into_iter().map(String::from).collect()
    );
    assert_eq!(module_of(Path::new("a/b/mod.rs")).as_deref(), Some("a::b"));
    assert_eq!(module_of(Path::new("lib.rs")).as_deref(), Some(""));
    assert_eq!(module_of(Path::new("a/tests.rs")), None);
    assert_eq!(
        without_unit_tests("fn a() {}\n#[cfg(test)]\nmod tests {\n    use crate::x;\n}\n"),
        "fn a() {}\n"
    );
}

// === sleep only inside testkit's waits ===

/// Test code that may sleep outside `testkit/src/wait.rs`, as (path prefix, how many sleeping
/// lines below it, why). Each count is exact: more is a new sleep, fewer means the entry shrinks.
const SLEEP_ALLOWED: [(&str, usize, &str); 1] = [(
    "tests/testapp/src/",
    2,
    "the test application's own behaviour (start delay, crash-after), a static binary for \
         FROM-scratch images that links no test support",
)];

/// Where test code sleeps: the lines (comments removed) that call `sleep(` or `sleep_until(`,
/// as (path relative to the root, line number, line), over every crate's integration tests,
/// all of flotilla-tests and the testkit, and the `#[cfg(test)]` part of every other source.
fn sleeping_test_lines() -> Vec<(PathBuf, usize, String)> {
    let root = root();
    let needles = [concat!("sle", "ep("), concat!("sle", "ep_until(")];
    let mut files: Vec<(PathBuf, String)> = Vec::new();
    let mut sources: Vec<&str> = CRATE_SOURCES.iter().map(|(_, src)| *src).collect();
    sources.push("testkit/src");
    for src in sources {
        let dir = root.join(src);
        // flotilla-tests, its test application and the testkit are test code throughout.
        let all_test = src.starts_with("tests/") || src.starts_with("testkit/");
        for path in rust_files(&dir) {
            let text = std::fs::read_to_string(&path).unwrap();
            let rel = path.strip_prefix(&dir).unwrap();
            let test_part = if all_test || is_test_file(rel) {
                text.as_str()
            } else {
                &text[without_unit_tests(&text).len()..]
            };
            let first_line = text[..text.len() - test_part.len()].lines().count();
            files.push((
                path.strip_prefix(&root).unwrap().to_path_buf(),
                format!("{}{test_part}", "\n".repeat(first_line)),
            ));
        }
        // The crate's integration tests (`<crate>/tests`).
        let tests_dir = dir.parent().unwrap().join("tests");
        if src != "tests/src" && tests_dir.is_dir() {
            for path in rust_files(&tests_dir) {
                let text = std::fs::read_to_string(&path).unwrap();
                files.push((path.strip_prefix(&root).unwrap().to_path_buf(), text));
            }
        }
    }
    let mut out = Vec::new();
    for (rel, text) in files {
        for (i, line) in code_lines(&text).enumerate() {
            if needles.iter().any(|n| line.contains(n)) {
                out.push((rel.clone(), i + 1, line.trim().to_string()));
            }
        }
    }
    out
}

#[test]
fn sleep_only_inside_testkit_waits() {
    // The one place that sleeps: the poller between two polls, and the named holds.
    let waits = Path::new("testkit/src/wait.rs");
    let lines = sleeping_test_lines();
    let in_waits = lines.iter().filter(|(p, _, _)| p == waits).count();
    assert!(
        in_waits > 0,
        "testkit/src/wait.rs no longer sleeps: is the scan still finding sleeps?"
    );
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut broken = Vec::new();
    for (path, line_no, line) in lines.iter().filter(|(p, _, _)| p != waits) {
        match SLEEP_ALLOWED
            .iter()
            .find(|(prefix, _, _)| path.starts_with(prefix))
        {
            Some((prefix, _, _)) => *counts.entry(prefix).or_default() += 1,
            None => broken.push(format!(
                "{}:{line_no}: `{line}`: poll with flotilla_testkit::eventually (or a Poller), or \
                 say why the time itself is the point with flotilla_testkit::hold",
                path.display()
            )),
        }
    }
    for (prefix, allowed, _) in SLEEP_ALLOWED {
        let found = counts.get(prefix).copied().unwrap_or(0);
        if found != allowed {
            broken.push(format!(
                "SLEEP_ALLOWED says {allowed} sleeping lines below {prefix}, found {found}: \
                 update the entry (or remove it at 0)"
            ));
        }
    }
    assert!(
        broken.is_empty(),
        "tests sleep outside testkit's waits:\n{}",
        broken.join("\n")
    );

    // The testkit stays usable by every test crate: it links neither daemon's library.
    let closure = normal_dependency_closure();
    let testkit = &closure["flotilla-testkit"];
    for banned in ["flotilla-relay-server", "flotilla-agent", "flotilla-relay"] {
        assert!(
            !testkit.contains(banned),
            "flotilla-testkit depends on {banned}: every test crate must be able to use it"
        );
    }
}
