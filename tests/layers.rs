//! The architecture, checked: ARCHITECTURE.md's `layers` block is read as the rule, and every
//! `crate::` path in `src/` is held to it. A module may use modules of its own layer or of lower
//! ones, never of a higher one; the module graph has no cycles; every module has a layer; and a
//! source file longer than the limit is named, with its reason, in ARCHITECTURE.md.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Lines a source file may have before ARCHITECTURE.md must say why it is longer ("about 600").
const MAX_LINES: usize = 650;

/// `(layer index, layer name)` of each module, from ARCHITECTURE.md's fenced `layers` block:
/// one line per layer, lowest first: `name: module module ...`.
fn layers() -> BTreeMap<String, (usize, String)> {
    let text = std::fs::read_to_string(Path::new(ROOT).join("ARCHITECTURE.md")).unwrap();
    let block = text
        .split("```layers\n")
        .nth(1)
        .expect("ARCHITECTURE.md has a ```layers block")
        .split("```")
        .next()
        .unwrap();
    let mut out = BTreeMap::new();
    for (i, line) in block.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let (name, modules) = line.split_once(':').expect("`layer: modules`");
        for m in modules.split_whitespace() {
            let prev = out.insert(m.to_owned(), (i, name.trim().to_owned()));
            assert!(prev.is_none(), "{m} is in two layers");
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file belongs to (`src/store/lease.rs` -> `store`); `None` for the
/// crate root and `main.rs`.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.to_owned();
    match first.as_str() {
        "lib.rs" | "main.rs" => None,
        f => Some(f.trim_end_matches(".rs").to_owned()),
    }
}

/// The top-level modules a file names through `crate::`, comments left out.
fn uses(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a::b, c, d::{e, f}}`: the names at depth zero
            let mut depth = 0;
            let mut start = true;
            for (j, ch) in group.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && !c.is_whitespace() => {
                        out.insert(ident(&group[j..]));
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.insert(ident(rest));
        }
    }
    // items of the crate root (`BoxFuture`) and `self` belong to no layer
    out.retain(|m| !m.is_empty() && m.chars().next().is_some_and(|c| c.is_ascii_lowercase()));
    out.remove("self");
    out
}

fn graph() -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let src = Path::new(ROOT).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut g: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for f in files {
        let Some(m) = module_of(&src, &f) else {
            continue;
        };
        let text = std::fs::read_to_string(&f).unwrap();
        let entry = g.entry(m.clone()).or_default();
        for u in uses(&text) {
            if u != m {
                entry
                    .entry(u)
                    .or_default()
                    .push(f.strip_prefix(ROOT).unwrap().display().to_string());
            }
        }
    }
    g
}

#[test]
fn the_path_reader_sees_grouped_and_nested_imports_and_skips_comments() {
    let found = uses(
        "use crate::{\n    api::{A, B},\n    store::{self, lease::X},\n    BoxFuture,\n};\n\
         // crate::service is only mentioned\nlet x = crate::sync::run();\n",
    );
    let want: BTreeSet<String> = ["api", "store", "sync"].map(String::from).into();
    assert_eq!(found, want);
}

#[test]
fn every_module_has_a_layer_and_imports_only_its_own_layer_or_lower_ones() {
    let layers = layers();
    let g = graph();
    let mut problems = Vec::new();
    for (m, deps) in &g {
        let Some((lm, lname)) = layers.get(m) else {
            problems.push(format!(
                "module `{m}` has no layer: add it to ARCHITECTURE.md's layers block"
            ));
            continue;
        };
        for (d, files) in deps {
            match layers.get(d) {
                None => problems.push(format!("`{m}` uses `{d}`, which has no layer")),
                Some((ld, dname)) if ld > lm => problems.push(format!(
                    "`{m}` ({lname}) uses `{d}` ({dname}), a higher layer, in {}",
                    files.join(", ")
                )),
                Some(_) => {}
            }
        }
    }
    for m in layers.keys() {
        if !g.contains_key(m) {
            problems.push(format!(
                "ARCHITECTURE.md names `{m}`, which is not a module of src/"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_module_graph_has_no_cycles() {
    let g = graph();
    // depth-first search; a module met again while still on the path closes a cycle
    fn visit(
        m: &str,
        g: &BTreeMap<String, BTreeMap<String, Vec<String>>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        cycles: &mut Vec<String>,
    ) {
        if done.contains(m) {
            return;
        }
        if let Some(i) = path.iter().position(|p| p == m) {
            let mut c = path[i..].to_vec();
            c.push(m.to_owned());
            cycles.push(c.join(" -> "));
            return;
        }
        path.push(m.to_owned());
        for d in g.get(m).into_iter().flat_map(|d| d.keys()) {
            visit(d, g, path, done, cycles);
        }
        path.pop();
        done.insert(m.to_owned());
    }
    let (mut done, mut cycles) = (BTreeSet::new(), Vec::new());
    for m in g.keys() {
        visit(m, &g, &mut Vec::new(), &mut done, &mut cycles);
    }
    assert!(cycles.is_empty(), "module cycles:\n{}", cycles.join("\n"));
}

#[test]
fn files_longer_than_the_limit_are_named_with_a_reason_in_architecture_md() {
    let arch = std::fs::read_to_string(Path::new(ROOT).join("ARCHITECTURE.md")).unwrap();
    let arch = arch
        .split("\n## Long files")
        .nth(1)
        .expect("ARCHITECTURE.md has a \"## Long files\" section")
        .split("\n## ")
        .next()
        .unwrap();
    let mut files = Vec::new();
    rust_files(&Path::new(ROOT).join("src"), &mut files);
    let mut long = Vec::new();
    for f in files {
        let rel = f.strip_prefix(ROOT).unwrap().display().to_string();
        let n = std::fs::read_to_string(&f).unwrap().lines().count();
        if n > MAX_LINES && !arch.contains(&format!("`{rel}`")) {
            long.push(format!("{rel}: {n} lines"));
        }
    }
    assert!(
        long.is_empty(),
        "split these files, or say in ARCHITECTURE.md (\"Long files\") why they stay whole:\n{}",
        long.join("\n")
    );
}
