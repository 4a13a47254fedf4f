//! Command-line parsing and the subcommands.

mod errors;
mod images;
mod prune;
mod pull;
mod run;
mod sandbox_layers;
mod sandboxes;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub use errors::EXIT_AGENTKERNEL_FAILED;

/// Directory of the image cache and sandbox state when neither --root nor AGENTKERNEL_ROOT
/// sets one.
const DEFAULT_ROOT: &str = "/var/lib/agentkernel";

/// Runs commands in throw-away Linux sandboxes made from OCI images, without a daemon.
#[derive(Debug, Parser)]
#[command(name = "agentkernel", version, about, max_term_width = 100)]
pub struct Cli {
    /// Directory of the image cache and sandbox state.
    #[arg(
        long,
        global = true,
        env = "AGENTKERNEL_ROOT",
        value_name = "DIR",
        default_value = DEFAULT_ROOT
    )]
    pub root: PathBuf,

    /// Print debug logs (libcontainer, registry requests) on stderr; RUST_LOG also works.
    #[arg(long, global = true)]
    pub debug: bool,

    #[command(subcommand)]
    pub command: Command,
}

// The command line is parsed once, so the size of `RunArgs` does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command in a new sandbox and remove the sandbox afterwards.
    Run(run::RunArgs),
    /// Run a command in a sandbox kept with `run --keep`.
    Exec(sandboxes::ExecArgs),
    /// List the sandboxes with their image, profile, status and creation time.
    #[command(alias = "ls")]
    List(sandboxes::ListArgs),
    /// Stop and remove sandboxes.
    Rm(sandboxes::RmArgs),
    /// Pull an image into the cache without running it.
    Pull(pull::PullArgs),
    /// List cached images with their sizes and when a sandbox last used them.
    Images(images::ImagesArgs),
    /// Remove cached images; `prune` then frees their blobs and layers.
    Rmi(images::RmiArgs),
    /// Remove the blobs and layers that no cached image and no sandbox uses, and leftovers
    /// of interrupted pulls.
    Prune(prune::PruneArgs),
}

/// Parses the command line, runs the subcommand and returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            return match error.kind() {
                clap::error::ErrorKind::DisplayHelp
                | clap::error::ErrorKind::DisplayVersion
                | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = error.print();
                    if error.kind()
                        == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
                    {
                        EXIT_AGENTKERNEL_FAILED
                    } else {
                        0
                    }
                }
                // Usage errors are agentkernel's own failures, as with `docker run`, and are
                // reported on one line like the others.
                _ => {
                    eprintln!("agentkernel: {} (see --help)", usage_error_line(&error));
                    EXIT_AGENTKERNEL_FAILED
                }
            };
        }
    };
    init_logging(cli.debug);
    let result = match cli.command {
        Command::Run(args) => run::run(&cli.root, args),
        Command::Exec(args) => sandboxes::exec(&cli.root, args),
        Command::List(args) => sandboxes::list(&cli.root, args).map(|()| 0),
        Command::Rm(args) => sandboxes::rm(&cli.root, args).map(|()| 0),
        Command::Pull(args) => pull::pull(&cli.root, args).map(|()| 0),
        Command::Images(args) => images::images(&cli.root, args).map(|()| 0),
        Command::Rmi(args) => images::rmi(&cli.root, args).map(|()| 0),
        Command::Prune(args) => prune::prune(&cli.root, args).map(|()| 0),
    };
    match result {
        Ok(code) => code,
        Err(error) => errors::report(&error, None),
    }
}

/// Joins the lines of a clap error before its usage and help footer into one line.
fn usage_error_line(error: &clap::Error) -> String {
    let text = error.render().to_string();
    let mut parts = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        if !line.is_empty() {
            parts.push(line.strip_prefix("error: ").unwrap_or(line));
        }
    }
    parts.join(" ")
}

fn init_logging(debug: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = if debug {
        EnvFilter::new("debug")
    } else {
        match EnvFilter::try_from_default_env() {
            Ok(filter) => filter,
            Err(_) => return,
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("agentkernel").chain(args.iter().copied()))
    }

    #[test]
    fn run_takes_command_flags_without_separator() {
        let cli = parse(&["run", "python3", "-c", "print('hello')"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run");
        };
        assert_eq!(args.command, vec!["python3", "-c", "print('hello')"]);
        assert!(args.image.is_none());
        assert!(args.fast);
    }

    #[test]
    fn run_options_before_the_command() {
        let cli = parse(&[
            "--root",
            "/tmp/r",
            "run",
            "--image",
            "busybox",
            "--profile",
            "restrictive",
            "--keep",
            "--fast=false",
            "--runtime",
            "native",
            "sh",
            "--profile",
            "x",
        ])
        .unwrap();
        assert_eq!(cli.root, PathBuf::from("/tmp/r"));
        let Command::Run(args) = cli.command else {
            panic!("not run");
        };
        assert_eq!(args.image.as_deref(), Some("busybox"));
        assert_eq!(args.profile, Some(crate::profile::Profile::Restrictive));
        assert!(args.keep);
        assert!(!args.fast);
        assert_eq!(args.command, vec!["sh", "--profile", "x"]);
    }

    #[test]
    fn run_rejects_other_runtimes() {
        let error = parse(&["run", "--runtime", "docker", "true"]).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("docker"), "{text}");
        assert!(text.contains("native"), "{text}");
    }

    #[test]
    fn usage_errors_fit_one_line() {
        let error = parse(&["run", "--runtime", "docker", "true"]).unwrap_err();
        let line = usage_error_line(&error);
        assert!(!line.contains('\n'), "{line}");
        assert!(line.starts_with("invalid value 'docker'"), "{line}");
        assert!(line.contains("[possible values: native]"), "{line}");
        let missing = parse(&["run", "--image", "busybox"]).unwrap_err();
        let line = usage_error_line(&missing);
        assert!(line.contains("<COMMAND>"), "{line}");
        assert!(!line.contains("Usage"), "{line}");
    }

    #[test]
    fn run_requires_a_command() {
        assert!(parse(&["run", "--image", "busybox"]).is_err());
    }
}
