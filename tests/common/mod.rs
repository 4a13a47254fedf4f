//! Shared setup of the integration tests: the registries started by
//! `tests/env/with-registries.sh`, a cache root per test binary, and a runner for the
//! `agentkernel` binary.
//!
//! These tests need root and the test registries. Without them a test prints why and
//! passes only outside CI; with `CI=true` it fails, so a CI run never skips silently.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// What a test needs from its environment.
pub struct Env {
    /// `127.0.0.1:PORT` of the plain-HTTP registry.
    pub registry: String,
    /// The registry's access log.
    pub access_log: PathBuf,
}

/// Returns the test environment, or `None` (after saying why) when it is missing outside CI.
pub fn env() -> Option<Env> {
    let missing = if !nix_is_root() {
        Some("these tests need root")
    } else if std::env::var_os("AGENTKERNEL_TEST_REGISTRY").is_none() {
        Some("AGENTKERNEL_TEST_REGISTRY is not set")
    } else {
        None
    };
    if let Some(reason) = missing {
        let message = format!(
            "{reason}: run the suite with `tests/env/with-registries.sh cargo test` as root"
        );
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{message}");
        }
        eprintln!("SKIPPED: {message}");
        return None;
    }
    Some(Env {
        registry: std::env::var("AGENTKERNEL_TEST_REGISTRY").unwrap(),
        access_log: std::env::var_os("AGENTKERNEL_TEST_REGISTRY_LOG")
            .map(PathBuf::from)
            .unwrap_or_default(),
    })
}

/// Reports whether the full image set (Debian-based python and node) was built.
pub fn full_images() -> bool {
    std::env::var("AGENTKERNEL_TEST_IMAGES").is_ok_and(|v| v == "full")
}

fn nix_is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A cache root shared by the tests of one test binary, so each image is pulled once.
pub fn shared_root() -> &'static Path {
    static ROOT: OnceLock<tempfile::TempDir> = OnceLock::new();
    ROOT.get_or_init(|| {
        tempfile::Builder::new()
            .prefix("ak-test-")
            .tempdir_in("/tmp")
            .unwrap()
    })
    .path()
}

/// A new empty cache root.
pub fn fresh_root() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ak-test-")
        .tempdir_in("/tmp")
        .unwrap()
}

/// Writes an agentkernel.toml that mirrors docker.io to the test registry.
pub fn mirror_config(env: &Env, dir: &Path) -> PathBuf {
    let path = dir.join("agentkernel.toml");
    std::fs::write(
        &path,
        format!(
            "[registry]\nmirrors = {{ \"docker.io\" = \"http://{}\" }}\n",
            env.registry
        ),
    )
    .unwrap();
    path
}

/// A finished `agentkernel` process.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from_output(output: Output) -> Run {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// Builds an `agentkernel` command with `root` as its cache root and a clean environment.
pub fn agentkernel(root: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_agentkernel"));
    command
        .env("AGENTKERNEL_ROOT", root)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    command
}

/// Runs `agentkernel run` with the mirror config in the shared root and `args`.
pub fn run(env: &Env, args: &[&str]) -> Run {
    run_in(env, shared_root(), args)
}

/// Runs `agentkernel run` with the mirror config in `root` and `args`.
pub fn run_in(env: &Env, root: &Path, args: &[&str]) -> Run {
    let config = mirror_config(env, root);
    let output = agentkernel(root)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .args(args)
        .output()
        .unwrap();
    Run::from_output(output)
}

/// Runs any `agentkernel` command line in `root`.
pub fn output(command: &mut Command) -> Run {
    Run::from_output(command.output().unwrap())
}

/// Counts the blob requests in the registry's access log so far.
pub fn blob_requests(env: &Env) -> usize {
    std::fs::read_to_string(&env.access_log)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains("/blobs/sha256:"))
        .count()
}

/// `127.0.0.1:PORT/library/NAME:TAG` in the test registry.
pub fn image(env: &Env, name_and_tag: &str) -> String {
    format!("{}/library/{}", env.registry, name_and_tag)
}
