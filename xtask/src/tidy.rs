//! Tidy checks, run by `cargo xtask tidy`, by `cargo xtask ci` and as a `#[test]`:
//! every `.rs` file starts with a `//!` doc comment, and every dependency between workspace
//! crates points down the startup order.
use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context};

use crate::metadata::{Crate, DepKind, Workspace};

/// The startup order of the workspace crates (DESIGN.md section 2): a crate may depend only
/// on crates that come before it.
pub(crate) const STARTUP_ORDER: &[&str] = &[
    "lifecycle",
    "vault",
    "configuration",
    "network",
    "raft",
    "metastorage",
    "baseline",
    "affinity",
    "schema",
    "table",
    "node",
];

/// Tooling crates: outside the startup graph, they depend on no workspace crate and no
/// workspace crate depends on them.
pub(crate) const TOOLING: &[&str] = &["xtask"];

/// Runs every tidy check on the repository at `root` and prints a summary.
pub(crate) fn run(root: &Path) -> anyhow::Result<()> {
    let summary = check(root)?;
    println!("tidy: {summary}");
    Ok(())
}

/// Runs every tidy check on the repository at `root`; fails listing every problem found.
pub(crate) fn check(root: &Path) -> anyhow::Result<String> {
    let (files, undocumented) = check_docs(root)?;
    let workspace = Workspace::load(root)?;
    let edge_count: usize = workspace.crates.iter().map(|c| c.edges.len()).sum();
    let bad_edges = check_edges(&workspace.crates);

    let mut problems = Vec::new();
    for path in &undocumented {
        problems.push(format!(
            "missing `//!` doc at the top of {}",
            path.display()
        ));
    }
    problems.extend(bad_edges);
    if !problems.is_empty() {
        bail!(
            "tidy found {} problem(s):\n  {}",
            problems.len(),
            problems.join("\n  ")
        );
    }
    Ok(format!(
        "{files} .rs files start with `//!`; {} crates, {edge_count} internal edges all point down the startup order",
        workspace.crates.len()
    ))
}

/// Walks `root` and returns how many `.rs` files it checked and the ones (relative to `root`,
/// sorted) whose first bytes are not `//!`. Skips `.git`, `target/` and `fuzz/target/`.
pub(crate) fn check_docs(root: &Path) -> anyhow::Result<(usize, Vec<PathBuf>)> {
    let skipped = [
        root.join(".git"),
        root.join("target"),
        root.join("fuzz/target"),
    ];
    let mut stack = vec![root.to_path_buf()];
    let mut checked = 0;
    let mut offending = Vec::new();
    while let Some(dir) = stack.pop() {
        let entries =
            fs::read_dir(&dir).with_context(|| format!("failed to list {}", dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("failed to list {}", dir.display()))?;
            let path = entry.path();
            // symlinks are neither followed nor checked: they point at files checked elsewhere
            let file_type = entry
                .file_type()
                .with_context(|| format!("failed to stat {}", path.display()))?;
            if file_type.is_dir() {
                if !skipped.contains(&path) {
                    stack.push(path);
                }
            } else if file_type.is_file() && path.extension().is_some_and(|ext| ext == "rs") {
                checked += 1;
                let text = fs::read(&path)
                    .with_context(|| format!("failed to read {}", path.display()))?;
                if !text.starts_with(b"//!") {
                    offending.push(path.strip_prefix(root).unwrap_or(&path).to_path_buf());
                }
            }
        }
    }
    offending.sort();
    Ok((checked, offending))
}

fn order_of(name: &str) -> Option<usize> {
    STARTUP_ORDER.iter().position(|&known| known == name)
}

/// Checks the internal dependency graph against [`STARTUP_ORDER`] and [`TOOLING`]; returns one
/// message per problem (empty when the graph is good).
pub(crate) fn check_edges(crates: &[Crate]) -> Vec<String> {
    let mut problems = Vec::new();
    for krate in crates {
        let from = krate.name.as_str();
        if order_of(from).is_none() && !TOOLING.contains(&from) {
            problems.push(format!(
                "unknown crate: {from} is a workspace member but not in the startup order \
                 (add it to STARTUP_ORDER in xtask/src/tidy.rs, after the crates it depends on)"
            ));
        }
        for edge in &krate.edges {
            let to = edge.to.as_str();
            let kind = match edge.kind {
                DepKind::Normal => "",
                DepKind::Dev => "; dev-dependency",
                DepKind::Build => "; build-dependency",
            };
            if TOOLING.contains(&from) {
                problems.push(format!(
                    "tooling edge: {from} -> {to} ({from} is tooling and may depend on nothing internal{kind})"
                ));
                continue;
            }
            if TOOLING.contains(&to) {
                problems.push(format!(
                    "tooling edge: {from} -> {to} ({to} is tooling; no crate may depend on it{kind})"
                ));
                continue;
            }
            match (order_of(from), order_of(to)) {
                (Some(from_order), Some(to_order)) => {
                    if to_order >= from_order {
                        problems.push(format!(
                            "back edge: {from} -> {to} ({from} is order {from_order}, {to} is order {to_order}{kind})"
                        ));
                    }
                }
                (from_order, to_order) => {
                    let unknown: Vec<&str> = [(from, from_order), (to, to_order)]
                        .into_iter()
                        .filter(|(_, order)| order.is_none())
                        .map(|(name, _)| name)
                        .collect();
                    problems.push(format!(
                        "edge with unknown crate: {from} -> {to} ({} not in the startup order{kind})",
                        unknown.join(" and ")
                    ));
                }
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::Edge;

    fn krate(name: &str, edges: &[(&str, DepKind)]) -> Crate {
        Crate {
            name: name.into(),
            edges: edges
                .iter()
                .map(|&(to, kind)| Edge {
                    to: to.into(),
                    kind,
                })
                .collect(),
        }
    }

    #[test]
    fn real_workspace_is_tidy() {
        let root = crate::workspace_root();
        if let Err(err) = check(&root) {
            panic!("{err:#}");
        }
    }

    #[test]
    fn good_graph_passes() {
        use DepKind::{Dev, Normal};
        let graph = [
            krate("lifecycle", &[]),
            krate("vault", &[("lifecycle", Normal)]),
            krate("configuration", &[("vault", Normal), ("lifecycle", Dev)]),
            krate("network", &[("configuration", Normal), ("vault", Normal)]),
            krate(
                "node",
                &[("network", Normal), ("lifecycle", Normal), ("vault", Dev)],
            ),
            krate("xtask", &[]),
        ];
        assert_eq!(check_edges(&graph), Vec::<String>::new());
    }

    #[test]
    fn back_edge_is_caught_with_both_names() {
        let graph = [
            krate("vault", &[("network", DepKind::Normal)]),
            krate("network", &[("vault", DepKind::Normal)]),
        ];
        assert_eq!(
            check_edges(&graph),
            vec!["back edge: vault -> network (vault is order 1, network is order 3)"]
        );
    }

    #[test]
    fn dev_back_edge_is_caught() {
        let graph = [
            krate("lifecycle", &[("node", DepKind::Dev)]),
            krate("node", &[]),
        ];
        assert_eq!(
            check_edges(&graph),
            vec![
                "back edge: lifecycle -> node (lifecycle is order 0, node is order 10; dev-dependency)"
            ]
        );
    }

    #[test]
    fn tooling_edges_are_caught_both_ways() {
        let graph = [
            krate("xtask", &[("vault", DepKind::Normal)]),
            krate("vault", &[("xtask", DepKind::Dev)]),
        ];
        let problems = check_edges(&graph);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("tooling edge: xtask -> vault"));
        assert!(problems[1].starts_with("tooling edge: vault -> xtask"));
    }

    #[test]
    fn unknown_crate_is_caught() {
        let graph = [
            krate("lifecycle", &[]),
            krate("gossip", &[("lifecycle", DepKind::Normal)]),
        ];
        let problems = check_edges(&graph);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("unknown crate: gossip is a workspace member"));
        assert_eq!(
            problems[1],
            "edge with unknown crate: gossip -> lifecycle (gossip not in the startup order)"
        );
    }

    fn write(root: &Path, relative: &str, text: &str) {
        let path = root.join(relative);
        let parent = path.parent().expect("relative path has a parent");
        fs::create_dir_all(parent).expect("create test directory");
        fs::write(path, text).expect("write test file");
    }

    #[test]
    fn docs_check_names_every_offending_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        write(root, "a/src/lib.rs", "//! Good.\nfn f() {}\n");
        write(root, "a/src/inner.rs", "//!\n");
        write(root, "a/src/plain.rs", "// not a doc\n");
        write(
            root,
            "a/src/shebang.rs",
            "#!/usr/bin/env run-cargo-script\n//! Doc.\n",
        );
        write(root, "a/src/attr.rs", "#![allow(dead_code)]\n//! Doc.\n");
        write(root, "b/blank.rs", "\n//! Doc after a blank line.\n");
        write(root, "b/indented.rs", " //! Doc after a space.\n");
        write(root, "b/empty.rs", "");
        write(root, "b/notes.txt", "not rust\n");
        // build output is not checked
        write(root, "target/debug/build/out.rs", "fn generated() {}\n");
        write(root, "fuzz/target/out.rs", "fn generated() {}\n");
        write(
            root,
            "fuzz/fuzz_targets/decode.rs",
            "fn undocumented() {}\n",
        );

        let (checked, offending) = check_docs(root).expect("walk temp dir");
        assert_eq!(checked, 9);
        let expected: Vec<PathBuf> = [
            "a/src/attr.rs",
            "a/src/plain.rs",
            "a/src/shebang.rs",
            "b/blank.rs",
            "b/empty.rs",
            "b/indented.rs",
            "fuzz/fuzz_targets/decode.rs",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(offending, expected);
    }

    #[test]
    fn docs_check_passes_a_tidy_tree() {
        let dir = tempfile::tempdir().expect("temp dir");
        write(dir.path(), "x/src/main.rs", "//! Main.\nfn main() {}\n");
        write(dir.path(), "x/tests/it/main.rs", "//! Tests.\nmod a;\n");
        let (checked, offending) = check_docs(dir.path()).expect("walk temp dir");
        assert_eq!((checked, offending), (2, Vec::new()));
    }
}
