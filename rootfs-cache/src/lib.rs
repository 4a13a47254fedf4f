//! OCI image references, registry pulls, a content-addressed blob store and a cache of
//! unpacked layers that overlayfs stacks into a root filesystem.

pub mod unpack;
