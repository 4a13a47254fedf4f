//! OCI image references, registry pulls, a content-addressed blob store and a cache of
//! unpacked layers that overlayfs stacks into a root filesystem. Images come from registries,
//! OCI image layouts or `docker save` archives.

pub mod blobs;
pub mod digest;
pub mod image;
mod local;
pub mod reference;
pub mod registry;
pub mod source;
pub mod store;
pub mod unpack;

pub use digest::Digest;
pub use image::{ContainerConfig, ImageConfig};
pub use reference::ImageReference;
pub use registry::RegistryConfig;
pub use source::ImageSource;
pub use store::{
    Image, ImageStore, ImageSummary, LayerWork, LayersInUse, PruneReport, PullOptions, PullPolicy,
    PullProgress, StoreError,
};
