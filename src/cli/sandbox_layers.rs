//! The layer list of each sandbox, `<root>/sandbox-layers/<id>.json`, which `prune` reads
//! to keep the layers that sandboxes mount.
//!
//! `run` writes the list while it holds the store's run lock, before it creates
//! `<root>/sandboxes/<id>`, and removes it once the sandbox is gone. A kept sandbox keeps
//! its list for as long as its directory exists.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rootfs_cache::{Image, LayersInUse};
use serde::{Deserialize, Serialize};

const DIR: &str = "sandbox-layers";

/// The file of one sandbox.
#[derive(Debug, Serialize, Deserialize)]
struct SandboxLayers {
    /// The sandbox id, the name of `<root>/sandboxes/<id>`.
    id: String,
    /// The `agentkernel run` process that created the sandbox.
    pid: u32,
    /// The image source, for people reading the file.
    image: String,
    /// The lower directories of the sandbox's overlay, bottom layer first.
    layer_dirs: Vec<PathBuf>,
}

fn path(root: &Path, id: &str) -> PathBuf {
    root.join(DIR).join(format!("{id}.json"))
}

/// Writes the layer list of sandbox `id` atomically.
pub fn write(root: &Path, id: &str, image: &Image) -> anyhow::Result<()> {
    let dir = root.join(DIR);
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let record = SandboxLayers {
        id: id.to_owned(),
        pid: std::process::id(),
        image: image.reference.to_string(),
        layer_dirs: image.layer_dirs.clone(),
    };
    let path = path(root, id);
    let temp = dir.join(format!(".{id}.json.{}.tmp", record.pid));
    let json = serde_json::to_vec_pretty(&record)?;
    fs::write(&temp, json).with_context(|| format!("cannot write {}", temp.display()))?;
    fs::rename(&temp, &path).with_context(|| format!("cannot rename into {}", path.display()))?;
    Ok(())
}

/// Removes the layer list of sandbox `id` if this process wrote it.
pub fn remove(root: &Path, id: &str) -> anyhow::Result<()> {
    let path = path(root, id);
    let ours = fs::read(&path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<SandboxLayers>(&bytes).ok())
        .is_some_and(|record| record.pid == std::process::id());
    if ours {
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("cannot remove {}", path.display()));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Collects the layers of every sandbox that exists or whose `run` process is alive, and
/// removes the lists of the others. Returns [`LayersInUse::All`] with a warning when a
/// sandbox directory has no readable list, so its layers cannot be known.
///
/// Call it while holding the store's prune lock, so no run writes a list meanwhile.
pub fn in_use(root: &Path) -> anyhow::Result<(LayersInUse, Vec<String>)> {
    let mut dirs = Vec::new();
    let mut warnings = Vec::new();
    let mut listed = Vec::new();
    let list_dir = root.join(DIR);
    for name in names(&list_dir)? {
        let path = list_dir.join(&name);
        if !name.ends_with(".json") {
            // A temporary file of an interrupted write; writers hold the run lock, so no
            // write is in progress now.
            if name.ends_with(".tmp") {
                fs::remove_file(&path)
                    .with_context(|| format!("cannot remove {}", path.display()))?;
            }
            continue;
        }
        let record = fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<SandboxLayers>(&bytes).ok());
        let Some(record) = record else {
            warnings.push(format!(
                "{} is not a readable sandbox layer list; keeping every layer",
                path.display()
            ));
            return Ok((LayersInUse::All, warnings));
        };
        if root.join("sandboxes").join(&record.id).exists() || process_alive(record.pid) {
            listed.push(record.id.clone());
            dirs.extend(record.layer_dirs);
        } else {
            fs::remove_file(&path)
                .with_context(|| format!("cannot remove the stale {}", path.display()))?;
        }
    }
    for id in names(&root.join("sandboxes"))? {
        if !listed.contains(&id) && root.join("sandboxes").join(&id).is_dir() {
            warnings.push(format!(
                "sandbox {} has no layer list in {}; keeping every layer",
                root.join("sandboxes").join(&id).display(),
                list_dir.display()
            ));
            return Ok((LayersInUse::All, warnings));
        }
    }
    Ok((LayersInUse::Dirs(dirs), warnings))
}

fn names(dir: &Path) -> anyhow::Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        if let Ok(name) = entry.file_name().into_string() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // Signal 0 checks that the process exists; EPERM means it exists as another user's.
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(errno) => errno == nix::errno::Errno::EPERM,
    }
}
