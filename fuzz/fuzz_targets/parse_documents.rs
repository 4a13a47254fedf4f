//! Parses the input as a manifest or index and as an image config.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    rootfs_cache_fuzz::parse_documents(data);
});
