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
        default_value = "/var/lib/agentkernel"
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
            let code = match error.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
                // Usage errors are agentkernel's own failures, as with `docker run`.
                _ => EXIT_AGENTKERNEL_FAILED,
            };
            let _ = error.print();
            return code;
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
    fn run_requires_a_command() {
        assert!(parse(&["run", "--image", "busybox"]).is_err());
    }
}
