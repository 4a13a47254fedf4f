//! Parses the input as an image source, an image reference and a digest.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    rootfs_cache_fuzz::parse_references(data);
});
