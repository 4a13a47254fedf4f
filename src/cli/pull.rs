//! `agentkernel pull`, and the pull step shared with `run`.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use rootfs_cache::{
    Digest, Image, ImageReference, ImageStore, PullOptions, PullPolicy, PullProgress,
    RegistryConfig,
};

use crate::config::Config;

#[derive(Debug, Args)]
pub struct PullArgs {
    /// Image reference, e.g. python:3.12-alpine or 127.0.0.1:5000/library/busybox:latest.
    pub image: String,

    /// Project configuration file with [registry] settings [default: ./agentkernel.toml].
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
}

pub fn pull(root: &Path, args: PullArgs) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref())?;
    let reference: ImageReference = args.image.parse()?;
    let store = ImageStore::open(root)
        .with_context(|| format!("cannot open the image cache in {}", root.display()))?;
    let image = pull_with_policy(
        &store,
        &reference,
        registry_config(&config),
        PullPolicy::Always,
    )?;
    println!("{} {}", image.reference, image.manifest_digest);
    Ok(())
}

/// The registry settings of a config file.
pub fn registry_config(config: &Config) -> RegistryConfig {
    RegistryConfig {
        mirrors: config.registry.mirrors.clone(),
        insecure: config.registry.insecure.clone(),
        ca_files: config.registry.ca_files.clone(),
        docker_config: None,
    }
}

/// Pulls `reference` unless it is cached.
pub fn pull_image(
    store: &ImageStore,
    reference: &ImageReference,
    registry: RegistryConfig,
) -> anyhow::Result<Image> {
    pull_with_policy(store, reference, registry, PullPolicy::IfMissing)
}

fn pull_with_policy(
    store: &ImageStore,
    reference: &ImageReference,
    registry: RegistryConfig,
    policy: PullPolicy,
) -> anyhow::Result<Image> {
    let options = PullOptions {
        registry,
        policy,
        progress: Arc::new(LineProgress {
            enabled: std::io::stderr().is_terminal(),
        }),
        ..Default::default()
    };
    // The runtime and its threads end before this function returns: libcontainer forks
    // without running fork handlers, so no other thread may be alive when it does.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime for pulling")?;
    let result = runtime.block_on(async {
        tokio::select! {
            result = store.pull(reference, &options) => result.map_err(anyhow::Error::from),
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!(
                "interrupted; the cache keeps only complete, verified entries, so run the command again to resume"
            )),
        }
    });
    // Dropping the runtime waits for a layer that is being unpacked on a blocking thread;
    // its staging directory is removed, so nothing partial stays in the cache.
    drop(runtime);
    result.with_context(|| format!("cannot pull {reference}"))
}

/// Progress as one line per layer on stderr, when stderr is a terminal.
struct LineProgress {
    enabled: bool,
}

impl PullProgress for LineProgress {
    fn download_started(&self, digest: &Digest, size: u64) {
        if self.enabled {
            eprintln!("pulling {} ({:.1} MB)", short(digest), size as f64 / 1e6);
        }
    }

    fn unpack_finished(&self, digest: &Digest) {
        if self.enabled {
            eprintln!("unpacked {}", short(digest));
        }
    }
}

fn short(digest: &Digest) -> &str {
    &digest.encoded()[..12]
}
