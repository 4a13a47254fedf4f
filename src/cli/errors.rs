//! One-line error reports with a hint on what to do, and the exit code for agentkernel's
//! own failures.

use std::fmt;
use std::path::Path;

use rootfs_cache::StoreError;
use rootfs_cache::blobs::BlobError;
use rootfs_cache::registry::RegistryError;
use rootfs_cache::unpack::UnpackError;

/// The exit code when agentkernel itself fails (as `docker run` uses it).
pub const EXIT_AGENTKERNEL_FAILED: i32 = 125;

/// Prints `error` as one line on stderr and returns [`EXIT_AGENTKERNEL_FAILED`].
/// `fallback` is the hint used when the error type has none of its own.
pub fn report(error: &anyhow::Error, fallback: Option<&'static str>) -> i32 {
    let message = one_line(error);
    match hint(error).or(fallback) {
        Some(hint) => eprintln!("agentkernel: {message} ({hint})"),
        None => eprintln!("agentkernel: {message}"),
    }
    EXIT_AGENTKERNEL_FAILED
}

fn hint(error: &anyhow::Error) -> Option<&'static str> {
    for cause in error.chain() {
        if let Some(store) = cause.downcast_ref::<StoreError>() {
            return Some(store_hint(store));
        }
        if let Some(seccomp) = cause.downcast_ref::<SeccompFileError>() {
            return Some(seccomp.hint());
        }
    }
    None
}

/// The option a seccomp file came from, so that a hint names the setting to change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeccompOrigin {
    /// `run --seccomp FILE`.
    Flag,
    /// `[security] seccomp` in the config file.
    Config,
}

/// The kind of problem in a seccomp file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeccompProblem {
    /// The file cannot be read or parsed, or libseccomp rejects a rule.
    Invalid,
    /// An action is `SCMP_ACT_NOTIFY`. It needs a listener process, which agentkernel does not
    /// run, so libcontainer fails with "failed seccomp listener".
    Notify,
}

/// A seccomp file that agentkernel cannot use, so the user has to change it. The message and
/// source of this error are those of `error`.
#[derive(Debug)]
pub struct SeccompFileError {
    pub origin: SeccompOrigin,
    pub problem: SeccompProblem,
    pub error: anyhow::Error,
}

impl SeccompFileError {
    fn hint(&self) -> &'static str {
        match (self.problem, self.origin) {
            (SeccompProblem::Invalid, SeccompOrigin::Flag) => {
                "fix the --seccomp file, or leave out --seccomp to use the built-in filter"
            }
            (SeccompProblem::Invalid, SeccompOrigin::Config) => {
                "fix the file that [security] seccomp names in the config file, or remove that setting to use the built-in filter"
            }
            (SeccompProblem::Notify, SeccompOrigin::Flag) => {
                "agentkernel does not support notify actions; change them in the --seccomp file, or leave out --seccomp"
            }
            (SeccompProblem::Notify, SeccompOrigin::Config) => {
                "agentkernel does not support notify actions; change them in the file that [security] seccomp names, or remove that setting"
            }
        }
    }
}

impl fmt::Display for SeccompFileError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, formatter)
    }
}

impl std::error::Error for SeccompFileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

/// Returns `agentkernel ARGS` as a command to copy into a shell, with `--root DIR` when `root`
/// is not the default root, so that the command acts on the same sandboxes and images.
pub fn command_line(root: &Path, args: &str) -> String {
    if root == Path::new(super::DEFAULT_ROOT) {
        return format!("`agentkernel {args}`");
    }
    let root = std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
    format!(
        "`agentkernel --root {} {args}`",
        shell_quote(&root.to_string_lossy())
    )
}

/// Quotes `text` for a POSIX shell when it contains characters outside a safe set.
fn shell_quote(text: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c);
    if !text.is_empty() && text.chars().all(safe) {
        return text.to_owned();
    }
    format!("'{}'", text.replace('\'', "'\\''"))
}

fn store_hint(error: &StoreError) -> &'static str {
    use oci_client::errors::OciDistributionError as Oci;
    match error {
        StoreError::Registry(RegistryError::Request {
            source: Oci::UnauthorizedError { .. } | Oci::AuthenticationFailure(_),
            ..
        }) => {
            "check the credentials for this registry in ~/.docker/config.json, or that the image exists"
        }
        StoreError::Registry(RegistryError::Request { .. } | RegistryError::Transfer { .. }) => {
            "check the image name and that the registry is reachable, or set [registry] mirrors in agentkernel.toml"
        }
        // Storing the download failed, which is not the registry's fault.
        StoreError::Registry(RegistryError::Blob {
            source: BlobError::Io { .. },
            ..
        }) => "check free disk space and permissions of the --root directory",
        StoreError::Registry(RegistryError::Blob { .. })
        | StoreError::Blob(BlobError::SizeMismatch { .. }) => {
            "the registry served content that does not match its digest; retry, or pull from another registry or mirror"
        }
        StoreError::Registry(RegistryError::Config(_)) => "fix the registry settings named above",
        StoreError::Blob(BlobError::DigestMismatch { .. }) => {
            "a cached blob is damaged; remove it from the cache and pull again"
        }
        StoreError::NoMatchingPlatform { .. } => {
            "use an image that is published for this host's architecture"
        }
        StoreError::Unpack {
            source: UnpackError::TooLarge { .. },
            ..
        } => "raise [registry] max_layer_mb in agentkernel.toml if the image is trusted",
        StoreError::Unpack {
            source: UnpackError::Io { source, .. } | UnpackError::OpenDirectory { source, .. },
            ..
        } if source.kind() == std::io::ErrorKind::StorageFull => {
            "free disk space in the --root directory and pull again"
        }
        StoreError::InvalidDocument { .. }
        | StoreError::Unpack { .. }
        | StoreError::DiffIdMismatch { .. } => "the image is malformed; use another image or tag",
        StoreError::Io { .. } | StoreError::Blob(BlobError::Io { .. }) => {
            "check free disk space and permissions of the --root directory"
        }
        StoreError::Local { .. } => {
            "check that the path contains an OCI image layout (oci:DIR) or a docker save archive (docker-archive:FILE)"
        }
        StoreError::Internal(_) => "this is a bug in agentkernel",
    }
}

/// Joins the error chain with `: `, leaving out a cause whose text an outer error already
/// includes (library errors print their source in their own message).
fn one_line(error: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_skips_repeated_causes() {
        let inner = std::io::Error::other("unexpected EOF");
        let error = anyhow::Error::new(inner)
            .context("read layer: unexpected EOF")
            .context("cannot pull busybox");
        assert_eq!(
            one_line(&error),
            "cannot pull busybox: read layer: unexpected EOF"
        );
    }

    #[test]
    fn command_line_at_default_root() {
        assert_eq!(
            command_line(Path::new("/var/lib/agentkernel"), "rm y"),
            "`agentkernel rm y`"
        );
        assert_eq!(
            command_line(Path::new("/var/lib/agentkernel/"), "images"),
            "`agentkernel images`"
        );
    }

    #[test]
    fn command_line_names_other_root() {
        assert_eq!(
            command_line(Path::new("/var/tmp/ak"), "rm y"),
            "`agentkernel --root /var/tmp/ak rm y`"
        );
        assert_eq!(
            command_line(Path::new("/var/tmp/my root"), "rm y"),
            "`agentkernel --root '/var/tmp/my root' rm y`"
        );
    }

    #[test]
    fn command_line_makes_root_absolute() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            command_line(Path::new("state"), "images"),
            format!(
                "`agentkernel --root {} images`",
                cwd.join("state").display()
            )
        );
    }

    #[test]
    fn shell_quote_escapes_quotes() {
        assert_eq!(shell_quote("/a/b-c_d.e"), "/a/b-c_d.e");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn seccomp_error_hint_replaces_fallback() {
        let error = anyhow::Error::new(SeccompFileError {
            origin: SeccompOrigin::Flag,
            problem: SeccompProblem::Notify,
            error: anyhow::anyhow!(
                "seccomp profile n.json: the rule for mkdir uses SCMP_ACT_NOTIFY"
            ),
        })
        .context("cannot start a sandbox for busybox");
        assert_eq!(
            one_line(&error),
            "cannot start a sandbox for busybox: seccomp profile n.json: the rule for mkdir uses SCMP_ACT_NOTIFY"
        );
        assert_eq!(
            hint(&error),
            Some(
                "agentkernel does not support notify actions; change them in the --seccomp file, or leave out --seccomp"
            )
        );
    }

    #[test]
    fn seccomp_error_keeps_its_causes() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let error = anyhow::Error::new(SeccompFileError {
            origin: SeccompOrigin::Config,
            problem: SeccompProblem::Invalid,
            error: anyhow::Error::new(io).context("failed to read seccomp profile /x.json"),
        });
        assert_eq!(
            one_line(&error),
            "failed to read seccomp profile /x.json: entity not found"
        );
        assert!(
            error
                .chain()
                .any(|cause| cause.downcast_ref::<std::io::Error>().is_some())
        );
        assert!(hint(&error).unwrap().contains("[security] seccomp"));
    }

    #[test]
    fn one_line_joins_distinct_causes() {
        let error = anyhow::anyhow!("connection refused\nretry later").context("cannot pull x");
        assert_eq!(
            one_line(&error),
            "cannot pull x: connection refused retry later"
        );
    }
}
