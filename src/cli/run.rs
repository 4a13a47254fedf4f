//! `agentkernel run`: pull the image if needed, run the command in a new sandbox, pass its
//! exit code through and remove the sandbox.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use libcontainer::oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction};
use rootfs_cache::{Image, ImageSource, ImageStore};

use super::errors::{
    EXIT_AGENTKERNEL_FAILED, SeccompFileError, SeccompOrigin, SeccompProblem, command_line, report,
};
use super::pull::{pull_image, registry_config, unpack_options};
use super::sandbox_layers;
use crate::config::Config;
use crate::image_choice::{image_for_command, image_for_runtime};
use crate::profile::{NetworkMode, Overrides, Profile, Volume, parse_cpus, parse_memory};
use crate::sandbox::{self, RunError, SandboxRequest};
use crate::spec::ImageRunConfig;

/// Hint for a sandbox that failed to start with a valid seccomp file and valid flags, so the
/// cause is most likely the host.
const SANDBOX_HINT: &str =
    "agentkernel needs root, overlayfs and cgroups; run with --debug to see libcontainer's log";

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Image to run in; by default chosen from the command (python3 → python:3.12-alpine,
    /// node → node:22-alpine, anything unknown → alpine:3.20). Besides registry references,
    /// oci:DIR[:REF] names an OCI image layout and docker-archive:FILE[:NAME:TAG] a
    /// `docker save` archive.
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,

    /// Security profile [default: moderate, or [security] profile in the config file].
    #[arg(long, value_enum)]
    pub profile: Option<Profile>,

    /// Keep the sandbox running after the command exits and print its name; `exec` runs
    /// more commands in it and `rm` removes it.
    #[arg(long)]
    pub keep: bool,

    /// Sandbox name: 1 to 63 letters, digits, '-' and '_' [default: run-<8 hex digits>].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// Pass stdin to the command even when it is a terminal; -i=false gives it /dev/null
    /// [default: pass pipes and files, or a terminal together with --tty].
    #[arg(short = 'i', long, num_args = 0..=1, default_missing_value = "true",
          require_equals = true, value_name = "BOOL", action = clap::ArgAction::Set)]
    pub interactive: Option<bool>,

    /// Give the command a pseudo-terminal; -t=false refuses one [default: when stdin and
    /// stdout are terminals].
    #[arg(short = 't', long, num_args = 0..=1, default_missing_value = "true",
          require_equals = true, value_name = "BOOL", action = clap::ArgAction::Set)]
    pub tty: Option<bool>,

    /// Use the fast start path (on by default): the seccomp filter is compiled once and cached
    /// in <root>/seccomp; --fast=false compiles it in every sandbox. Every run gets a fresh
    /// writable layer either way.
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true",
          require_equals = true, value_name = "BOOL", action = clap::ArgAction::Set)]
    pub fast: bool,

    /// Project configuration file [default: ./agentkernel.toml if it exists].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Set an environment variable in the sandbox (KEY=VALUE); repeatable.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<String>,

    /// Bind a host path into the sandbox, read-only with :ro; repeatable.
    #[arg(short = 'v', long = "volume", value_name = "HOST:CONTAINER[:ro]")]
    pub volumes: Vec<Volume>,

    /// Working directory of the command inside the sandbox (absolute).
    #[arg(short = 'w', long, value_name = "DIR", value_parser = parse_workdir)]
    pub workdir: Option<String>,

    /// Memory limit, such as 256m or 1g [default: the profile's, or [resources] memory_mb].
    #[arg(long, value_name = "SIZE", value_parser = parse_memory)]
    pub memory: Option<u64>,

    /// CPU limit in CPUs, such as 0.5 [default: the profile's, or [resources] vcpus].
    #[arg(long, value_name = "CPUS", value_parser = parse_cpus)]
    pub cpus: Option<f64>,

    /// Network mode: none (loopback only), isolated (outbound NAT, no access to the host) or
    /// host [default: the profile's, or [security] network].
    #[arg(long, value_enum, value_name = "MODE")]
    pub network: Option<NetworkMode>,

    /// OCI or Docker seccomp JSON file that replaces the built-in filter [default: [security]
    /// seccomp, or the built-in filter].
    #[arg(long, value_name = "FILE")]
    pub seccomp: Option<PathBuf>,

    /// Kill the sandbox after this many seconds; agentkernel then exits with 124.
    #[arg(long, value_name = "SECONDS", value_parser = parse_timeout)]
    pub timeout: Option<Duration>,

    /// Container runtime; `native` (libcontainer in this process) is the only one.
    #[arg(long, default_value = "native", value_parser = ["native"])]
    pub runtime: String,

    /// The command and its arguments; everything after the first word belongs to it.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// Runs the command and returns its exit code (or 125 when agentkernel fails).
pub fn run(root: &Path, args: RunArgs) -> anyhow::Result<i32> {
    sandbox::cgroup_warmup::start();
    let config = Config::load(args.config.as_deref())?;
    super::sandboxes::collect_orphans(root);
    let id = sandbox_id(&args, &config)?;
    let sandbox_dir = root.join("sandboxes").join(&id);
    if sandbox_dir.exists() {
        anyhow::bail!(
            "sandbox name {id} is already in use: choose another --name or {}",
            command_line(root, &format!("rm {id}"))
        );
    }
    let tty = super::sandboxes::use_tty(args.tty, args.interactive)?;
    let image_name = choose_image(&args, &config)?;
    let reference: ImageSource = image_name
        .parse()
        .with_context(|| "cannot run: the image reference is invalid")?;
    let profile = args
        .profile
        .or(config.security.profile)
        .unwrap_or(Profile::Moderate);
    let overrides = overrides(&args, &config);
    let seccomp = match &overrides.seccomp {
        Some(path) => {
            let origin = match args.seccomp {
                Some(_) => SeccompOrigin::Flag,
                None => SeccompOrigin::Config,
            };
            Some(SeccompFile::read(path, origin, profile)?)
        }
        None => None,
    };

    let store = ImageStore::open(root)
        .with_context(|| format!("cannot open the image cache in {}", root.display()))?;
    // No prune may remove the image's layers between the lookup and the layer list below.
    let run_lock = store.lock_for_run()?;
    // A local image is resolved on every run, because that is cheap and it may change.
    let cached = match reference.is_local() {
        true => None,
        false => store.lookup(&reference)?,
    };
    let image = match cached {
        Some(image) => image,
        None => pull_image(
            &store,
            &reference,
            registry_config(&config),
            unpack_options(&config),
        )?,
    };

    // An existing sandbox of this name makes the run fail below; its list stays as it is.
    let listed = !sandbox_dir.exists();
    if listed {
        sandbox_layers::write(root, &id, &image)?;
    }
    drop(run_lock);
    if let Err(error) = store.mark_used(&image) {
        eprintln!("agentkernel: warning: cannot record the use of {reference}: {error}");
    }

    let request = SandboxRequest {
        id: id.clone(),
        state_root: root.join("containers"),
        sandbox_dir: sandbox_dir.clone(),
        lower_dirs: image.layer_dirs.iter().rev().cloned().collect(),
        image: run_config(&image),
        overrides,
        timeout: args.timeout,
        command: args.command,
        profile,
        image_name: image_name.clone(),
        keep: args.keep,
        tty,
        interactive: args.interactive,
        seccomp_cache: args.fast.then(|| root.join("seccomp")),
    };
    let result = sandbox::run(request);
    if listed && (!args.keep || !sandbox_dir.exists()) {
        if let Err(error) = sandbox_layers::remove(root, &id) {
            eprintln!("agentkernel: warning: {error:#}");
        }
    }
    if args.keep && !matches!(result, Err(RunError::Sandbox(_))) && sandbox_dir.exists() {
        eprintln!("agentkernel: kept sandbox {id}");
    }
    match result {
        Ok(code) => Ok(code),
        Err(RunError::Exec { code, message } | RunError::Killed { code, message }) => {
            eprintln!("agentkernel: {message}");
            Ok(code)
        }
        Err(RunError::Sandbox(error)) => {
            let error = match seccomp.and_then(SeccompFile::compile_error) {
                Some(seccomp_error) => {
                    tracing::debug!(error = %format!("{error:#}"), "sandbox failed to start");
                    anyhow::Error::new(seccomp_error)
                }
                None => error,
            };
            let error = error.context(format!("cannot start a sandbox for {reference}"));
            Ok(report(&error, Some(SANDBOX_HINT)).max(EXIT_AGENTKERNEL_FAILED))
        }
    }
}

/// Combines the flags and the config file; flags win, and unset values keep the profile's.
fn overrides(args: &RunArgs, config: &Config) -> Overrides {
    const MIB: u64 = 1024 * 1024;
    Overrides {
        network: args.network.or(config.security.network),
        memory_bytes: args
            .memory
            .or(config.resources.memory_mb.map(|mb| mb.saturating_mul(MIB))),
        cpus: args.cpus.or(config.resources.vcpus),
        mount_cwd: config.security.mount_cwd,
        seccomp: args.seccomp.clone().or(config.security.seccomp.clone()),
        env: args.env.clone(),
        volumes: args.volumes.clone(),
        workdir: args.workdir.clone(),
    }
}

fn parse_env(text: &str) -> Result<String, String> {
    match text.split_once('=') {
        Some((key, _)) if !key.is_empty() => Ok(text.to_string()),
        _ => Err(format!(
            "invalid environment entry {text:?}: expected KEY=VALUE"
        )),
    }
}

fn parse_workdir(text: &str) -> Result<String, String> {
    match text.starts_with('/') {
        true => Ok(text.to_string()),
        false => Err("it must be an absolute path".to_string()),
    }
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(seconds) if seconds > 0.0 && seconds.is_finite() => Ok(Duration::from_secs_f64(seconds)),
        _ => Err(format!(
            "invalid timeout {text:?}: expected a number of seconds above 0"
        )),
    }
}

/// `--image`, else the config's `base_image` or `runtime`, else detection by command.
fn choose_image(args: &RunArgs, config: &Config) -> anyhow::Result<String> {
    if let Some(image) = &args.image {
        return Ok(image.clone());
    }
    if let Some(image) = &config.sandbox.base_image {
        return Ok(image.clone());
    }
    if let Some(runtime) = &config.sandbox.runtime {
        return image_for_runtime(runtime).map(str::to_owned).with_context(|| {
            format!(
                "invalid [sandbox] runtime = {runtime:?}: expected python, node, go, rust, ruby or base"
            )
        });
    }
    Ok(image_for_command(&args.command[0]).to_owned())
}

/// `--name`, else the config's `[sandbox] name` for a kept sandbox, else a new `run-` name.
fn sandbox_id(args: &RunArgs, config: &Config) -> anyhow::Result<String> {
    let name = match (&args.name, &config.sandbox.name, args.keep) {
        (Some(name), _, _) => name.clone(),
        (None, Some(name), true) => name.clone(),
        _ => return Ok(sandbox::generate_name()),
    };
    sandbox::validate_name(&name)?;
    Ok(name)
}

fn run_config(image: &Image) -> ImageRunConfig {
    let process = image.config.config.clone().unwrap_or_default();
    ImageRunConfig {
        env: process.env.unwrap_or_default(),
        working_dir: process.working_dir.filter(|dir| !dir.is_empty()),
        user: process.user.filter(|user| !user.is_empty()),
        entrypoint: process.entrypoint.unwrap_or_default(),
        cmd: process.cmd.unwrap_or_default(),
    }
}

/// The seccomp file of a run and the filter read from it as the sandbox reads it.
struct SeccompFile {
    path: PathBuf,
    origin: SeccompOrigin,
    filter: LinuxSeccomp,
}

impl SeccompFile {
    /// Reads the file and rejects notify actions, before an image is pulled for the run.
    fn read(
        path: &Path,
        origin: SeccompOrigin,
        profile: Profile,
    ) -> Result<Self, SeccompFileError> {
        let caps = crate::spec::capability_set(profile);
        let filter = crate::seccomp::load_file(path, &caps).map_err(|error| SeccompFileError {
            origin,
            problem: SeccompProblem::Invalid,
            error,
        })?;
        if let Some(user) = notify_user(&filter) {
            return Err(SeccompFileError {
                origin,
                problem: SeccompProblem::Notify,
                error: anyhow::anyhow!(
                    "seccomp profile {}: {user} uses SCMP_ACT_NOTIFY",
                    path.display()
                ),
            });
        }
        Ok(SeccompFile {
            path: path.to_path_buf(),
            origin,
            filter,
        })
    }

    /// Compiles the filter with libseccomp and returns the error when libseccomp rejects it.
    /// It runs only after a sandbox failed to start, to tell a bad rule from a host problem.
    /// A successful start skips it, because compiling takes milliseconds that the cache of
    /// compiled filters saves.
    fn compile_error(self) -> Option<SeccompFileError> {
        let error = crate::seccomp::Program::compile(&self.filter).err()?;
        Some(SeccompFileError {
            origin: self.origin,
            problem: SeccompProblem::Invalid,
            error: error.context(format!("invalid seccomp profile {}", self.path.display())),
        })
    }
}

/// Names the first part of `filter` whose action is `SCMP_ACT_NOTIFY`: "the default action"
/// or "the rule for NAME".
fn notify_user(filter: &LinuxSeccomp) -> Option<String> {
    if filter.default_action() == LinuxSeccompAction::ScmpActNotify {
        return Some("the default action".to_string());
    }
    let rule = filter
        .syscalls()
        .iter()
        .flatten()
        .find(|rule| rule.action() == LinuxSeccompAction::ScmpActNotify)?;
    Some(format!("the rule for {}", rule.names().join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seccomp_file(json: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), json).unwrap();
        file
    }

    fn read_error(path: &Path) -> SeccompFileError {
        match SeccompFile::read(path, SeccompOrigin::Flag, Profile::Moderate) {
            Ok(_) => panic!("{} was accepted", path.display()),
            Err(error) => error,
        }
    }

    #[test]
    fn workdir_must_be_absolute() {
        assert_eq!(parse_workdir("/data"), Ok("/data".to_string()));
        assert_eq!(
            parse_workdir("data"),
            Err("it must be an absolute path".to_string())
        );
    }

    #[test]
    fn seccomp_missing_file_is_invalid() {
        let error = read_error(Path::new("/no/such/seccomp.json"));
        assert_eq!(error.problem, SeccompProblem::Invalid);
        assert_eq!(error.origin, SeccompOrigin::Flag);
        assert_eq!(
            format!("{:#}", error.error),
            "failed to read seccomp profile /no/such/seccomp.json: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn seccomp_unknown_action_is_invalid() {
        let file = seccomp_file(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_BOGUS"}]}"#,
        );
        let error = read_error(file.path());
        assert_eq!(error.problem, SeccompProblem::Invalid);
        assert!(
            format!("{:#}", error.error).contains("unknown variant `SCMP_ACT_BOGUS`"),
            "{:#}",
            error.error
        );
    }

    #[test]
    fn seccomp_notify_rule_is_rejected() {
        let file = seccomp_file(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_NOTIFY"}]}"#,
        );
        let error = read_error(file.path());
        assert_eq!(error.problem, SeccompProblem::Notify);
        assert_eq!(
            error.error.to_string(),
            format!(
                "seccomp profile {}: the rule for mkdir, mkdirat uses SCMP_ACT_NOTIFY",
                file.path().display()
            )
        );
    }

    #[test]
    fn seccomp_notify_default_is_rejected() {
        let file = seccomp_file(r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#);
        let error = read_error(file.path());
        assert_eq!(error.problem, SeccompProblem::Notify);
        assert!(
            error
                .error
                .to_string()
                .ends_with("the default action uses SCMP_ACT_NOTIFY"),
            "{}",
            error.error
        );
    }

    #[test]
    fn seccomp_argument_index_above_5_fails_to_compile() {
        let file = seccomp_file(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO","args":[{"index":7,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#,
        );
        let seccomp = SeccompFile::read(file.path(), SeccompOrigin::Config, Profile::Moderate)
            .expect("the file parses; only libseccomp rejects the index");
        let error = seccomp
            .compile_error()
            .expect("libseccomp accepted index 7");
        assert_eq!(error.problem, SeccompProblem::Invalid);
        assert_eq!(error.origin, SeccompOrigin::Config);
        let message = format!("{:#}", error.error);
        assert!(
            message.starts_with(&format!(
                "invalid seccomp profile {}: failed to add the seccomp rule for read",
                file.path().display()
            )),
            "{message}"
        );
    }

    #[test]
    fn seccomp_valid_file_compiles() {
        let file = seccomp_file(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO","args":[{"index":1,"value":448,"op":"SCMP_CMP_EQ"}]}]}"#,
        );
        let seccomp =
            SeccompFile::read(file.path(), SeccompOrigin::Flag, Profile::Moderate).unwrap();
        assert_eq!(seccomp.filter.syscalls().as_ref().map(Vec::len), Some(1));
        assert!(seccomp.compile_error().is_none());
    }
}
