//! `agentkernel images` and `agentkernel rmi`: list and remove cached images.

use std::path::Path;

use anyhow::Context;
use clap::Args;
use rootfs_cache::{ImageSource, ImageStore, ImageSummary};
use serde::Serialize;

#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Print a JSON array instead of a table. Each entry has reference, resolved_digest,
    /// manifest_digest, config_digest, blob_bytes, unpacked_bytes, layers, complete,
    /// pulled_at and last_used (Unix seconds; null if no sandbox used the image yet; a run
    /// rewrites last_used at most once a minute).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RmiArgs {
    /// Images to remove, as `agentkernel images` lists them (e.g. busybox:latest or
    /// oci:/srv/layout:app).
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,
}

/// One image in `agentkernel images --json`. The field names are a stable interface.
#[derive(Serialize)]
struct ImageEntry<'a> {
    reference: &'a str,
    resolved_digest: String,
    manifest_digest: String,
    config_digest: String,
    /// Bytes of the stored manifests, config and layer blobs.
    blob_bytes: u64,
    /// Apparent size of the unpacked layer directories, as `du -sb` counts it.
    unpacked_bytes: u64,
    layers: usize,
    /// Whether every layer is unpacked, so a run needs no pull.
    complete: bool,
    pulled_at: u64,
    last_used: Option<u64>,
}

impl<'a> From<&'a ImageSummary> for ImageEntry<'a> {
    fn from(summary: &'a ImageSummary) -> Self {
        let record = &summary.record;
        ImageEntry {
            reference: &record.reference,
            resolved_digest: record.resolved_digest.to_string(),
            manifest_digest: record.manifest_digest.to_string(),
            config_digest: record.config_digest.to_string(),
            blob_bytes: summary.blob_bytes,
            unpacked_bytes: summary.unpacked_bytes,
            layers: summary.layers,
            complete: summary.complete,
            pulled_at: record.pulled_at,
            last_used: record.last_used,
        }
    }
}

pub fn images(root: &Path, args: ImagesArgs) -> anyhow::Result<()> {
    let store = open(root)?;
    let summaries = store.summaries()?;
    if args.json {
        let entries: Vec<ImageEntry> = summaries.iter().map(ImageEntry::from).collect();
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let width = summaries
        .iter()
        .map(|summary| summary.record.reference.len())
        .max()
        .unwrap_or(0)
        .max("REFERENCE".len());
    println!(
        "{:<width$}  {:<19}  {:>9}  {:>9}  LAST USED",
        "REFERENCE", "DIGEST", "BLOBS", "UNPACKED"
    );
    for summary in &summaries {
        let record = &summary.record;
        let unpacked = if summary.complete {
            human_bytes(summary.unpacked_bytes)
        } else {
            "incomplete".to_owned()
        };
        println!(
            "{:<width$}  {:<19}  {:>9}  {:>9}  {}",
            record.reference,
            &record.manifest_digest.to_string()[..19],
            human_bytes(summary.blob_bytes),
            unpacked,
            last_used(record.last_used, now),
        );
    }
    Ok(())
}

pub fn rmi(root: &Path, args: RmiArgs) -> anyhow::Result<()> {
    let store = open(root)?;
    let mut missing = Vec::new();
    for text in &args.images {
        let source: ImageSource = text.parse()?;
        if store.remove(&source)? {
            println!("removed {source}");
        } else {
            missing.push(source.to_string());
        }
    }
    if !missing.is_empty() {
        anyhow::bail!(
            "no image {} in the cache at {}; {} lists the cached images",
            missing.join(", "),
            root.display(),
            super::errors::command_line(root, "images")
        );
    }
    Ok(())
}

fn open(root: &Path) -> anyhow::Result<ImageStore> {
    ImageStore::open(root)
        .with_context(|| format!("cannot open the image cache in {}", root.display()))
}

/// Formats a byte count with decimal units, as `docker images` does: `512 B`, `4.2 MB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["kB", "MB", "GB", "TB", "PB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1000.0;
    let mut unit = 0;
    while value >= 999.95 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Formats a `last_used` time relative to `now`: `never`, `12 seconds ago`, `3 days ago`.
fn last_used(time: Option<u64>, now: u64) -> String {
    let Some(time) = time else {
        return "never".to_owned();
    };
    let age = now.saturating_sub(time);
    let (count, unit) = match age {
        0..60 => (age, "second"),
        60..3600 => (age / 60, "minute"),
        3600..86400 => (age / 3600, "hour"),
        _ => (age / 86400, "day"),
    };
    let plural = if count == 1 { "" } else { "s" };
    format!("{count} {unit}{plural} ago")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_use_decimal_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1000), "1.0 kB");
        assert_eq!(human_bytes(2_130_432), "2.1 MB");
        assert_eq!(human_bytes(999_960), "1.0 MB");
        assert_eq!(human_bytes(5_000_000_000_000), "5.0 TB");
    }

    #[test]
    fn last_use_is_relative() {
        assert_eq!(last_used(None, 100), "never");
        assert_eq!(last_used(Some(100), 100), "0 seconds ago");
        assert_eq!(last_used(Some(99), 100), "1 second ago");
        assert_eq!(last_used(Some(0), 150), "2 minutes ago");
        assert_eq!(last_used(Some(0), 7200), "2 hours ago");
        assert_eq!(last_used(Some(0), 86400), "1 day ago");
        // A clock that went backwards reads as just now.
        assert_eq!(last_used(Some(200), 100), "0 seconds ago");
    }
}
