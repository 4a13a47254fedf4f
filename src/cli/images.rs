//! `agentkernel images`: the cached image references.

use std::path::Path;

use anyhow::Context;
use clap::Args;
use rootfs_cache::ImageStore;

#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn images(root: &Path, args: ImagesArgs) -> anyhow::Result<()> {
    let store = ImageStore::open(root)
        .with_context(|| format!("cannot open the image cache in {}", root.display()))?;
    let records = store.records()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&records)?);
        return Ok(());
    }
    println!("{:<60} DIGEST", "REFERENCE");
    for record in records {
        println!("{:<60} {}", record.reference, record.manifest_digest);
    }
    Ok(())
}
