//! OCI image references, registry pulls, a content-addressed blob store and a cache of
//! unpacked layers that overlayfs stacks into a root filesystem.

pub mod blobs;
pub mod digest;
pub mod image;
pub mod reference;
pub mod registry;
pub mod store;
pub mod unpack;

pub use digest::Digest;
pub use image::{ContainerConfig, ImageConfig};
pub use reference::ImageReference;
pub use registry::RegistryConfig;
pub use store::{Image, ImageStore, PullOptions, PullPolicy, PullProgress, StoreError};
