//! The layout tells the design: no module of a crate imports one that imports it back (directly or through
//! others), and the speaker does not depend on the controller. Reads the sources; needs nothing running.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The non-test code of each source file of a crate's `src/`, by module path: `run` for `src/run.rs`,
/// `model::plan` for `src/model/plan.rs`, `model` for `src/model/mod.rs`.
fn sources(crate_dir: &str) -> BTreeMap<String, String> {
    fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).expect("src dir").flatten() {
            let path = entry.path();
            let stem = path.file_stem().expect("file name").to_string_lossy().into_owned();
            if path.is_dir() {
                walk(&path, &format!("{prefix}{stem}::"), out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let module =
                    if stem == "mod" { prefix.trim_end_matches("::").to_string() } else { format!("{prefix}{stem}") };
                let text = std::fs::read_to_string(&path).expect("source");
                // Comments may point anywhere (docs link the shell from the model): only code imports.
                let code = text.split("#[cfg(test)]").next().unwrap_or_default();
                let code: Vec<&str> = code.lines().filter(|l| !l.trim_start().starts_with("//")).collect();
                out.insert(module, code.join("\n"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(crate_dir).join("src"), "", &mut out);
    out
}

/// The top-level module (a file of `src/` or a folder) of a module path.
fn top(module: &str) -> &str {
    module.split("::").next().unwrap_or(module)
}

/// Which top-level modules (files of `src/`, or folders taken as one) each top-level module refers to through
/// `crate::<module>`.
fn imports(crate_dir: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, code) in sources(crate_dir) {
        let from = top(&module).to_string();
        let used: BTreeSet<String> = code
            .match_indices("crate::")
            .map(|(i, _)| code[i + 7..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>())
            .filter(|m| *m != from)
            .collect();
        graph.entry(from).or_default().extend(used);
    }
    graph
}

/// The speaker's pure folders, and what they may not use: they decide, the other folders do the I/O. The
/// simulation of the liveness protocol is pure too: it runs the model on a virtual clock.
const PURE: [&str; 3] = ["model", "wire", "simulation"];
/// The speaker's I/O and wiring, which the pure folders never import.
const SHELL: [&str; 7] = ["datapath", "gossip", "kube", "telemetry", "run", "planner", "wake"];

/// Imports of the shell by the pure folders, and of `model` by `wire` (frames know nothing of elections).
fn pure_imports_shell(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<(String, String)> {
    let mut bad = Vec::new();
    for pure in PURE {
        for used in graph.get(pure).into_iter().flatten() {
            if SHELL.contains(&used.as_str()) || (pure == "wire" && used == "model") {
                bad.push((pure.to_string(), used.clone()));
            }
        }
    }
    bad
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
fn the_speakers_folders_show_pure_and_io_and_pure_never_imports_io() {
    let modules = sources("speaker");
    for folder in PURE.iter().chain(&["datapath", "gossip", "kube", "telemetry"]) {
        assert!(modules.contains_key(*folder), "speaker/src/{folder}/ is missing");
    }
    let graph = imports("speaker");
    assert_eq!(pure_imports_shell(&graph), [], "model/, wire/ or the simulation import I/O");
    assert!(graph["model"].contains("wire"), "read model/'s imports");
}

#[test]
fn the_layout_check_finds_a_planted_import_of_io_in_the_model() {
    let mut graph = imports("speaker");
    graph.entry("model".into()).or_default().insert("kube".into());
    assert_eq!(pure_imports_shell(&graph), [("model".to_string(), "kube".to_string())]);
}

#[test]
fn the_speakers_run_only_wires() {
    let modules = sources("speaker");
    let lines = modules["run"].lines().count();
    assert!(lines <= 150, "speaker/src/run.rs has {lines} lines of code; policy and wording belong in their modules");
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

/// Every end-to-end suite is in exactly one of the Makefile's tiers: `make check` (PURE_SUITES, no root),
/// `make test` (LAB_SUITES) or `make upgrade-test` (UPGRADE_SUITES, which need an old build too), so a new file
/// in tests/tests/ is never silently left out of all of them.
#[test]
fn every_test_file_is_in_exactly_one_make_tier() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let makefile = std::fs::read_to_string(root.join("../Makefile")).expect("Makefile");
    let (pure, lab, upgrade) = (
        make_list(&makefile, "PURE_SUITES"),
        make_list(&makefile, "LAB_SUITES"),
        make_list(&makefile, "UPGRADE_SUITES"),
    );
    assert!(pure.contains("layout"), "this file is pure: {pure:?}");
    let files: BTreeSet<String> = std::fs::read_dir(root.join("tests"))
        .expect("tests dir")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".rs").map(String::from))
        .collect();
    for file in &files {
        let tiers = [&pure, &lab, &upgrade].iter().filter(|tier| tier.contains(file)).count();
        assert_eq!(tiers, 1, "tests/tests/{file}.rs: in one of PURE_SUITES, LAB_SUITES and UPGRADE_SUITES");
    }
    // Suites outside `make test` must not run under a plain `cargo test` either (they need what CI lacks).
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("tests/Cargo.toml");
    for suite in &upgrade {
        let target = format!("[[test]]\nname = \"{suite}\"\npath = \"tests/{suite}.rs\"\ntest = false\n");
        assert!(manifest.contains(&target), "tests/Cargo.toml must declare {suite} with `test = false`");
    }
    for listed in pure.iter().chain(&lab).chain(&upgrade) {
        assert!(files.contains(listed), "the Makefile lists {listed}, which tests/tests/ does not have");
    }
}
