//! `agentkernel`: runs commands in throw-away Linux sandboxes made from OCI images.

mod profile;
mod sandbox;
mod spec;

fn main() {}
