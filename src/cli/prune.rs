//! `agentkernel prune`: remove the blobs and layers that no image and no sandbox uses, and the
//! iptables rules of isolated networks when no sandbox has one.

use std::path::Path;

use anyhow::Context;
use clap::Args;
use rootfs_cache::ImageStore;

use super::images::human_bytes;
use super::sandbox_layers;

#[derive(Debug, Args)]
pub struct PruneArgs {}

pub fn prune(root: &Path, _args: PruneArgs) -> anyhow::Result<()> {
    super::sandboxes::collect_orphans(root);
    let store = ImageStore::open(root)
        .with_context(|| format!("cannot open the image cache in {}", root.display()))?;
    // Waits for pulls, and for runs that have not yet recorded their layers.
    let lock = store.lock_for_prune()?;
    let (in_use, warnings) = sandbox_layers::in_use(root)?;
    for warning in warnings {
        eprintln!("agentkernel: warning: {warning}");
    }
    let report = store.prune(&lock, &in_use)?;
    drop(lock);
    match crate::sandbox::remove_unused_rules() {
        Ok(true) => tracing::info!("removed the iptables rules of isolated networks"),
        Ok(false) => {}
        Err(error) => eprintln!(
            "agentkernel: warning: cannot remove the iptables rules of isolated networks: {error:#}"
        ),
    }
    println!(
        "removed {}, {} and {}; freed {} bytes ({})",
        count(report.blobs, "blob", "blobs"),
        count(report.layers, "layer", "layers"),
        count(report.temporary, "temporary entry", "temporary entries"),
        report.bytes_freed,
        human_bytes(report.bytes_freed)
    );
    Ok(())
}

fn count(n: usize, singular: &str, plural: &str) -> String {
    format!("{n} {}", if n == 1 { singular } else { plural })
}
