//! The module floors as a tested fact: every `crate::…` path in `src/` (code, not comments) may
//! only point down the floor list below, never up and never sideways, and the files of one
//! module directory never import each other in a loop. A new top-level module fails this test
//! until it is given a floor, so the tree keeps the shape the README's Architecture draws.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top to bottom; a module may import only modules on floors below its own. One floor may hold
/// several modules that do not know each other.
const FLOORS: &[&[&str]] = &[
    &["cli"],
    &["app"],
    &["proxy", "admin"],
    &["bridge"],
    &["auth"],
    // pubsub reads the router's installed change counter to decide whether to wake the
    // reloader, so it stands above the router rather than beside it.
    &["usage", "pubsub"],
    &["router"],
    &["store"],
    &["provider", "ca", "config"],
    &["net"],
    &["secret", "metrics", "shutdown", "telemetry", "otlp"],
];

/// Imports allowed against the floors, each with its reason. Empty: keep it so.
const EXCEPTIONS: &[(&str, &str, &str)] = &[];

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file: `src/proxy/mitm.rs` → `["proxy", "mitm"]`, `src/net/mod.rs` →
/// `["net"]`, `src/lib.rs` → `[]`.
fn module_path(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src_dir()).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// The code of a file without comments (line comments, doc comments, block comments) and
/// string literals, so a path in prose or in a message is not an import.
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let chars: Vec<char> = text.chars().collect();
    let (mut i, mut block) = (0, 0usize);
    while i < chars.len() {
        let (c, next) = (chars[i], chars.get(i + 1).copied());
        if block > 0 {
            match (c, next) {
                ('*', Some('/')) => (block, i) = (block - 1, i + 2),
                ('/', Some('*')) => (block, i) = (block + 1, i + 2),
                _ => i += 1,
            }
        } else if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            (block, i) = (1, i + 2);
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' && next.is_some_and(|n| n != '\\') && chars.get(i + 2) == Some(&'\'') {
            // A char literal such as '"' (lifetimes are left alone).
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Every module path a piece of code names through `crate::` or `super::`, resolved from the
/// file's own module path: `crate::{a, b::c}` names `[a]` and `[b, c]`.
fn referenced_paths(code: &str, here: &[String]) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    for start in 0..bytes.len() {
        let boundary = start == 0
            || !(bytes[start - 1].is_ascii_alphanumeric()
                || bytes[start - 1] == b'_'
                || bytes[start - 1] == b':');
        if !boundary || !code.is_char_boundary(start) {
            continue;
        }
        let rest = &code[start..];
        let (mut base, mut tail): (Vec<String>, &str) =
            if let Some(t) = rest.strip_prefix("crate::") {
                (Vec::new(), t)
            } else if rest.starts_with("super::") {
                let mut base = here.to_vec();
                let mut t = rest;
                while let Some(after) = t.strip_prefix("super::") {
                    base.pop();
                    t = after;
                }
                (base, t)
            } else {
                continue;
            };
        if let Some(group) = tail.strip_prefix('{') {
            let end = matching_brace(group);
            for item in split_top_level(&group[..end]) {
                let mut path = base.clone();
                path.extend(idents(item.trim()));
                found.push(path);
            }
            continue;
        }
        let ids = idents(tail);
        tail = "";
        let _ = tail;
        base.extend(ids);
        found.push(base);
    }
    found
}

/// Leading `a::b::c` identifiers of `s` (stops at anything else).
fn idents(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    loop {
        let len = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if len == 0 {
            break;
        }
        out.push(rest[..len].to_string());
        match rest[len..].strip_prefix("::") {
            Some(after) if !after.starts_with('{') => rest = after,
            _ => break,
        }
    }
    out
}

fn matching_brace(s: &str) -> usize {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return i,
            '}' => depth -= 1,
            _ => {}
        }
    }
    s.len()
}

fn split_top_level(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut from) = (Vec::new(), 0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[from..i]);
                from = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[from..]);
    out
}

fn floor_of(module: &str) -> Option<usize> {
    FLOORS.iter().position(|f| f.contains(&module))
}

/// Each library file with its module path and the module paths its code names.
fn library() -> Vec<(PathBuf, Vec<String>, Vec<Vec<String>>)> {
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    files.sort();
    files
        .into_iter()
        .filter(|f| f.file_name().is_some_and(|n| n != "main.rs"))
        .map(|f| {
            let here = module_path(&f);
            let code = code_only(&std::fs::read_to_string(&f).unwrap());
            let refs = referenced_paths(&code, &here);
            (f, here, refs)
        })
        .collect()
}

#[test]
fn imports_only_go_down_the_floors() {
    let mut violations = Vec::new();
    let mut unplaced = BTreeSet::new();
    for (file, here, refs) in library() {
        let Some(module) = here.first() else { continue };
        let Some(floor) = floor_of(module) else {
            unplaced.insert(module.clone());
            continue;
        };
        for path in refs {
            let Some(target) = path.first() else { continue };
            if target == module || floor_of(target).is_none() && !is_module(target) {
                continue; // itself, or a crate-root item such as `BoxError`
            }
            let Some(target_floor) = floor_of(target) else {
                unplaced.insert(target.clone());
                continue;
            };
            let excepted = EXCEPTIONS
                .iter()
                .any(|(from, to, _)| from == module && to == target);
            if target_floor <= floor && !excepted {
                violations.push(format!(
                    "{}: {module} (floor {floor}) imports {} (floor {target_floor})",
                    file.strip_prefix(src_dir()).unwrap().display(),
                    path.join("::")
                ));
            }
        }
    }
    assert!(
        unplaced.is_empty(),
        "modules with no floor in FLOORS: {unplaced:?}"
    );
    violations.sort();
    violations.dedup();
    assert!(
        violations.is_empty(),
        "imports pointing up or sideways:\n{}",
        violations.join("\n")
    );
}

/// Whether `name` is a top-level module of the library (a directory or a file in `src/`).
fn is_module(name: &str) -> bool {
    let src = src_dir();
    src.join(name).is_dir() || src.join(format!("{name}.rs")).is_file()
}

/// Inside one module directory, its files never import each other in a loop (a file importing
/// its parent's items is how Rust modules share state, and is not counted).
#[test]
fn no_import_loop_inside_a_module() {
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    let all = library();
    let known: BTreeSet<Vec<String>> = all.iter().map(|(_, here, _)| here.clone()).collect();
    for (_, here, refs) in &all {
        if here.len() < 2 {
            continue;
        }
        let parent = &here[..here.len() - 1];
        for path in refs {
            // The longest known module path this reference starts with: a sibling file.
            let target = (1..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|p| known.contains(p));
            if let Some(t) = target {
                if t.len() == here.len() && t[..t.len() - 1] == *parent && t != *here {
                    edges.entry(here.clone()).or_default().insert(t);
                }
            }
        }
    }
    for start in edges.keys() {
        let mut stack = vec![(start.clone(), vec![start.join("::")])];
        let mut seen = BTreeSet::new();
        while let Some((node, trail)) = stack.pop() {
            for next in edges.get(&node).into_iter().flatten() {
                let mut trail = trail.clone();
                trail.push(next.join("::"));
                assert!(next != start, "import loop: {}", trail.join(" -> "));
                if seen.insert(next.clone()) {
                    stack.push((next.clone(), trail));
                }
            }
        }
    }
}

#[test]
fn the_scanner_sees_what_it_must() {
    let here = vec!["proxy".to_string(), "mitm".to_string()];
    let code = code_only(
        "use crate::{bridge::{self, X}, net};\n/// crate::app in a doc\nuse super::connect;\n\
         let s = \"crate::cli\"; use super::super::store::Y; // crate::admin\n",
    );
    let mut refs = referenced_paths(&code, &here);
    refs.sort();
    let names: Vec<String> = refs.iter().map(|p| p.join("::")).collect();
    assert_eq!(
        names,
        vec!["bridge", "net", "proxy::connect", "store::Y"],
        "{code}"
    );
}
