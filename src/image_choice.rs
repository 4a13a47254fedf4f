//! The image a command runs in when none is given: chosen by the command's basename.

use std::path::Path;

/// The image for commands with no language runtime of their own.
pub const DEFAULT_IMAGE: &str = "alpine:3.20";

/// Returns the image for `program` (argv\[0\]), matched by basename.
pub fn image_for_command(program: &str) -> &'static str {
    let name = Path::new(program)
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or(program);
    match name {
        "python3" | "python" | "pip" => "python:3.12-alpine",
        "node" | "npm" | "npx" | "yarn" => "node:22-alpine",
        "cargo" | "rustc" => "rust:1.85-alpine",
        "go" => "golang:1.23-alpine",
        "ruby" | "gem" | "bundle" => "ruby:3.3-alpine",
        _ => DEFAULT_IMAGE,
    }
}

/// Returns the image for an agentkernel.toml `[sandbox] runtime` shorthand.
pub fn image_for_runtime(runtime: &str) -> Option<&'static str> {
    let image = match runtime {
        "python" => "python:3.12-alpine",
        "node" => "node:22-alpine",
        "rust" => "rust:1.85-alpine",
        "go" => "golang:1.23-alpine",
        "ruby" => "ruby:3.3-alpine",
        "base" => DEFAULT_IMAGE,
        _ => return None,
    };
    Some(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_map_to_language_images() {
        let cases = [
            ("python3", "python:3.12-alpine"),
            ("python", "python:3.12-alpine"),
            ("pip", "python:3.12-alpine"),
            ("node", "node:22-alpine"),
            ("npm", "node:22-alpine"),
            ("npx", "node:22-alpine"),
            ("yarn", "node:22-alpine"),
            ("cargo", "rust:1.85-alpine"),
            ("rustc", "rust:1.85-alpine"),
            ("go", "golang:1.23-alpine"),
            ("ruby", "ruby:3.3-alpine"),
            ("gem", "ruby:3.3-alpine"),
            ("bundle", "ruby:3.3-alpine"),
            ("sh", "alpine:3.20"),
            ("python3.12", "alpine:3.20"),
            ("", "alpine:3.20"),
        ];
        for (command, image) in cases {
            assert_eq!(image_for_command(command), image, "command {command:?}");
        }
    }

    #[test]
    fn detection_uses_the_basename() {
        assert_eq!(image_for_command("/usr/bin/python3"), "python:3.12-alpine");
        assert_eq!(image_for_command("./node"), "node:22-alpine");
        assert_eq!(image_for_command("/opt/go/bin/go"), "golang:1.23-alpine");
        assert_eq!(image_for_command("/usr/bin/python3/"), "python:3.12-alpine");
    }

    #[test]
    fn runtime_shorthands() {
        assert_eq!(image_for_runtime("python"), Some("python:3.12-alpine"));
        assert_eq!(image_for_runtime("base"), Some("alpine:3.20"));
        assert_eq!(image_for_runtime("cobol"), None);
    }
}
