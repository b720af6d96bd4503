//! The top-level modules of the `weir` library (`proxy/src/*`) form no
//! dependency cycle: a module refers (`crate::x`, `use crate::{x, ..}`,
//! `super::` up to the crate root) only to modules below it in the data flow,
//! so each can be read, and tested, from the bottom up.
//!
//! Read from the sources: lib.rs names the modules; main.rs and the modules it
//! declares are the binary's, not the library's. Test code (`#[cfg(test)]`
//! items, the files they declare, `tests.rs` and `*_tests.rs`) is left out: a
//! test may build its module's input with a module above it. Comments and
//! string literals are left out too.
//!
//! On failure the message names each cycle's modules and every reference that
//! makes an edge of it, as `file:line`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Edges between top-level modules: `from -> to -> ["file:line", ..]`.
type Graph = BTreeMap<String, BTreeMap<String, Vec<String>>>;

#[test]
fn top_level_modules_form_no_cycle() {
    // WEIR_CHECK_SRC: another copy of proxy/src to check (an older commit's, say).
    let src = match std::env::var_os("WEIR_CHECK_SRC") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
    };
    let graph = module_graph(&src);
    // A reference every version of the proxy has: the scan reads what it should.
    assert!(
        graph["intake"].contains_key("event"),
        "intake's references to event were not found: {graph:?}"
    );
    let cycles: Vec<_> = strongly_connected(&graph)
        .into_iter()
        .filter(|c| c.len() > 1)
        .collect();
    if cycles.is_empty() {
        return;
    }
    let mut report = String::new();
    for c in &cycles {
        report.push_str(&format!(
            "\ncycle among {{{}}}:\n",
            c.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
        for from in c {
            for (to, at) in &graph[from] {
                if c.contains(to) {
                    report.push_str(&format!("  {from} -> {to}: {}\n", at.join(", ")));
                }
            }
        }
    }
    panic!("the top-level modules of proxy/src depend on each other in a cycle:{report}");
}

/// Every top-level module's references to the others, from the files under `src`.
fn module_graph(src: &Path) -> Graph {
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("reading lib.rs");
    let modules: BTreeSet<String> = declared_modules(&tokens(&strip(&lib)));
    let mut graph = Graph::new();
    for m in &modules {
        graph.entry(m.clone()).or_default();
        let mut files = Vec::new();
        let file = src.join(format!("{m}.rs"));
        if file.is_file() {
            files.push(file);
        }
        collect_rs(&src.join(m), &mut files);
        let mut test_files = BTreeSet::new();
        // Files a `#[cfg(test)] mod x;` declares are found while scanning their
        // parent, which sorts before them (`a.rs` < `a/`, `mod.rs` declares its siblings).
        files.sort();
        for f in files {
            if test_files.contains(&f) || is_test_file(&f) {
                continue;
            }
            let text = std::fs::read_to_string(&f).expect("reading a source file");
            let rel = f.strip_prefix(src).unwrap();
            let scan = scan(&text, &module_path(rel));
            for (to, line) in scan.refs {
                if modules.contains(&to) && &to != m {
                    graph
                        .entry(m.clone())
                        .or_default()
                        .entry(to)
                        .or_default()
                        .push(format!("proxy/src/{}:{line}", rel.display()));
                }
            }
            let dir = match f.file_name().and_then(|n| n.to_str()) {
                Some("mod.rs") => f.parent().unwrap().to_path_buf(),
                _ => f.with_extension(""),
            };
            for t in scan.test_mods {
                test_files.insert(dir.join(format!("{t}.rs")));
                let mut under = Vec::new();
                collect_rs(&dir.join(&t), &mut under);
                test_files.extend(under);
            }
        }
    }
    graph
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect_rs(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn is_test_file(f: &Path) -> bool {
    let name = f.file_stem().and_then(|n| n.to_str()).unwrap_or("");
    name == "tests" || name.ends_with("_tests")
}

/// The module path of a file under src: `sink/deliver.rs` is `[sink, deliver]`,
/// `sink/mod.rs` is `[sink]`.
fn module_path(rel: &Path) -> Vec<String> {
    let mut path: Vec<String> = rel
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if path.last().is_some_and(|l| l == "mod") {
        path.pop();
    }
    path
}

/// `pub mod x;` and `mod x;` at the top of lib.rs.
fn declared_modules(toks: &[Tok]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, t) in toks.iter().enumerate() {
        if t.text == "mod" {
            if let (Some(name), Some(semi)) = (toks.get(i + 1), toks.get(i + 2)) {
                if semi.text == ";" {
                    out.insert(name.text.clone());
                }
            }
        }
    }
    out
}

/// The source with comments blanked and string and char literals emptied,
/// lines kept where they were.
fn strip(src: &str) -> String {
    let b: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    // Keeps the newlines of what is skipped, so line numbers stay right.
    let skip = |out: &mut String, from: &[char]| {
        out.extend(from.iter().filter(|c| **c == '\n'));
    };
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let (start, mut depth) = (i, 0);
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            skip(&mut out, &b[start..i.min(b.len())]);
        } else if let Some(hashes) = raw_string_at(&b, i) {
            // r"..", r#".."#, br#".."#: ends at a quote followed by as many #.
            let start = i;
            i = b[i..].iter().position(|c| *c == '"').unwrap() + i + 1;
            while i < b.len() {
                if b[i] == '"'
                    && b[i + 1..]
                        .iter()
                        .take(hashes)
                        .filter(|c| **c == '#')
                        .count()
                        == hashes
                {
                    i += 1 + hashes;
                    break;
                }
                i += 1;
            }
            skip(&mut out, &b[start..i.min(b.len())]);
            out.push_str("\"\"");
        } else if c == '"' {
            let start = i;
            i += 1;
            while i < b.len() && b[i] != '"' {
                i += if b[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            skip(&mut out, &b[start..i.min(b.len())]);
            out.push_str("\"\"");
        } else if c == '\'' && is_char_literal(&b, i) {
            i += 1;
            while i < b.len() && b[i] != '\'' {
                i += if b[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("' '");
        } else {
            // An identifier is copied whole, so the `r` or `b` ending one is no raw string's start.
            if is_ident_char(c) {
                while i < b.len() && is_ident_char(b[i]) {
                    out.push(b[i]);
                    i += 1;
                }
                continue;
            }
            out.push(c);
            i += 1;
        }
    }
    out
}

/// `Some(number of #)` when a raw string literal starts at `i`.
fn raw_string_at(b: &[char], i: usize) -> Option<usize> {
    let mut j = i;
    if b.get(j) == Some(&'b') || b.get(j) == Some(&'c') {
        j += 1;
    }
    if b.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let hashes = b[j..].iter().take_while(|c| **c == '#').count();
    (b.get(j + hashes) == Some(&'"')).then_some(hashes)
}

/// A quote starting a char literal ('a', '\n', '\u{1F600}'), not a lifetime ('a).
fn is_char_literal(b: &[char], i: usize) -> bool {
    matches!(
        (b.get(i + 1), b.get(i + 2)),
        (Some('\\'), _) | (Some(_), Some('\''))
    )
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

struct Tok {
    text: String,
    line: usize,
}

/// Identifiers, `::`, and single punctuation characters, with their lines.
fn tokens(src: &str) -> Vec<Tok> {
    let b: Vec<char> = src.chars().collect();
    let (mut out, mut i, mut line) = (Vec::new(), 0, 1);
    while i < b.len() {
        let c = b[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if is_ident_char(c) {
            let start = i;
            while i < b.len() && is_ident_char(b[i]) {
                i += 1;
            }
            let text: String = b[start..i].iter().collect();
            out.push(Tok { text, line });
        } else if c == ':' && b.get(i + 1) == Some(&':') {
            out.push(Tok {
                text: "::".into(),
                line,
            });
            i += 2;
        } else {
            out.push(Tok {
                text: c.to_string(),
                line,
            });
            i += 1;
        }
    }
    out
}

/// What one file refers to: (top-level module, line); and the test modules it declares (`#[cfg(test)] mod x;`).
struct Scan {
    refs: Vec<(String, usize)>,
    test_mods: Vec<String>,
}

fn scan(src: &str, path: &[String]) -> Scan {
    let toks = tokens(&strip(src));
    let mut scan = Scan {
        refs: Vec::new(),
        test_mods: Vec::new(),
    };
    // Inline `mod x { .. }` blocks: (name, brace depth inside them).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0;
    let mut i = 0;
    let text = |j: usize| toks.get(j).map(|t| t.text.as_str()).unwrap_or("");
    while i < toks.len() {
        match text(i) {
            "{" => depth += 1,
            "}" => {
                depth -= 1;
                if inline.last().is_some_and(|(_, d)| *d > depth) {
                    inline.pop();
                }
            }
            "#" if text(i + 1) == "["
                && text(i + 2) == "cfg"
                && text(i + 3) == "("
                && text(i + 4) == "test"
                && text(i + 5) == ")"
                && text(i + 6) == "]" =>
            {
                i = skip_item(&toks, i + 7, &mut scan.test_mods);
                continue;
            }
            "mod" if text(i + 2) == "{" => {
                inline.push((text(i + 1).to_string(), depth + 1));
            }
            "crate" if text(i + 1) == "::" && text(i.wrapping_sub(1)) != "::" => {
                path_heads(&toks, i + 2, &mut scan.refs);
            }
            "super" if text(i.wrapping_sub(1)) != "::" => {
                let mut here: Vec<&str> = path.iter().map(String::as_str).collect();
                here.extend(inline.iter().map(|(n, _)| n.as_str()));
                let mut j = i;
                while text(j) == "super" && text(j + 1) == "::" {
                    here.pop();
                    j += 2;
                }
                if j > i && here.is_empty() {
                    path_heads(&toks, j, &mut scan.refs);
                }
                // `pub(super)` is no path.
                i = j.max(i + 1);
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    scan
}

/// The first segment of a path at `i`, or of each path in a `{a::b, c}` group.
fn path_heads(toks: &[Tok], i: usize, out: &mut Vec<(String, usize)>) {
    let Some(t) = toks.get(i) else { return };
    if t.text != "{" {
        if t.text.chars().next().is_some_and(is_ident_char) {
            out.push((t.text.clone(), t.line));
        }
        return;
    }
    let mut depth = 0;
    let mut at_start = true;
    for t in &toks[i..] {
        match t.text.as_str() {
            "{" => {
                depth += 1;
                at_start = depth == 1;
            }
            "}" => {
                depth -= 1;
                if depth == 0 {
                    return;
                }
            }
            "," => at_start = depth == 1,
            s => {
                if at_start && depth == 1 && s.chars().next().is_some_and(is_ident_char) {
                    out.push((s.to_string(), t.line));
                }
                at_start = false;
            }
        }
    }
}

/// Skips the item starting at `i` (its further attributes included): to its
/// `;`, or past its `{ .. }` block. Records `mod x;` in `test_mods`.
fn skip_item(toks: &[Tok], mut i: usize, test_mods: &mut Vec<String>) -> usize {
    let text = |j: usize| toks.get(j).map(|t| t.text.as_str()).unwrap_or("");
    let mut nesting = 0;
    while i < toks.len() {
        match text(i) {
            "(" | "[" => nesting += 1,
            ")" | "]" => nesting -= 1,
            "mod" if nesting == 0 && text(i + 2) == ";" => {
                test_mods.push(text(i + 1).to_string());
                return i + 3;
            }
            ";" if nesting == 0 => return i + 1,
            "{" if nesting == 0 => {
                let mut depth = 0;
                while i < toks.len() {
                    match text(i) {
                        "{" => depth += 1,
                        "}" => {
                            depth -= 1;
                            if depth == 0 {
                                return i + 1;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    i
}

/// Tarjan's strongly connected components of `graph`.
fn strongly_connected(graph: &Graph) -> Vec<BTreeSet<String>> {
    struct Tarjan<'a> {
        graph: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<BTreeSet<String>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flat_map(|e| e.keys()) {
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
                let mut c = BTreeSet::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    c.insert(w.to_string());
                    if w == v {
                        break;
                    }
                }
                self.out.push(c);
            }
        }
    }
    let mut t = Tarjan {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v.as_str()) {
            t.visit(v);
        }
    }
    t.out
}

// The checker's own reading of sources, on small examples.

fn heads(src: &str, path: &[&str]) -> Vec<String> {
    let path: Vec<String> = path.iter().map(|s| s.to_string()).collect();
    scan(src, &path).refs.into_iter().map(|(m, _)| m).collect()
}

#[test]
fn reads_paths_groups_and_super_chains() {
    let src = "use crate::sink::{Route, Slot};\n\
               use crate::{event::Batch, plan::{Plan, TenantPlan}, budget};\n\
               fn f() { crate::quota::rate::quota(1, None); }\n\
               use super::super::archive::X;\n\
               use super::sibling;\n";
    assert_eq!(
        heads(src, &["pipeline", "inner"]),
        ["sink", "event", "plan", "budget", "quota", "archive"]
    );
    // One `super` from a module's mod.rs reaches the crate root.
    assert_eq!(heads("use super::wal::Reader;", &["buffer"]), ["wal"]);
}

#[test]
fn leaves_out_comments_strings_and_test_code() {
    let src = r####"
        // use crate::a;
        /* crate::b /* nested */ crate::c */
        /// [`crate::d`]
        const S: &str = "crate::e /* not a comment";
        const R: &str = r#"crate::f "quoted" "#;
        const C: char = '"'; fn g<'a>(x: &'a str) {}
        #[cfg(test)]
        mod tests { use crate::h; fn t() { crate::i::x(); } }
        #[cfg(test)]
        #[allow(unused)]
        use crate::j;
        #[cfg(test)]
        mod deliver_tests;
        pub(super) use crate::kept;
        mod inline { fn f() { super::super::outside(); } }
    "####;
    let scan = scan(src, &["sink".to_string()]);
    let refs: Vec<_> = scan.refs.iter().map(|(m, l)| (m.as_str(), *l)).collect();
    assert_eq!(refs, [("kept", 15), ("outside", 16)]);
    assert_eq!(scan.test_mods, ["deliver_tests"]);
}

#[test]
fn finds_a_cycle_and_only_it() {
    let mut g = Graph::new();
    for (a, b) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d"), ("d", "e")] {
        g.entry(a.into()).or_default().insert(b.into(), vec![]);
        g.entry(b.into()).or_default();
    }
    let cycles: Vec<_> = strongly_connected(&g)
        .into_iter()
        .filter(|c| c.len() > 1)
        .collect();
    assert_eq!(cycles.len(), 1);
    assert_eq!(cycles[0], ["a", "b", "c"].map(String::from).into());
}
