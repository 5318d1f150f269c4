//! The layering of the source tree: no import cycle between files, except a file and its
//! own sub-module (`rps/exchange.rs` and `rps/exchange/deadline.rs`, say). A module that
//! needs a name from a module above it is a sign that the name lives in the wrong place:
//! move it down (docs/architecture.md, "Layers").
//!
//! The test reads the source as text, as a reviewer would: every path that starts with
//! `crate::`, `super::`, `self::` or a child module's name, in `use` declarations and in
//! code, is an arrow from the file to the file that defines the longest module prefix of
//! the path. Comments and the `#[cfg(test)]` module at the end of a file are left out.
//! `cargo test --test layering -- --nocapture` prints every arrow.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One crate's files by module path (`["metrics", "schema"]` for `src/metrics/schema.rs`).
struct Crate {
    modules: BTreeMap<Vec<String>, PathBuf>,
}

impl Crate {
    fn read(root: &Path) -> Crate {
        let mut modules = BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let rel = path.strip_prefix(root).unwrap().with_extension("");
                    let mut module: Vec<String> = rel
                        .components()
                        .map(|c| c.as_os_str().to_string_lossy().into_owned())
                        .collect();
                    if matches!(
                        module.last().map(String::as_str),
                        Some("mod" | "lib" | "main")
                    ) {
                        module.pop();
                    }
                    if rel == Path::new("main") {
                        continue; // the binary is another crate that uses the library
                    }
                    modules.insert(module, path);
                }
            }
        }
        Crate { modules }
    }

    fn name(&self, module: &[String]) -> String {
        let path = &self.modules[module];
        path.strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .unwrap()
            .display()
            .to_string()
    }

    /// The file that defines the longest module prefix of `path`.
    fn resolve<'a>(&self, path: &'a [String]) -> Option<&'a [String]> {
        (0..=path.len())
            .rev()
            .map(|n| &path[..n])
            .find(|prefix| self.modules.contains_key(*prefix))
    }

    /// Every arrow of the crate: file → files it takes names from.
    fn arrows(&self) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
        let mut arrows = BTreeMap::new();
        for (module, path) in &self.modules {
            let text = code_of(&std::fs::read_to_string(path).unwrap());
            let paths = paths_in(&text);
            // A module brought into scope (`use crate::metrics::attrs;`) is a name that
            // later paths start from (`attrs::SEED`).
            let aliases: BTreeMap<String, Vec<String>> = paths
                .iter()
                .filter_map(|raw| self.absolute(module, &BTreeMap::new(), raw))
                .filter(|abs| self.modules.contains_key(abs))
                .filter_map(|abs| Some((abs.last()?.clone(), abs)))
                .collect();
            let mut to = BTreeSet::new();
            for raw in &paths {
                let Some(absolute) = self.absolute(module, &aliases, raw) else {
                    continue;
                };
                if let Some(target) = self.resolve(&absolute) {
                    if target != module.as_slice() && !target.is_empty() {
                        to.insert(target.to_vec());
                    }
                }
            }
            arrows.insert(module.clone(), to);
        }
        arrows
    }

    /// A path as written in `module`, made absolute; `None` for other crates and `std`.
    fn absolute(
        &self,
        module: &[String],
        aliases: &BTreeMap<String, Vec<String>>,
        raw: &[String],
    ) -> Option<Vec<String>> {
        let first = raw.first()?;
        let rest = || raw[1..].iter().cloned();
        match first.as_str() {
            "crate" => Some(rest().collect()),
            "self" => Some(module.iter().cloned().chain(rest()).collect()),
            "super" => {
                let mut base = module.to_vec();
                let mut tail = raw;
                // `a/b.rs` and `a/b/mod.rs` are both module a::b, whose `super` is a.
                while tail.first().is_some_and(|s| s == "super") {
                    base.pop()?;
                    tail = &tail[1..];
                }
                Some(base.into_iter().chain(tail.iter().cloned()).collect())
            }
            child => {
                let mut candidate = module.to_vec();
                candidate.push(child.to_string());
                if self.modules.contains_key(&candidate) {
                    return Some(module.iter().cloned().chain(raw.iter().cloned()).collect());
                }
                let alias = aliases.get(child)?;
                Some(alias.iter().cloned().chain(rest()).collect())
            }
        }
    }
}

/// The code of a file: no comments, no test module at its end.
fn code_of(text: &str) -> String {
    let mut code = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]")
            && lines
                .peek()
                .is_some_and(|next| next.trim_start().starts_with("mod tests"))
        {
            break;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        code.push_str(line);
        code.push('\n');
    }
    code
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every path of two segments or more in `code`, with `use` groups expanded
/// (`a::{b, c::d}` is `a::b` and `a::c::d`). String literals are skipped.
fn paths_in(code: &str) -> Vec<Vec<String>> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            // A char literal ('"', '\"') is not a string; a lifetime is one tick.
            match (chars.get(i + 1), chars.get(i + 2), chars.get(i + 3)) {
                (Some('\\'), _, Some('\'')) => i += 4,
                (Some(_), Some('\''), _) => i += 3,
                _ => i += 1,
            }
            continue;
        }
        if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            continue;
        }
        if is_ident(c) && (i == 0 || !(is_ident(chars[i - 1]) || chars[i - 1] == ':')) {
            let start = i;
            let mut prefix = Vec::new();
            let mut trees = Vec::new();
            i = parse_tree(&chars, i, &mut prefix, &mut trees);
            if i == start {
                i += 1;
            }
            out.extend(trees.into_iter().filter(|p| p.len() >= 2));
            continue;
        }
        i += 1;
    }
    out
}

fn skip_space(chars: &[char], mut i: usize) -> usize {
    while i < chars.len() && chars[i].is_whitespace() {
        i += 1;
    }
    i
}

/// Parses one path or use tree at `i`, appending whole paths to `out`.
fn parse_tree(
    chars: &[char],
    mut i: usize,
    prefix: &mut Vec<String>,
    out: &mut Vec<Vec<String>>,
) -> usize {
    let depth = prefix.len();
    loop {
        i = skip_space(chars, i);
        if i < chars.len() && chars[i] == '{' {
            i += 1;
            loop {
                i = skip_space(chars, i);
                if i >= chars.len() || chars[i] == '}' {
                    i += 1;
                    break;
                }
                if chars[i] == ',' {
                    i += 1;
                    continue;
                }
                let before = i;
                i = parse_tree(chars, i, prefix, out);
                if i == before {
                    i += 1;
                }
            }
            prefix.truncate(depth);
            return i;
        }
        let start = i;
        while i < chars.len() && is_ident(chars[i]) {
            i += 1;
        }
        if i == start {
            // `*` or anything else: the prefix is the path.
            if !prefix.is_empty() {
                out.push(prefix.clone());
            }
            prefix.truncate(depth);
            return i;
        }
        let word: String = chars[start..i].iter().collect();
        if word != "self" || prefix.is_empty() {
            prefix.push(word);
        }
        if i + 1 < chars.len() && chars[i] == ':' && chars[i + 1] == ':' {
            i += 2;
            continue;
        }
        out.push(prefix.clone());
        prefix.truncate(depth);
        // `as name` renames; the path is what counts.
        let j = skip_space(chars, i);
        if chars[j..].starts_with(&['a', 's'])
            && chars.get(j + 2).is_some_and(|c| c.is_whitespace())
        {
            i = skip_space(chars, j + 2);
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
        }
        return i;
    }
}

/// Strongly connected components (Tarjan), largest first.
fn cycles(arrows: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<Vec<String>>> {
    struct State<'a> {
        arrows: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<&'a Vec<String>, usize>,
        low: BTreeMap<&'a Vec<String>, usize>,
        stack: Vec<&'a Vec<String>>,
        on_stack: BTreeSet<&'a Vec<String>>,
        out: Vec<Vec<Vec<String>>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a Vec<String>) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in &s.arrows[v] {
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on_stack.remove(w);
                component.push(w.clone());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                s.out.push(component);
            }
        }
    }
    let mut s = State {
        arrows,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in arrows.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.out.sort_by_key(|c| std::cmp::Reverse(c.len()));
    s.out
}

/// A cycle that is allowed: a file and its own sub-module, nothing else.
fn parent_and_child(cycle: &[Vec<String>]) -> bool {
    match cycle {
        [a, b] => {
            let (short, long) = if a.len() < b.len() { (a, b) } else { (b, a) };
            long.len() == short.len() + 1 && long.starts_with(short)
        }
        _ => false,
    }
}

/// One cycle inside `component` that is not a file and its sub-module, if there is one.
/// A parent module that re-exports its children while they use its names is one
/// component of several files, and still only cycles of two: so cycles are searched,
/// each from its smallest file, rather than judged by the component's size.
fn bad_cycle(
    arrows: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
    component: &[Vec<String>],
) -> Option<Vec<Vec<String>>> {
    fn search(
        arrows: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        inside: &BTreeSet<&Vec<String>>,
        path: &mut Vec<Vec<String>>,
        budget: &mut usize,
    ) -> Option<Vec<Vec<String>>> {
        let start = path[0].clone();
        let last = path.last().unwrap().clone();
        for next in &arrows[&last] {
            if !inside.contains(next) || *next < start {
                continue;
            }
            if *next == start {
                if !parent_and_child(path) {
                    return Some(path.clone());
                }
                continue;
            }
            if path.contains(next) {
                continue;
            }
            *budget = budget.checked_sub(1)?;
            path.push(next.clone());
            if let Some(found) = search(arrows, inside, path, budget) {
                return Some(found);
            }
            path.pop();
        }
        None
    }
    let inside: BTreeSet<&Vec<String>> = component.iter().collect();
    let mut budget = 1_000_000usize;
    for start in &inside {
        let mut path = vec![(*start).clone()];
        if let Some(found) = search(arrows, &inside, &mut path, &mut budget) {
            return Some(found);
        }
        if budget == 0 {
            return Some(component.to_vec()); // too tangled to search: as bad as a cycle
        }
    }
    None
}

fn check_crate(root: &str) {
    let krate = Crate::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join(root));
    let arrows = krate.arrows();
    for (from, to) in &arrows {
        for t in to {
            println!("{} -> {}", krate.name(from), krate.name(t));
        }
    }
    let bad: Vec<String> = cycles(&arrows)
        .into_iter()
        .filter_map(|component| Some((bad_cycle(&arrows, &component)?, component)))
        .map(|(cycle, component)| {
            let ties: Vec<String> = cycle
                .iter()
                .zip(cycle.iter().cycle().skip(1))
                .map(|(from, to)| format!("  {} -> {}", krate.name(from), krate.name(to)))
                .collect();
            let all: Vec<String> = component.iter().map(|m| krate.name(m)).collect();
            format!(
                "{} files reach each other ({}); one cycle:\n{}",
                all.len(),
                all.join(", "),
                ties.join("\n")
            )
        })
        .collect();
    assert!(
        bad.is_empty(),
        "{root}: import cycles (move the shared name down, below both):\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_application_has_no_import_cycle() {
    check_crate("src");
}

#[test]
fn the_engine_has_no_import_cycle() {
    check_crate("crates/nn/src");
}

#[test]
fn the_reader_sees_paths_and_groups() {
    let paths = paths_in("use crate::{a::b, c::{d, e as f}};\nlet x = super::g::h(\"crate::no\");");
    let text: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
    assert_eq!(
        text,
        ["crate::a::b", "crate::c::d", "crate::c::e", "super::g::h"]
    );
    let m = |s: &str| s.split("::").map(String::from).collect::<Vec<String>>();
    let graph = |edges: &[(&str, &str)]| {
        let mut g: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
        for (a, b) in edges {
            g.entry(m(a)).or_default().insert(m(b));
            g.entry(m(b)).or_default();
        }
        g
    };
    let bad = |g: &BTreeMap<_, _>| cycles(g).iter().filter_map(|c| bad_cycle(g, c)).count();
    // Two siblings that import each other: a cycle.
    assert_eq!(bad(&graph(&[("a", "b"), ("b", "a"), ("c", "a")])), 1);
    // A parent and two children, each pair importing both ways: allowed.
    let family = [("t", "t::x"), ("t::x", "t"), ("t", "t::y"), ("t::y", "t")];
    assert_eq!(bad(&graph(&family)), 0);
    // One child importing the other closes a cycle of three.
    let mut tangled = family.to_vec();
    tangled.push(("t::x", "t::y"));
    assert_eq!(bad(&graph(&tangled)), 1);
}
