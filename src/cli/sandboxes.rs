//! `agentkernel exec`, `list` and `rm`: commands on kept sandboxes.

use std::io::IsTerminal;
use std::path::Path;

use clap::Args;

use super::errors::{EXIT_AGENTKERNEL_FAILED, command_line, report};
use crate::sandbox::{self, ExecOptions, RunError};

#[derive(Debug, Args)]
pub struct ExecArgs {
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

    /// Name of a sandbox started with `run --keep`.
    pub name: String,

    /// The command and its arguments, after `--` or the name.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Remove every sandbox.
    #[arg(long, conflicts_with = "names")]
    pub all: bool,

    /// Names of the sandboxes to stop and remove.
    #[arg(required_unless_present = "all")]
    pub names: Vec<String>,
}

/// Runs the command in the sandbox and returns its exit code (or 125 when agentkernel fails).
pub fn exec(root: &Path, args: ExecArgs) -> anyhow::Result<i32> {
    sandbox::cgroup_warmup::start();
    collect_orphans(root);
    let tty = use_tty(args.tty, args.interactive)?;
    let options = ExecOptions {
        tty,
        interactive: args.interactive,
    };
    match sandbox::exec(root, &args.name, &args.command, options) {
        Ok(code) => Ok(code),
        Err(RunError::Exec { code, message } | RunError::Killed { code, message }) => {
            eprintln!("agentkernel: {message}");
            Ok(code)
        }
        Err(RunError::Sandbox(error)) => {
            // The sandbox's own message for a stopped sandbox names `agentkernel rm` without
            // --root, so this one, with the root of this command, replaces it.
            let error = match stopped(root, &args.name) {
                true => anyhow::anyhow!(
                    "sandbox {} is not running: remove it with {}",
                    args.name,
                    command_line(root, &format!("rm {}", args.name))
                ),
                false => error,
            };
            let error = error.context(format!("cannot run a command in sandbox {}", args.name));
            Ok(report(&error, None).max(EXIT_AGENTKERNEL_FAILED))
        }
    }
}

/// Prints the sandboxes as a table or as JSON.
pub fn list(root: &Path, args: ListArgs) -> anyhow::Result<()> {
    collect_orphans(root);
    let sandboxes = sandbox::list(root)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&sandboxes)?);
        return Ok(());
    }
    let rows: Vec<[&str; 5]> = sandboxes
        .iter()
        .map(|sandbox| {
            [
                sandbox.name.as_str(),
                sandbox.image.as_str(),
                sandbox.profile.as_str(),
                sandbox.status.as_str(),
                sandbox.created.as_str(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(["NAME", "IMAGE", "PROFILE", "STATUS", "CREATED"], &rows)
    );
    Ok(())
}

/// Formats a table with each column as wide as its longest cell, three spaces between
/// columns (as `docker ps` prints them) and no spaces at the end of a line.
fn table<const N: usize>(header: [&str; N], rows: &[[&str; N]]) -> String {
    let mut widths = header.map(|cell| cell.chars().count());
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (column, (cell, width)) in row.iter().zip(widths).enumerate() {
            if column + 1 == N {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}   "));
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// Returns whether sandbox `name` exists below `root` and is not running.
fn stopped(root: &Path, name: &str) -> bool {
    let Ok(sandboxes) = sandbox::list(root) else {
        return false;
    };
    sandboxes
        .iter()
        .any(|sandbox| sandbox.name == name && sandbox.status != "running")
}

/// Stops and removes the named sandboxes, or all with `--all`, and prints each name.
pub fn rm(root: &Path, args: RmArgs) -> anyhow::Result<()> {
    collect_orphans(root);
    if args.all {
        for name in sandbox::remove_all(root)? {
            println!("{name}");
        }
        return Ok(());
    }
    for name in &args.names {
        sandbox::remove_sandbox(root, name)?;
        println!("{name}");
    }
    Ok(())
}

/// Removes the sandboxes of killed `run` processes; failures only warn, because they must not
/// stop the command that triggered the collection.
pub fn collect_orphans(root: &Path) {
    match sandbox::collect_orphans(root) {
        Ok(removed) => {
            for name in removed {
                tracing::info!(sandbox = %name, "removed an orphaned sandbox");
            }
        }
        Err(error) => {
            eprintln!("agentkernel: warning: cannot remove orphaned sandboxes: {error:#}");
        }
    }
}

/// Decides whether the command gets a pseudo-terminal, as `docker run` does: `-t` forces one,
/// `-t=false` refuses one, and by default it gets one when stdin and stdout are terminals.
/// `-i -t` with a stdin that is not a terminal is an error.
pub fn use_tty(tty: Option<bool>, interactive: Option<bool>) -> anyhow::Result<bool> {
    let stdin_terminal = std::io::stdin().is_terminal();
    let tty = tty.unwrap_or_else(|| {
        interactive != Some(false) && stdin_terminal && std::io::stdout().is_terminal()
    });
    if tty && interactive == Some(true) && !stdin_terminal {
        anyhow::bail!(
            "cannot use -i with -t: stdin is not a terminal; drop -t or run from a terminal"
        );
    }
    Ok(tty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_fits_long_cells() {
        let image = "registry.example.com:5000/team/project/python:3.12-alpine";
        let text = table(
            ["NAME", "IMAGE", "STATUS"],
            &[
                ["a", image, "running"],
                ["run-0123abcd", "busybox", "stopped"],
            ],
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[0],
            format!("NAME           {:<w$}   STATUS", "IMAGE", w = image.len())
        );
        assert_eq!(lines[1], format!("a              {image}   running"));
        assert_eq!(
            lines[2],
            format!(
                "run-0123abcd   {:<w$}   stopped",
                "busybox",
                w = image.len()
            )
        );
    }

    #[test]
    fn table_without_rows_is_header() {
        let text = table(["NAME", "IMAGE", "CREATED"], &[]);
        assert_eq!(text, "NAME   IMAGE   CREATED\n");
    }

    #[test]
    fn table_last_column_has_no_padding() {
        let text = table(["A", "B"], &[["x", ""], ["long", "y"]]);
        assert_eq!(text, "A      B\nx\nlong   y\n");
    }
}
