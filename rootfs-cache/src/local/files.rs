//! Read access to the files of a local image: a directory, or the members of an
//! uncompressed tar archive found by one scan of its headers and then read by seeking.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// How many symlinks or hard links a member lookup follows before it gives up.
const MAX_LINK_HOPS: usize = 16;

/// A readable file of a local image and its length in bytes.
pub(crate) type Opened = (Box<dyn Read + Send>, u64);

/// The files of a local image.
#[derive(Debug)]
pub(crate) enum Files {
    /// Files below a directory.
    Dir(PathBuf),
    /// Members of an uncompressed tar archive.
    Tar {
        /// The archive.
        path: PathBuf,
        /// Members by normalised path.
        members: HashMap<String, Member>,
    },
}

/// A tar member that can be read.
#[derive(Debug, Clone)]
pub(crate) enum Member {
    /// A regular file: where its data starts in the archive, and its length.
    File { offset: u64, size: u64 },
    /// A symlink or hard link, with the normalised archive path it points to.
    Link(String),
}

impl Files {
    /// Scans the headers of the tar archive at `path`.
    pub(crate) fn tar(path: &Path) -> Result<Files, String> {
        let mut file =
            File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let mut magic = [0u8; 4];
        let read = file
            .read(&mut magic)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        match &magic[..read] {
            [0x1f, 0x8b, ..] => {
                return Err(format!(
                    "{} is gzip-compressed; decompress it with gunzip first",
                    path.display()
                ));
            }
            [0x28, 0xb5, 0x2f, 0xfd] => {
                return Err(format!(
                    "{} is zstd-compressed; decompress it with unzstd first",
                    path.display()
                ));
            }
            _ => {}
        }
        file.rewind()
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let members = index_members(file).map_err(|e| {
            format!(
                "invalid tar archive {}: {}",
                path.display(),
                printable_prefix(&e.to_string())
            )
        })?;
        Ok(Files::Tar {
            path: path.to_owned(),
            members,
        })
    }

    /// Opens the file `name` (a `/`-separated relative path); `None` if there is none.
    pub(crate) fn open(&self, name: &str) -> Result<Option<Opened>, String> {
        match self {
            Files::Dir(dir) => {
                let path = dir.join(name);
                let file = match File::open(&path) {
                    Ok(file) => file,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(format!("cannot open {}: {e}", path.display())),
                };
                let metadata = file
                    .metadata()
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                if !metadata.is_file() {
                    return Err(format!("{} is not a regular file", path.display()));
                }
                Ok(Some((Box::new(file), metadata.len())))
            }
            Files::Tar { path, members } => {
                let Some((offset, size)) = resolve(members, name) else {
                    return Ok(None);
                };
                let mut file =
                    File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
                file.seek(SeekFrom::Start(offset))
                    .map_err(|e| format!("cannot read {name} in {}: {e}", path.display()))?;
                Ok(Some((Box::new(file.take(size)), size)))
            }
        }
    }

    /// Reads the whole file `name` if it is at most `limit` bytes long.
    pub(crate) fn read_small(&self, name: &str, limit: u64) -> Result<Option<Vec<u8>>, String> {
        let Some((reader, size)) = self.open(name)? else {
            return Ok(None);
        };
        if size > limit {
            return Err(format!(
                "{name} is {size} bytes, more than the {limit}-byte limit for image documents"
            ));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        reader
            .take(limit)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read {name}: {e}"))?;
        Ok(Some(bytes))
    }
}

/// Lists the regular files, symlinks and hard links of a tar archive by normalised path.
fn index_members(file: File) -> io::Result<HashMap<String, Member>> {
    let mut archive = tar::Archive::new(file);
    let mut members = HashMap::new();
    for entry in archive.entries_with_seek()? {
        let entry = entry?;
        let Some(name) = normalise(&String::from_utf8_lossy(&entry.path_bytes())) else {
            continue;
        };
        let kind = entry.header().entry_type();
        let member = if kind.is_file() || kind.is_contiguous() {
            Member::File {
                offset: entry.raw_file_position(),
                size: entry.size(),
            }
        } else if kind.is_symlink() || kind.is_hard_link() {
            let Some(target) = entry.link_name_bytes() else {
                continue;
            };
            let target = String::from_utf8_lossy(&target).into_owned();
            let joined = if kind.is_hard_link() || target.starts_with('/') {
                target
            } else {
                match name.rsplit_once('/') {
                    Some((parent, _)) => format!("{parent}/{target}"),
                    None => target,
                }
            };
            let Some(target) = normalise(&joined) else {
                continue;
            };
            Member::Link(target)
        } else {
            continue;
        };
        members.insert(name, member);
    }
    Ok(members)
}

/// Finds the data of member `name`, following links.
fn resolve(members: &HashMap<String, Member>, name: &str) -> Option<(u64, u64)> {
    let mut name = normalise(name)?;
    for _ in 0..MAX_LINK_HOPS {
        match members.get(&name)? {
            Member::File { offset, size } => return Some((*offset, *size)),
            Member::Link(target) => name = target.clone(),
        }
    }
    None
}

/// Removes `.`, empty components and a leading `/`, and applies `..`; `None` when the
/// path is empty or leaves the archive's root.
pub(crate) fn normalise(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            part => parts.push(part),
        }
    }
    if parts.is_empty() {
        None
    } else {
        Some(parts.join("/"))
    }
}

/// Returns `message` without the part that quotes binary data: when it contains a character
/// that is not printable ASCII, it is cut at the last `": "` before that character. The tar
/// crate quotes header bytes in some messages, which for a file that is not a tar archive are
/// arbitrary binary.
fn printable_prefix(message: &str) -> &str {
    match message.find(|c: char| !(c.is_ascii_graphic() || c == ' ')) {
        Some(binary) => match message[..binary].rfind(": ") {
            Some(cut) => &message[..cut],
            None => &message[..binary],
        },
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_in_tar_errors_is_cut() {
        assert_eq!(
            printable_prefix(
                "numeric field did not have utf-8 text: V\u{fffd}7 when getting cksum"
            ),
            "numeric field did not have utf-8 text"
        );
        assert_eq!(
            printable_prefix("failed to read entire block"),
            "failed to read entire block"
        );
    }

    fn archive(dir: &Path) -> PathBuf {
        let path = dir.join("a.tar");
        let mut builder = tar::Builder::new(File::create(&path).unwrap());
        let mut header = tar::Header::new_gnu();
        header.set_size(5);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, "./blobs/sha256/abc", &b"hello"[..])
            .unwrap();
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        builder
            .append_link(&mut link, "id/layer.tar", "../blobs/sha256/abc")
            .unwrap();
        let mut hard = tar::Header::new_gnu();
        hard.set_entry_type(tar::EntryType::Link);
        hard.set_size(0);
        builder
            .append_link(&mut hard, "copy", "blobs/sha256/abc")
            .unwrap();
        let mut escape = tar::Header::new_gnu();
        escape.set_entry_type(tar::EntryType::Symlink);
        escape.set_size(0);
        builder
            .append_link(&mut escape, "out", "../../etc/passwd")
            .unwrap();
        builder.finish().unwrap();
        path
    }

    fn read(files: &Files, name: &str) -> Option<String> {
        let (mut reader, size) = files.open(name).unwrap()?;
        let mut text = String::new();
        reader.read_to_string(&mut text).unwrap();
        assert_eq!(size as usize, text.len());
        Some(text)
    }

    #[test]
    fn tar_members_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let files = Files::tar(&archive(dir.path())).unwrap();
        assert_eq!(read(&files, "blobs/sha256/abc").as_deref(), Some("hello"));
        assert_eq!(read(&files, "id/layer.tar").as_deref(), Some("hello"));
        assert_eq!(read(&files, "copy").as_deref(), Some("hello"));
        assert_eq!(read(&files, "out"), None);
        assert_eq!(read(&files, "missing"), None);
    }

    #[test]
    fn compressed_archives_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.tar.gz");
        std::fs::write(&path, [0x1f, 0x8b, 8, 0, 0, 0]).unwrap();
        let error = Files::tar(&path).unwrap_err();
        assert!(error.contains("gunzip"), "{error}");
    }

    #[test]
    fn normalised_paths() {
        assert_eq!(normalise("./a//b/./c").as_deref(), Some("a/b/c"));
        assert_eq!(normalise("a/../b").as_deref(), Some("b"));
        assert_eq!(normalise("/a").as_deref(), Some("a"));
        assert_eq!(normalise("../a"), None);
        assert_eq!(normalise("."), None);
    }
}
