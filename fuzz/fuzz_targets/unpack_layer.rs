//! Unpacks the input as an uncompressed layer tar over a fixed parent layer and checks
//! that nothing outside the destination changed.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    rootfs_cache_fuzz::unpack_layer(data);
});
