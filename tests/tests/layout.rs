//! The layout tells the design: no module of a crate imports one that imports it back (directly or through
//! others), and the speaker does not depend on the controller. Reads the sources; needs nothing running.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// `crate::<module>` references of every top-level module of a crate's `src/`, test modules left out.
fn imports(crate_dir: &str) -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(crate_dir).join("src");
    let mut graph = BTreeMap::new();
    for entry in std::fs::read_dir(&src).expect("src dir").flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let module = path.file_stem().expect("file name").to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).expect("source");
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        let used: BTreeSet<String> = code
            .match_indices("crate::")
            .map(|(i, _)| code[i + 7..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>())
            .filter(|m| *m != module)
            .collect();
        graph.insert(module, used);
    }
    graph
}

/// A module that reaches itself again by following imports, with the path it takes.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn walk(graph: &BTreeMap<String, BTreeSet<String>>, path: &mut Vec<String>) -> Option<Vec<String>> {
        let last = path.last()?.clone();
        for next in graph.get(&last).into_iter().flatten() {
            if *next == path[0] {
                let mut found = path.clone();
                found.push(next.clone());
                return Some(found);
            }
            if !path.contains(next) && graph.contains_key(next) {
                path.push(next.clone());
                if let Some(found) = walk(graph, path) {
                    return Some(found);
                }
                path.pop();
            }
        }
        None
    }
    graph.keys().find_map(|start| walk(graph, &mut vec![start.clone()]))
}

#[test]
fn no_crate_has_an_import_circle_between_its_files() {
    for krate in ["crds", "runtime", "controller", "speaker", "plugin"] {
        let graph = imports(krate);
        assert!(graph.len() > 3, "{krate}: read its modules");
        assert_eq!(cycle(&graph), None, "{krate}: import circle");
    }
}

#[test]
fn the_cycle_finder_finds_a_planted_circle() {
    let mut graph = imports("controller");
    graph.entry("keys".into()).or_default().insert("allocator".into());
    assert!(cycle(&graph).is_some(), "keys -> allocator -> service -> keys");
}

#[test]
fn the_speaker_does_not_depend_on_the_controller() {
    let manifest = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../speaker/Cargo.toml"))
        .expect("speaker manifest");
    assert!(!manifest.contains("ferrolb-controller"), "speaker/Cargo.toml names ferrolb-controller");
    assert!(manifest.contains("ferrolb-runtime"), "the shared plumbing comes from ferrolb-runtime");
}

/// The words of a `NAME := a b c` line of the Makefile.
fn make_list(makefile: &str, name: &str) -> BTreeSet<String> {
    let line = makefile.lines().find_map(|l| l.strip_prefix(name)?.trim_start().strip_prefix(":="));
    line.unwrap_or_else(|| panic!("Makefile has no {name} := line")).split_whitespace().map(String::from).collect()
}

/// Every end-to-end suite is in exactly one of the Makefile's tiers: `make check` (PURE_SUITES, no root) or
/// `make test` (LAB_SUITES), so a new file in tests/tests/ is never silently left out of both.
#[test]
fn every_test_file_is_in_exactly_one_make_tier() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let makefile = std::fs::read_to_string(root.join("../Makefile")).expect("Makefile");
    let (pure, lab) = (make_list(&makefile, "PURE_SUITES"), make_list(&makefile, "LAB_SUITES"));
    assert!(pure.contains("layout"), "this file is pure: {pure:?}");
    let files: BTreeSet<String> = std::fs::read_dir(root.join("tests"))
        .expect("tests dir")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".rs").map(String::from))
        .collect();
    for file in &files {
        assert!(
            pure.contains(file) != lab.contains(file),
            "tests/tests/{file}.rs: in PURE_SUITES or LAB_SUITES, not both"
        );
    }
    for listed in pure.union(&lab) {
        assert!(files.contains(listed), "the Makefile lists {listed}, which tests/tests/ does not have");
    }
}
