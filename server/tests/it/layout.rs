//! The code's shape, checked on every run (docs/architecture.md): no import cycle between the
//! modules of the server or of the agent, and no function of theirs (tests aside) longer than
//! [`MAX_FUNCTION_LINES`].
//!
//! A module is a source file (`a/b.rs` is `a::b`, `a/mod.rs` is `a`). Every path that starts
//! with `crate::`, `super::` or `self::` outside comments and strings — in `use` items, in code,
//! in test modules too — is an edge from the file's module to the longest known module the path
//! names. The module graph must have no cycle; a failure lists each cycle with the lines that
//! make its edges.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Longest function allowed, in lines from its signature to its closing brace.
const MAX_FUNCTION_LINES: usize = 100;

/// Functions allowed to be longer, as `crate-relative file: function`: the route table is one
/// list read top to bottom, and the pure failover decision (`decide` applies the pause to it)
/// stays whole because it is the model the exhaustive tests check.
const LONG_ALLOWED: [&str; 2] = [
    "http/router.rs: router",
    "failover/decision.rs: decide_unpaused",
];

fn source_roots() -> [(&'static str, PathBuf); 3] {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    [
        ("server", manifest.join("src")),
        ("node-agent", manifest.join("../node-agent/src")),
        ("cli", manifest.join("../cli/src")),
    ]
}

/// The `.rs` files under `root`, as (module path, file path relative to root).
fn modules(root: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(root).unwrap().to_path_buf();
                let mut parts: Vec<String> = rel
                    .with_extension("")
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if parts
                    .last()
                    .is_some_and(|p| p == "mod" || p == "lib" || p == "main")
                {
                    parts.pop();
                }
                out.push((parts.join("::"), rel));
            }
        }
    }
    out.sort();
    out
}

/// The text with comments, string and char literals blanked (newlines kept, so line numbers
/// still match).
fn code_only(src: &str) -> String {
    let b: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && !ident_char(b.get(i.wrapping_sub(1)).copied())
        {
            // Raw string r"…" or r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            out.extend(std::iter::repeat_n(' ', j + 1 - i));
            i = j + 1;
            while i < b.len() {
                if b[i] == '"' && (0..hashes).all(|k| b.get(i + 1 + k) == Some(&'#')) {
                    out.extend(std::iter::repeat_n(' ', hashes + 1));
                    i += hashes + 1;
                    break;
                }
                out.push(blank(b[i]));
                i += 1;
            }
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < b.len() {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{1F600}') or a lifetime ('a).
            if next == Some('\\') {
                let mut j = i + 2;
                while j < b.len() && b[j] != '\'' {
                    j += 1;
                }
                out.extend(std::iter::repeat_n(' ', j + 1 - i));
                i = j + 1;
            } else if b.get(i + 2) == Some(&'\'') {
                out.push_str("   ");
                i += 3;
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_char(c: Option<char>) -> bool {
    c.is_some_and(|c| c.is_alphanumeric() || c == '_')
}

/// Every path a `crate::` / `super::` / `self::` prefix starts in `code`, with its line, as
/// absolute segment lists (use-trees expanded: `crate::a::{b, c::d}` gives `a::b` and `a::c::d`).
/// `inline` maps a byte offset to the inline module path it sits in (for `super::` in `mod
/// tests { … }`).
fn paths(code: &str, module: &[String]) -> Vec<(usize, Vec<String>)> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    // Inline modules (`mod tests {`), tracked by brace depth.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut line = 1;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
        }
        if c == '{' {
            depth += 1;
        } else if c == '}' {
            depth = depth.saturating_sub(1);
            if inline.last().is_some_and(|(_, d)| *d == depth) {
                inline.pop();
            }
        }
        if ident_char(Some(c)) && !ident_char(i.checked_sub(1).map(|j| chars[j])) {
            let word = take_ident(&chars, i);
            if word == "mod" {
                let mut j = i + 3;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                let name = take_ident(&chars, j);
                let mut k = j + name.len();
                while k < chars.len() && chars[k].is_whitespace() {
                    k += 1;
                }
                if !name.is_empty() && chars.get(k) == Some(&'{') {
                    inline.push((name, depth));
                }
            }
            if (word == "crate" || word == "super" || word == "self")
                && chars.get(i + word.len()) == Some(&':')
                && chars.get(i + word.len() + 1) == Some(&':')
            {
                let here: Vec<String> = module
                    .iter()
                    .cloned()
                    .chain(inline.iter().map(|(n, _)| n.clone()))
                    .collect();
                let (trees, end) = use_tree(&chars, i);
                for tree in trees {
                    if let Some(abs) = absolute(&tree, &here) {
                        out.push((line, abs));
                    }
                }
                for ch in &chars[i..end] {
                    if *ch == '\n' {
                        line += 1;
                    }
                }
                i = end;
                continue;
            }
            i += word.len();
            continue;
        }
        i += 1;
    }
    out
}

fn take_ident(chars: &[char], at: usize) -> String {
    chars[at..]
        .iter()
        .take_while(|c| ident_char(Some(**c)))
        .collect()
}

/// Parses a path or use-tree at `at`; returns the expanded paths (relative segments, starting
/// with `crate`/`super`/`self`) and the offset after it.
fn use_tree(chars: &[char], at: usize) -> (Vec<Vec<String>>, usize) {
    let mut prefix = Vec::new();
    let mut i = at;
    loop {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        if chars.get(i) == Some(&'{') {
            let mut all = Vec::new();
            i += 1;
            loop {
                while i < chars.len() && (chars[i].is_whitespace() || chars[i] == ',') {
                    i += 1;
                }
                if i >= chars.len() || chars[i] == '}' {
                    i += 1;
                    break;
                }
                let (subs, end) = use_tree(chars, i);
                for s in subs {
                    all.push(prefix.iter().cloned().chain(s).collect());
                }
                i = end;
                // What follows a tree up to the next `,` or `}` (` as name`, `*`) names no module.
                while i < chars.len() && chars[i] != ',' && chars[i] != '}' {
                    i += 1;
                }
            }
            return (all, i);
        }
        let word = take_ident(chars, i);
        if word.is_empty() {
            return (vec![prefix], i);
        }
        prefix.push(word.clone());
        i += word.len();
        if chars.get(i) == Some(&':') && chars.get(i + 1) == Some(&':') {
            i += 2;
        } else {
            return (vec![prefix], i);
        }
    }
}

/// Resolves `crate`/`super`/`self` against the module (and inline module) the path sits in.
fn absolute(path: &[String], here: &[String]) -> Option<Vec<String>> {
    let mut base: Vec<String> = here.to_vec();
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            rest = &rest[1..];
        }
        Some("self") => rest = &rest[1..],
        Some("super") => {
            while rest.first().is_some_and(|s| s == "super") {
                base.pop()?;
                rest = &rest[1..];
            }
        }
        _ => return None,
    }
    base.extend(rest.iter().filter(|s| s.as_str() != "self").cloned());
    Some(base)
}

struct Edge {
    from: String,
    to: String,
    at: String,
}

fn module_edges(root: &Path) -> (BTreeSet<String>, Vec<Edge>) {
    let mods = modules(root);
    let known: BTreeSet<String> = mods.iter().map(|(m, _)| m.clone()).collect();
    let mut edges = Vec::new();
    for (module, rel) in &mods {
        let src = std::fs::read_to_string(root.join(rel)).unwrap();
        let code = code_only(&src);
        let here: Vec<String> = if module.is_empty() {
            Vec::new()
        } else {
            module.split("::").map(String::from).collect()
        };
        for (line, abs) in paths(&code, &here) {
            // The longest known module the path names.
            let mut target = None;
            for n in (1..=abs.len()).rev() {
                let candidate = abs[..n].join("::");
                if known.contains(&candidate) {
                    target = Some(candidate);
                    break;
                }
            }
            let Some(to) = target else { continue };
            // A file's own inline modules (`mod tests`) are part of it.
            if &to != module {
                edges.push(Edge {
                    from: module.clone(),
                    to,
                    at: format!("{}:{line} {}", rel.display(), abs.join("::")),
                });
            }
        }
    }
    (known, edges)
}

/// Strongly connected components of more than one module (Tarjan).
fn cycles(nodes: &BTreeSet<String>, edges: &[Edge]) -> Vec<Vec<String>> {
    let mut adj: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for e in edges {
        adj.entry(&e.from).or_default().insert(&e.to);
    }
    struct T<'a> {
        adj: &'a BTreeMap<&'a str, BTreeSet<&'a str>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        t.index.insert(v, t.next);
        t.low.insert(v, t.next);
        t.next += 1;
        t.stack.push(v);
        t.on.insert(v);
        let targets: Vec<&'a str> = t
            .adj
            .get(v)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        for w in targets {
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low[v];
                t.low.insert(v, lv.min(lw));
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low[v];
                t.low.insert(v, lv.min(iw));
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        adj: &adj,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for n in nodes {
        if !t.index.contains_key(n.as_str()) {
            visit(&mut t, n);
        }
    }
    t.out
}

#[test]
fn no_import_cycle_between_modules() {
    let mut report = String::new();
    for (krate, root) in source_roots() {
        let (nodes, edges) = module_edges(&root);
        // The scan found the crate (the command line is the smallest, with five modules).
        assert!(
            nodes.len() >= 5,
            "{krate}: found only {} modules in {}",
            nodes.len(),
            root.display()
        );
        for cycle in cycles(&nodes, &edges) {
            report.push_str(&format!(
                "\n{krate}: modules in one cycle: {}\n",
                cycle.join(", ")
            ));
            for e in &edges {
                if cycle.contains(&e.from) && cycle.contains(&e.to) {
                    report.push_str(&format!("  {} -> {}   ({})\n", e.from, e.to, e.at));
                }
            }
        }
    }
    assert!(
        report.is_empty(),
        "import cycles (docs/architecture.md says which way imports point):{report}"
    );
}

/// Non-test functions of `code` as (name, first line, line count).
fn functions(code: &str) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = code.lines().collect();
    let mut out = Vec::new();
    // Depth at which a test region (`#[cfg(test)] mod … {` or a `#[test]` function) ends.
    let mut test_until: Option<usize> = None;
    let mut depth = 0usize;
    let mut pending_test_attr = false;
    let mut open: Vec<(String, usize, usize)> = Vec::new(); // name, start line, depth at start
    for (n, raw) in lines.iter().enumerate() {
        let line = raw.trim();
        if line.starts_with("#[cfg(test)]")
            || line.starts_with("#[test]")
            || line.ends_with("::test]")
            || line.contains("::test(")
        {
            pending_test_attr = true;
        }
        let words: Vec<&str> = line
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .filter(|w| !w.is_empty())
            .collect();
        let fn_at = words.iter().position(|w| *w == "fn");
        let is_item = fn_at.is_some_and(|p| {
            words[..p].iter().all(|w| {
                matches!(
                    *w,
                    "pub"
                        | "crate"
                        | "super"
                        | "async"
                        | "const"
                        | "unsafe"
                        | "extern"
                        | "in"
                        | "self"
                )
            })
        });
        if test_until.is_none() && pending_test_attr && (is_item || words.first() == Some(&"mod")) {
            test_until = Some(depth);
            pending_test_attr = false;
        } else if is_item && test_until.is_none() {
            if let Some(name) = fn_at.and_then(|p| words.get(p + 1)) {
                open.push((name.to_string(), n + 1, depth));
            }
        }
        if is_item || words.first() == Some(&"mod") || words.first() == Some(&"impl") {
            pending_test_attr = pending_test_attr && !(is_item || words.first() == Some(&"mod"));
        }
        for c in raw.chars() {
            if c == '{' {
                depth += 1;
            } else if c == '}' {
                depth = depth.saturating_sub(1);
                if let Some((name, start, d)) = open.last().cloned() {
                    if depth == d {
                        open.pop();
                        out.push((name, start, n + 2 - start));
                    }
                }
                if test_until == Some(depth) {
                    test_until = None;
                }
            }
        }
        // A signature without a body (trait method) ends at `;` at its own depth.
        if let Some((_, _, d)) = open.last() {
            if *d == depth && raw.trim_end().ends_with(';') && !raw.contains('{') {
                open.pop();
            }
        }
    }
    out
}

#[test]
fn no_function_longer_than_the_limit() {
    let mut report = String::new();
    for (krate, root) in source_roots() {
        for (_, rel) in modules(&root) {
            let code = code_only(&std::fs::read_to_string(root.join(&rel)).unwrap());
            for (name, start, len) in functions(&code) {
                let key = format!("{}: {name}", rel.display());
                if len > MAX_FUNCTION_LINES && !LONG_ALLOWED.contains(&key.as_str()) {
                    report.push_str(&format!(
                        "\n  {krate}/src/{}:{start} {name}: {len} lines",
                        rel.display()
                    ));
                }
            }
        }
    }
    assert!(
        report.is_empty(),
        "functions longer than {MAX_FUNCTION_LINES} lines (split them by what they do):{report}"
    );
}

#[test]
fn the_checks_see_what_they_should() {
    let code = code_only(
        "use crate::a::{b, c::d};\nfn f() { let s = \"crate::x::y\"; crate::e::f(); } // crate::z\nmod tests { use super::*; use super::super::q; }",
    );
    let here = vec!["m".to_string(), "n".to_string()];
    let found: Vec<String> = paths(&code, &here)
        .into_iter()
        .map(|(_, p)| p.join("::"))
        .collect();
    assert_eq!(found, ["a::b", "a::c::d", "e::f", "m::n", "m::q"]);
    let f = functions("fn short() {\n}\n#[cfg(test)]\nmod tests {\n    fn long() {\n    }\n}\npub async fn g(x: u8) -> u8 {\n    x\n}\n");
    assert_eq!(f, [("short".to_string(), 1, 2), ("g".to_string(), 8, 3)]);
}
