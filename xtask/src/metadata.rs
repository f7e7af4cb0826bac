//! The workspace as `cargo metadata --format-version 1 --no-deps` describes it: its members,
//! their dependencies on each other (the startup graph) and the target directory.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

/// How a crate depends on another one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DepKind {
    Normal,
    Dev,
    Build,
}

/// One dependency of a workspace crate on another workspace crate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Edge {
    pub(crate) to: String,
    pub(crate) kind: DepKind,
}

/// A workspace crate and its internal dependencies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Crate {
    pub(crate) name: String,
    pub(crate) edges: Vec<Edge>,
}

/// What xtask needs to know about the workspace.
#[derive(Debug)]
pub(crate) struct Workspace {
    pub(crate) crates: Vec<Crate>,
    pub(crate) target_dir: PathBuf,
}

#[derive(Deserialize)]
struct RawMetadata {
    packages: Vec<RawPackage>,
    workspace_members: Vec<String>,
    target_directory: PathBuf,
}

#[derive(Deserialize)]
struct RawPackage {
    id: String,
    name: String,
    dependencies: Vec<RawDependency>,
}

#[derive(Deserialize)]
struct RawDependency {
    name: String,
    source: Option<String>,
    kind: Option<String>,
}

impl Workspace {
    /// Runs `cargo metadata` in `root` and reads the workspace from it.
    pub(crate) fn load(root: &Path) -> anyhow::Result<Self> {
        let output = crate::cargo()
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .current_dir(root)
            .output()
            .context("failed to run cargo metadata")?;
        if !output.status.success() {
            bail!(
                "cargo metadata failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Self::parse(&output.stdout)
    }

    /// Reads the workspace from `cargo metadata` JSON output.
    pub(crate) fn parse(json: &[u8]) -> anyhow::Result<Self> {
        let raw: RawMetadata =
            serde_json::from_slice(json).context("cargo metadata printed unexpected json")?;
        let members: Vec<&RawPackage> = raw
            .packages
            .iter()
            .filter(|package| raw.workspace_members.contains(&package.id))
            .collect();
        let is_member = |name: &str| members.iter().any(|package| package.name == name);
        let crates = members
            .iter()
            .map(|package| {
                let mut edges: Vec<Edge> = package
                    .dependencies
                    .iter()
                    // a registry crate of the same name is not an internal edge
                    .filter(|dep| dep.source.is_none() && is_member(&dep.name))
                    .map(|dep| Edge {
                        to: dep.name.clone(),
                        kind: match dep.kind.as_deref() {
                            Some("dev") => DepKind::Dev,
                            Some("build") => DepKind::Build,
                            _ => DepKind::Normal,
                        },
                    })
                    .collect();
                edges.sort_by(|a, b| a.to.cmp(&b.to));
                Crate {
                    name: package.name.clone(),
                    edges,
                }
            })
            .collect();
        Ok(Self {
            crates,
            target_dir: raw.target_directory,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_keeps_only_internal_path_edges() {
        let json = br#"{
            "packages": [
                {"id": "vault 0.1.0", "name": "vault", "dependencies": [
                    {"name": "lifecycle", "source": null, "kind": null},
                    {"name": "sled", "source": "registry+https://github.com/rust-lang/crates.io-index", "kind": null},
                    {"name": "tempfile", "source": "registry+https://github.com/rust-lang/crates.io-index", "kind": "dev"}
                ]},
                {"id": "lifecycle 0.1.0", "name": "lifecycle", "dependencies": [
                    {"name": "vault", "source": null, "kind": "dev"},
                    {"name": "node", "source": "registry+https://github.com/rust-lang/crates.io-index", "kind": null}
                ]}
            ],
            "workspace_members": ["vault 0.1.0", "lifecycle 0.1.0"],
            "target_directory": "/tmp/target",
            "workspace_root": "/tmp"
        }"#;
        let workspace = Workspace::parse(json).expect("valid metadata");
        assert_eq!(workspace.target_dir, PathBuf::from("/tmp/target"));
        assert_eq!(
            workspace.crates,
            vec![
                Crate {
                    name: "vault".into(),
                    edges: vec![Edge {
                        to: "lifecycle".into(),
                        kind: DepKind::Normal
                    }],
                },
                Crate {
                    name: "lifecycle".into(),
                    edges: vec![Edge {
                        to: "vault".into(),
                        kind: DepKind::Dev
                    }],
                },
            ]
        );
    }

    #[test]
    fn parse_rejects_garbage() {
        assert!(Workspace::parse(b"{\"packages\": 3}").is_err());
    }
}
