use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The floors of `docs/architecture.md`, ground first: a module may name
/// (`crate::x`, or `keygate::x` from the binary) only modules of its own floor
/// or below.
const FLOORS: &[&[&str]] = &[
    &["time", "ids", "clock", "policy", "mock"],
    &["key"],
    &["store"],
    &["auth", "session"],
    &["limits", "jobs", "dialect"],
    &["usage", "replicas"],
    &["config", "request"],
    &["proxy"],
    &["state"],
    &["admin", "dashboard", "route", "openapi"],
    &["server", "fuzzing"],
    &["app", "diagnose", "cli", "main"],
];

fn floor(module: &str) -> usize {
    FLOORS.iter().position(|floor| floor.contains(&module)).unwrap_or_else(|| {
        panic!("module `{module}` stands on no floor: add it to FLOORS here and to docs/architecture.md")
    })
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

/// Top-level module → the top-level modules its files name outside comments.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph = BTreeMap::<String, BTreeSet<String>>::new();
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let first = relative.components().next().unwrap().as_os_str().to_str().unwrap();
        let module = first.trim_end_matches(".rs").to_owned();
        if module == "lib" {
            continue;
        }
        let names = graph.entry(module.clone()).or_default();
        for line in std::fs::read_to_string(&file).unwrap().lines() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for root in ["crate::", "keygate::"] {
                for (at, _) in line.match_indices(root) {
                    let rest = &line[at + root.len()..];
                    let name: String = rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
                    if !name.is_empty() && name != module {
                        names.insert(name);
                    }
                }
            }
        }
    }
    graph
}

#[test]
fn modules_import_only_their_floor_and_the_floors_below() {
    let mut upward = Vec::new();
    for (module, names) in imports() {
        for name in names {
            if floor(&name) > floor(&module) {
                upward.push(format!("{module} -> {name}"));
            }
        }
    }
    assert!(upward.is_empty(), "imports from a higher floor: {upward:?}");
}

#[test]
fn no_modules_import_each_other_around_a_circle() {
    let graph = imports();
    // Peel off modules that import nothing left; a circle never peels.
    let mut left: BTreeMap<&str, BTreeSet<&str>> =
        graph.iter().map(|(m, names)| (m.as_str(), names.iter().map(String::as_str).collect())).collect();
    loop {
        let done: Vec<&str> =
            left.iter().filter(|(_, names)| names.iter().all(|n| !left.contains_key(n))).map(|(m, _)| *m).collect();
        if done.is_empty() {
            break;
        }
        for module in done {
            left.remove(module);
        }
    }
    assert!(left.is_empty(), "modules in an import circle, or importing one: {:?}", left.keys().collect::<Vec<_>>());
}
