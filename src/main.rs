//! `agentkernel`: runs commands in throw-away Linux sandboxes made from OCI images.

mod cli;
mod config;
mod image_choice;
mod profile;
mod sandbox;
mod seccomp;
mod spec;

fn main() {
    std::process::exit(cli::main());
}
