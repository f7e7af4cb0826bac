//! External tools the tasks need: `protoc` for the `etcd-client` build script (vendored, so a
//! fresh machine needs no system protoc) and Debian packages (`etcd-server`, `etcd-client`)
//! found on `PATH` or installed with apt.
use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};

/// Sets `PROTOC` on `command` to the vendored protoc unless the caller's environment already
/// has `PROTOC`.
pub(crate) fn with_protoc(command: &mut Command) -> anyhow::Result<()> {
    if let Some(path) = protoc_override(std::env::var_os("PROTOC"))? {
        command.env("PROTOC", path);
    }
    Ok(())
}

/// The `PROTOC` to set: none when `current` is set and non-empty, else the vendored binary.
fn protoc_override(current: Option<OsString>) -> anyhow::Result<Option<PathBuf>> {
    if current.is_some_and(|value| !value.is_empty()) {
        return Ok(None);
    }
    let path = protoc_bin_vendored::protoc_bin_path()
        .context("no vendored protoc for this platform; set PROTOC to a protoc binary")?;
    Ok(Some(path))
}

/// The first executable file named `name` in the directories of `path` (a `PATH` value).
fn find_in(path: &OsString, name: &str) -> Option<PathBuf> {
    std::env::split_paths(path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// `binary` from `PATH`, or `None`.
pub(crate) fn which(binary: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| find_in(&path, binary))
}

/// `binary` from `PATH`; if it is missing, installs the Debian `package` that ships it
/// (`apt-get update && apt-get install -y <package>`, through `sudo` unless running as root)
/// and looks again. Fails with what to install when that is impossible.
pub(crate) fn require_debian(binary: &str, package: &str) -> anyhow::Result<PathBuf> {
    if let Some(path) = which(binary) {
        return Ok(path);
    }
    println!("{binary} not found on PATH; installing Debian's {package} package with apt-get");
    let hint = format!(
        "install Debian's {package} package (`apt-get install {package}`), which provides {binary}"
    );
    if which("apt-get").is_none() {
        bail!("{binary} not found on PATH and there is no apt-get: {hint}");
    }
    let root = is_root();
    if !root && which("sudo").is_none() {
        bail!("{binary} not found on PATH, not running as root and there is no sudo: {hint}");
    }
    for args in [
        vec!["apt-get", "update"],
        vec!["apt-get", "install", "-y", package],
    ] {
        let mut command = if root {
            Command::new(args[0])
        } else {
            let mut sudo = Command::new("sudo");
            sudo.arg(args[0]);
            sudo
        };
        command
            .args(&args[1..])
            .env("DEBIAN_FRONTEND", "noninteractive");
        let status = command
            .status()
            .with_context(|| format!("failed to run {}: {hint}", args.join(" ")))?;
        if !status.success() {
            bail!("{} exited with {status}: {hint}", args.join(" "));
        }
    }
    which(binary).with_context(|| format!("installed {package} but {binary} is still not on PATH"))
}

#[allow(unsafe_code)] // geteuid(2) has no safe std API; it takes no arguments and cannot fail
fn is_root() -> bool {
    // SAFETY: geteuid(2) reads the calling process's effective user id; no memory is touched.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protoc_is_vendored_unless_already_set() {
        let vendored = protoc_override(None)
            .expect("vendored protoc")
            .expect("a path");
        assert!(vendored.is_file(), "{}", vendored.display());
        assert!(protoc_override(Some("".into())).expect("empty").is_some());
        assert!(protoc_override(Some("/usr/bin/protoc".into()))
            .expect("set")
            .is_none());
    }

    #[test]
    fn vendored_protoc_sets_the_command_environment() {
        let mut command = Command::new("true");
        with_protoc(&mut command).expect("protoc");
        let set = command
            .get_envs()
            .find(|(key, _)| *key == "PROTOC")
            .and_then(|(_, value)| value.map(Path::new));
        match std::env::var_os("PROTOC").filter(|v| !v.is_empty()) {
            Some(_) => assert!(set.is_none(), "an existing PROTOC is kept"),
            None => assert!(set.is_some_and(Path::is_file), "{set:?}"),
        }
    }

    #[test]
    fn executables_are_found_on_a_path() {
        let dir = tempfile::tempdir().expect("temp dir");
        let tool = dir.path().join("tool");
        std::fs::write(&tool, "#!/bin/sh\n").expect("write");
        let path = std::env::join_paths([Path::new("/nonexistent"), dir.path()]).expect("join");
        assert_eq!(find_in(&path, "tool"), None, "not executable yet");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        assert_eq!(find_in(&path, "tool"), Some(tool));
        assert_eq!(find_in(&path, "missing"), None);
        assert!(which("sh").is_some());
    }
}
