//! Sandbox names and the `sandbox.json` record in each sandbox directory.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// File name of the record inside the sandbox directory.
const RECORD_FILE: &str = "sandbox.json";

/// Metadata of a sandbox that `agentkernel list` prints besides its status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxRecord {
    /// The sandbox name, which is also its container id.
    pub name: String,
    /// The image reference as the user gave it.
    pub image: String,
    /// The security profile, as spelled on the command line.
    pub profile: String,
    /// Creation time in seconds since the Unix epoch.
    pub created: u64,
    /// Whether the sandbox outlives its `run` (`--keep`); a sandbox without it is removed by
    /// the next command once its `run` process is gone.
    pub keep: bool,
}

impl SandboxRecord {
    /// Writes the record into `sandbox_dir`.
    pub fn write(&self, sandbox_dir: &Path) -> anyhow::Result<()> {
        let path = sandbox_dir.join(RECORD_FILE);
        let json = serde_json::to_vec_pretty(self).context("failed to serialize the record")?;
        std::fs::write(&path, json).with_context(|| format!("failed to write {}", path.display()))
    }

    /// Reads the record of `sandbox_dir`.
    pub fn read(sandbox_dir: &Path) -> anyhow::Result<Self> {
        let path = sandbox_dir.join(RECORD_FILE);
        let bytes =
            std::fs::read(&path).with_context(|| format!("failed to read {}", path.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("invalid record {}", path.display()))
    }
}

/// Returns the current time in seconds since the Unix epoch.
pub(super) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

/// Formats seconds since the Unix epoch as an RFC 3339 UTC time, such as
/// `2026-12-04T17:05:09Z`.
pub fn format_time(seconds: u64) -> String {
    let days = (seconds / 86_400) as i64;
    let second_of_day = seconds % 86_400;
    // Howard Hinnant's days-to-civil conversion for the proleptic Gregorian calendar.
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    )
}

/// Checks a sandbox name: 1 to 63 characters from `[A-Za-z0-9_-]` that start and end with a
/// letter or digit and contain none of `--`, `__`, `-_` and `_-`.
pub fn validate_name(name: &str) -> anyhow::Result<()> {
    let rule = "use 1 to 63 letters, digits, '-' and '_', starting and ending with a letter or \
                digit, without '--', '__', '-_' or '_-'";
    let bytes = name.as_bytes();
    let valid_chars = bytes
        .iter()
        .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_'));
    let valid_ends = match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric(),
        _ => false,
    };
    let separators_doubled = ["--", "__", "-_", "_-"]
        .iter()
        .any(|pair| name.contains(pair));
    if name.len() > 63 || !valid_chars || !valid_ends || separators_doubled {
        bail!("invalid sandbox name {name:?}: {rule}");
    }
    Ok(())
}

/// Returns a new sandbox name, `run-` and 8 hexadecimal digits.
pub fn generate_name() -> String {
    format!("run-{:08x}", rand::random::<u32>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rules() {
        for valid in ["a", "run-0a1b2c3d", "my_box-2", "A9", &"x".repeat(63)] {
            assert!(validate_name(valid).is_ok(), "{valid} was rejected");
        }
        let invalid = [
            "",
            "-a",
            "a-",
            "_a",
            "a_",
            "a--b",
            "a__b",
            "a-_b",
            "a_-b",
            "a.b",
            "a b",
            "a/b",
            "ä",
            &"x".repeat(64),
        ];
        for name in invalid {
            assert!(validate_name(name).is_err(), "{name:?} was accepted");
        }
    }

    #[test]
    fn generated_names_are_valid() {
        let name = generate_name();
        assert!(validate_name(&name).is_ok());
        assert_eq!(name.len(), 12);
        assert!(name.starts_with("run-"));
    }

    #[test]
    fn formats_times_in_utc() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_time(1_796_403_909), "2026-12-04T17:05:09Z");
    }

    #[test]
    fn record_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let record = SandboxRecord {
            name: "box".to_string(),
            image: "busybox:latest".to_string(),
            profile: "restrictive".to_string(),
            created: 1_796_403_909,
            keep: true,
        };
        record.write(dir.path()).unwrap();
        assert_eq!(SandboxRecord::read(dir.path()).unwrap(), record);
    }
}
