//! `agentkernel pull`, and the pull step shared with `run`.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use rootfs_cache::unpack::UnpackOptions;
use rootfs_cache::{
    Digest, Image, ImageSource, ImageStore, LayerWork, PullOptions, PullPolicy, PullProgress,
    RegistryConfig,
};

use super::images::human_bytes;
use crate::config::Config;

#[derive(Debug, Args)]
pub struct PullArgs {
    /// Image to pull: a reference such as python:3.12-alpine or
    /// 127.0.0.1:5000/library/busybox:latest, an OCI image layout as oci:DIR[:REF], or a
    /// `docker save` archive as docker-archive:FILE[:NAME:TAG].
    pub image: String,

    /// Project configuration file with [registry] settings [default: ./agentkernel.toml].
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
}

pub fn pull(root: &Path, args: PullArgs) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref())?;
    let source: ImageSource = args.image.parse()?;
    let store = ImageStore::open(root)
        .with_context(|| format!("cannot open the image cache in {}", root.display()))?;
    let progress: Arc<dyn PullProgress> = if std::io::stderr().is_terminal() {
        Arc::new(BarProgress::new())
    } else {
        Arc::new(LineProgress::default())
    };
    let options = PullOptions {
        registry: registry_config(&config),
        policy: PullPolicy::Always,
        unpack: unpack_options(&config),
        progress,
    };
    let image = pull_with(&store, &source, &options)?;
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

/// Returns the unpack limits of a config file.
pub fn unpack_options(config: &Config) -> UnpackOptions {
    let mut options = UnpackOptions::default();
    if let Some(mb) = config.registry.max_layer_mb {
        options.max_uncompressed_bytes = mb.saturating_mul(1024 * 1024);
    }
    options
}

/// Pulls `source` unless it is cached, with progress bars when stderr is a terminal and no
/// output otherwise, so that a run's stderr holds only the command's own.
pub fn pull_image(
    store: &ImageStore,
    source: &ImageSource,
    registry: RegistryConfig,
    unpack: UnpackOptions,
) -> anyhow::Result<Image> {
    let progress: Arc<dyn PullProgress> = if std::io::stderr().is_terminal() {
        Arc::new(BarProgress::new())
    } else {
        Arc::new(NoProgress)
    };
    let options = PullOptions {
        registry,
        policy: PullPolicy::IfMissing,
        unpack,
        progress,
    };
    pull_with(store, source, &options)
}

fn pull_with(
    store: &ImageStore,
    source: &ImageSource,
    options: &PullOptions,
) -> anyhow::Result<Image> {
    // The runtime and its threads end before this function returns: libcontainer forks
    // without running fork handlers, so no other thread may be alive when it does.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime for pulling")?;
    let result = runtime.block_on(async {
        tokio::select! {
            result = store.pull(source, options) => result.map_err(anyhow::Error::from),
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!(
                "interrupted; the cache keeps only complete, verified entries, so run the command again to resume"
            )),
        }
    });
    // Dropping the runtime waits for a layer that is being unpacked on a blocking thread;
    // its staging directory is removed, so nothing partial stays in the cache.
    drop(runtime);
    result.with_context(|| format!("cannot pull {source}"))
}

struct NoProgress;
impl PullProgress for NoProgress {}

/// One line per layer on stderr when the layer is ready: `<digest> <size> bytes <status>`,
/// where status is `done` (fetched or unpacked now) or `cached` (unpacked before).
#[derive(Default)]
struct LineProgress {
    sizes: Mutex<HashMap<Digest, u64>>,
}

impl PullProgress for LineProgress {
    fn layer_queued(&self, digest: &Digest, size: u64, work: LayerWork) {
        if work == LayerWork::None {
            eprintln!("{digest} {size} bytes cached");
        } else if let Ok(mut sizes) = self.sizes.lock() {
            sizes.insert(digest.clone(), size);
        }
    }

    fn unpack_finished(&self, digest: &Digest) {
        let size = self
            .sizes
            .lock()
            .ok()
            .and_then(|sizes| sizes.get(digest).copied())
            .unwrap_or(0);
        eprintln!("{digest} {size} bytes done");
    }
}

/// A progress bar per layer with bytes, total and speed, drawn on stderr. While a blob is
/// fetched, the speed is indicatif's running estimate. Afterwards it is the average over
/// the whole fetch, so that it does not decay while the layer waits to be unpacked.
struct BarProgress {
    bars: MultiProgress,
    layers: Mutex<HashMap<Digest, Layer>>,
    fetching: ProgressStyle,
    fixed: ProgressStyle,
}

struct Layer {
    bar: ProgressBar,
    /// The average speed of the finished fetch, e.g. `5.6 MB/s`.
    speed: Option<String>,
}

impl BarProgress {
    fn new() -> BarProgress {
        let style = |template: &str| {
            ProgressStyle::with_template(template)
                .expect("the progress template is valid")
                .progress_chars("=> ")
        };
        BarProgress {
            bars: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            layers: Mutex::new(HashMap::new()),
            fetching: style(
                "{prefix} [{bar:30}] {decimal_bytes:>9}/{decimal_total_bytes:<9} {decimal_bytes_per_sec:>11} {msg}",
            ),
            fixed: style("{prefix} [{bar:30}] {decimal_bytes:>9}/{decimal_total_bytes:<9} {msg}"),
        }
    }

    fn with_layer(&self, digest: &Digest, action: impl FnOnce(&mut Layer)) {
        if let Ok(mut layers) = self.layers.lock() {
            if let Some(layer) = layers.get_mut(digest) {
                action(layer);
            }
        }
    }
}

impl Layer {
    /// Formats the message after the fetch: the average speed (blank if nothing was
    /// fetched), aligned with the running speed, then `status`.
    fn status(&self, status: &str) -> String {
        format!("{:>11} {status}", self.speed.as_deref().unwrap_or(""))
    }
}

impl PullProgress for BarProgress {
    fn layer_queued(&self, digest: &Digest, size: u64, work: LayerWork) {
        let bar = self.bars.add(
            ProgressBar::new(size)
                .with_style(self.fixed.clone())
                .with_prefix(short(digest).to_owned()),
        );
        let layer = Layer { bar, speed: None };
        match work {
            LayerWork::None => {
                layer.bar.set_position(size);
                layer.bar.finish_with_message(layer.status("cached"));
            }
            LayerWork::Unpack => {
                layer.bar.set_position(size);
                layer
                    .bar
                    .set_message(layer.status("stored, waiting to unpack"));
            }
            LayerWork::FetchAndUnpack => layer.bar.set_message(layer.status("waiting")),
        }
        if let Ok(mut layers) = self.layers.lock() {
            layers.insert(digest.clone(), layer);
        }
    }

    fn download_started(&self, digest: &Digest, _size: u64) {
        self.with_layer(digest, |layer| {
            layer.bar.reset_elapsed();
            layer.bar.set_style(self.fetching.clone());
            layer.bar.set_message("fetching");
        });
    }

    fn downloaded(&self, digest: &Digest, bytes: u64) {
        self.with_layer(digest, |layer| layer.bar.inc(bytes));
    }

    fn download_finished(&self, digest: &Digest) {
        self.with_layer(digest, |layer| {
            let seconds = layer.bar.elapsed().as_secs_f64().max(0.001);
            let speed = (layer.bar.position() as f64 / seconds) as u64;
            layer.speed = Some(format!("{}/s", human_bytes(speed)));
            layer.bar.set_style(self.fixed.clone());
            layer.bar.set_message(layer.status("waiting to unpack"));
        });
    }

    fn unpack_started(&self, digest: &Digest) {
        self.with_layer(digest, |layer| {
            layer.bar.set_message(layer.status("unpacking"))
        });
    }

    fn unpack_finished(&self, digest: &Digest) {
        self.with_layer(digest, |layer| {
            layer.bar.finish_with_message(layer.status("done"))
        });
    }
}

fn short(digest: &Digest) -> &str {
    &digest.encoded()[..12]
}
