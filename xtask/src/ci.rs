//! `cargo xtask ci`: exactly what CI runs. Format check, clippy with warnings denied, the tests
//! of every workspace crate on its own (so each crate builds and passes alone), then tidy.
//! Stops at the first failing step. Installs etcdctl (Debian's etcd-client) when it is missing.
//! Every cargo command gets `PROTOC` (the vendored protoc unless
//! already set), so the `etcd-client` build script needs no system protoc.
use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

use crate::{metadata::Workspace, tidy, tools};

/// One step of the CI run.
enum Action {
    Cargo(Vec<String>),
    Tidy,
}

struct Step {
    name: String,
    action: Action,
}

impl Step {
    fn cargo(name: impl Into<String>, args: &[&str]) -> Self {
        Self {
            name: name.into(),
            action: Action::Cargo(args.iter().map(|arg| (*arg).to_owned()).collect()),
        }
    }
}

/// The steps, in order: tests follow the startup order, so a failure in a low crate shows first.
fn steps(crates: &[String]) -> Vec<Step> {
    let mut steps = vec![
        Step::cargo("fmt", &["fmt", "--all", "--check"]),
        Step::cargo(
            "clippy",
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        ),
    ];
    for krate in crates {
        steps.push(Step::cargo(
            format!("test {krate}"),
            &["test", "-p", krate.as_str()],
        ));
    }
    steps.push(Step {
        name: "tidy".into(),
        action: Action::Tidy,
    });
    steps
}

/// Workspace crates in startup order; crates not in it (tooling, new crates) last, by name.
fn test_order(workspace: &Workspace) -> Vec<String> {
    let mut names: Vec<String> = workspace.crates.iter().map(|c| c.name.clone()).collect();
    names.sort_by_key(|name| {
        let order = tidy::STARTUP_ORDER
            .iter()
            .position(|known| known == name)
            .unwrap_or(usize::MAX);
        (order, name.clone())
    });
    names
}

/// Runs every CI step from `root`; fails naming the first step that failed.
pub(crate) fn run(root: &Path) -> anyhow::Result<()> {
    // the node's etcd endpoint is tested with etcdctl (Debian's etcd-client), installed here
    // when missing so that `cargo xtask ci` runs on a fresh machine
    let etcdctl = tools::require_debian("etcdctl", "etcd-client")?;
    println!("ci: etcdctl at {}", etcdctl.display());
    let workspace = Workspace::load(root)?;
    let steps = steps(&test_order(&workspace));
    let total = Instant::now();
    for (index, step) in steps.iter().enumerate() {
        println!("==> [{}/{}] {}", index + 1, steps.len(), step.name);
        let started = Instant::now();
        let outcome = match &step.action {
            Action::Cargo(args) => run_cargo(root, args),
            Action::Tidy => tidy::run(root),
        };
        let elapsed = started.elapsed();
        match outcome {
            Ok(()) => println!("ok      {:<24} {}", step.name, human(elapsed)),
            Err(err) => {
                println!("FAILED  {:<24} {}", step.name, human(elapsed));
                return Err(err.context(format!("ci step `{}` failed", step.name)));
            }
        }
    }
    println!(
        "ci: all {} steps passed in {}",
        steps.len(),
        human(total.elapsed())
    );
    Ok(())
}

fn run_cargo(root: &Path, args: &[String]) -> anyhow::Result<()> {
    let mut command: Command = crate::cargo();
    command.args(args).current_dir(root);
    tools::with_protoc(&mut command)?;
    let status = command
        .status()
        .with_context(|| format!("failed to run cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} exited with {status}", args.join(" "));
    }
    Ok(())
}

/// `850ms`, `12.3s`, `2m05s`.
pub(crate) fn human(elapsed: Duration) -> String {
    let millis = elapsed.as_millis();
    if millis < 1_000 {
        format!("{millis}ms")
    } else if millis < 60_000 {
        format!("{:.1}s", elapsed.as_secs_f64())
    } else {
        let secs = elapsed.as_secs();
        format!("{}m{:02}s", secs / 60, secs % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::Crate;

    #[test]
    fn steps_test_every_crate_in_startup_order_then_tidy() {
        let workspace = Workspace {
            crates: ["xtask", "node", "vault", "lifecycle", "gossip"]
                .iter()
                .map(|name| Crate {
                    name: (*name).into(),
                    edges: Vec::new(),
                })
                .collect(),
            target_dir: "target".into(),
        };
        let names: Vec<String> = steps(&test_order(&workspace))
            .into_iter()
            .map(|step| step.name)
            .collect();
        assert_eq!(
            names,
            [
                "fmt",
                "clippy",
                "test lifecycle",
                "test vault",
                "test node",
                "test gossip",
                "test xtask",
                "tidy"
            ]
        );
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(Duration::from_millis(850)), "850ms");
        assert_eq!(human(Duration::from_millis(12_340)), "12.3s");
        assert_eq!(human(Duration::from_secs(125)), "2m05s");
    }
}
