//! Layer unpacking (placeholder).
