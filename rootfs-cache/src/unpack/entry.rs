//! Parsing of tar entries: normalized paths, whiteout names and metadata.

use std::cell::Cell;
use std::ffi::CString;
use std::io::{self, Read};
use std::rc::Rc;

use rustix::fs::{FileType, Timespec, Timestamps};
use tar::{EntryType, Header};

use super::UnpackError;
use super::metadata::Metadata;
use super::sparse::PaxSparse;
use super::stream::{BudgetReader, EndPadding};
use super::tree::Tree;

/// Name prefix of an OCI whiteout file.
const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// Name prefix of AUFS metadata (`.wh..wh.plnk`, `.wh..wh.aufs`), which is never applied.
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
/// Name of the OCI opaque-directory marker.
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// PAX record prefix of an extended attribute, as written by GNU tar, bsdtar and Go.
const PAX_XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";
/// Xattr prefix that overlayfs reserves for its own metadata.
pub(super) const OVERLAY_XATTR_PREFIX: &[u8] = b"trusted.overlay.";

/// Maximum number of bytes that the tar parser may read between two entries: headers,
/// padding, PAX and GNU long-name data and GNU sparse maps. The parser buffers extension
/// data in memory. Go's archive/tar rejects a PAX header or long name over 1 MiB, and this
/// budget allows that much for each of the three extension types plus a sparse map.
const MAX_HEADER_BYTES: u64 = 4 << 20;

/// Applies every entry of a tar stream to `tree`.
pub(super) fn apply_archive<R: Read>(stream: R, tree: &mut Tree) -> Result<(), UnpackError> {
    let budget = Rc::new(Cell::new(None));
    let real_end = Rc::new(Cell::new(None));
    let mut archive = tar::Archive::new(BudgetReader {
        inner: EndPadding {
            inner: stream,
            position: 0,
            end: Rc::clone(&real_end),
            zeros_left: 0,
        },
        remaining: Rc::clone(&budget),
    });
    let mut entries = archive.entries().map_err(|source| UnpackError::Read {
        entry: None,
        source,
    })?;
    let mut last_path = None;
    loop {
        budget.set(Some(MAX_HEADER_BYTES));
        let next = entries.next();
        budget.set(None);
        let Some(entry) = next else {
            break;
        };
        let mut entry = entry.map_err(|source| UnpackError::Read {
            entry: last_path.take(),
            source,
        })?;
        if entry.header().entry_type().is_pax_global_extensions() {
            // containerd and Docker skip global PAX headers too (git archive writes one
            // with the commit ID), so their records never change later entries. Their
            // data is drained without being parsed or buffered.
            io::copy(&mut entry, &mut io::sink()).map_err(|source| UnpackError::Read {
                entry: last_path.clone(),
                source,
            })?;
            continue;
        }
        let kind = entry.header().entry_type();
        if kind.is_pax_local_extensions() || kind.is_gnu_longname() || kind.is_gnu_longlink() {
            // The tar parser consumes these before the entry they describe, unless the
            // header is neither ustar nor GNU. Reading one as an entry would buffer all
            // of its data.
            return Err(UnpackError::InvalidEntry {
                path: String::from_utf8_lossy(&entry.path_bytes()).into_owned(),
                reason: format!(
                    "extension header of type {} outside a ustar or GNU archive",
                    describe_type(kind)
                ),
            });
        }
        let pax = pax_records(&mut entry).map_err(|source| UnpackError::Read {
            entry: Some(String::from_utf8_lossy(&entry.path_bytes()).into_owned()),
            source,
        })?;
        let raw_path = entry.path_bytes().into_owned();
        let path = String::from_utf8_lossy(&raw_path).into_owned();
        let sparse = if entry.header().entry_type() == EntryType::Regular {
            PaxSparse::from_records(&pax).map_err(|reason| UnpackError::InvalidEntry {
                path: path.clone(),
                reason,
            })?
        } else {
            None
        };
        // A PAX sparse file's header names `GNUSparseFile.<pid>/<name>` and the real path
        // is a PAX record.
        let (raw_path, path) = match sparse.as_ref().and_then(|sparse| sparse.name.clone()) {
            Some(name) => {
                let path = String::from_utf8_lossy(&name).into_owned();
                (name, path)
            }
            None => (raw_path, path),
        };
        let parsed = ParsedEntry {
            raw_path: &raw_path,
            path: &path,
            pax: &pax,
            sparse: sparse.as_ref(),
        };
        apply_entry(&mut entry, &parsed, tree)?;
        // Data that `apply_entry` did not read, such as a hardlink entry's, is skipped
        // here so that it does not count against the next entry's header budget.
        io::copy(&mut entry, &mut io::sink()).map_err(|source| UnpackError::Read {
            entry: Some(path.clone()),
            source,
        })?;
        let data_end = entry.raw_file_position() + entry.header().entry_size().unwrap_or(0);
        if real_end.get().is_some_and(|end| data_end > end) {
            return Err(UnpackError::InvalidEntry {
                path,
                reason: "the layer ends inside this entry's data".to_owned(),
            });
        }
        last_path = Some(path);
    }
    check_end_marker(archive.into_inner(), last_path)
}

/// Checks that the zero block that ended the archive is followed by a second zero
/// block or by the end of the stream, as Go's archive/tar requires. Otherwise entries
/// after a lone zero block would be hashed into the diff ID but never applied.
fn check_end_marker<R: Read>(mut stream: R, last_path: Option<String>) -> Result<(), UnpackError> {
    let mut block = [0u8; 512];
    let mut filled = 0;
    while filled < block.len() {
        match stream.read(&mut block[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(UnpackError::Read {
                    entry: last_path,
                    source,
                });
            }
        }
    }
    if block[..filled].iter().any(|byte| *byte != 0) {
        return Err(UnpackError::Read {
            entry: last_path,
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                "data follows a single zero block, so the end-of-archive marker is invalid",
            ),
        });
    }
    Ok(())
}

/// Meaning of an entry's final path component.
enum EntryName<'a> {
    Plain,
    /// `.wh..wh..opq`: the parent directory is opaque.
    Opaque,
    /// `.wh.NAME`: NAME of the lower layers is removed.
    Whiteout(&'a [u8]),
    /// `.wh..wh.*` other than the opaque marker: AUFS metadata, skipped.
    AufsMetadata,
}

/// An entry's path and PAX records, read before it is applied.
struct ParsedEntry<'a> {
    raw_path: &'a [u8],
    /// `raw_path` for messages.
    path: &'a str,
    pax: &'a [(Vec<u8>, Vec<u8>)],
    sparse: Option<&'a PaxSparse>,
}

fn apply_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    parsed: &ParsedEntry<'_>,
    tree: &mut Tree,
) -> Result<(), UnpackError> {
    let path = parsed.path;
    let pax = parsed.pax;
    let invalid = |reason: String| UnpackError::InvalidEntry {
        path: path.to_owned(),
        reason,
    };
    let header = entry.header().clone();
    let mut kind = header.entry_type();
    let raw_path = parsed.raw_path;
    let components = normalize_path(raw_path).map_err(|reason| invalid(reason.to_owned()))?;
    // Pre-POSIX archives mark a directory with a trailing slash on a regular-file entry.
    if kind == EntryType::Regular && header.as_bytes()[156] == 0 && raw_path.ends_with(b"/") {
        kind = EntryType::Directory;
    }
    let metadata = parse_metadata(&header, pax).map_err(invalid)?;

    let Some((name, parent)) = components.split_last() else {
        // `.`, `/`, `..` and the empty name all normalize to the layer root.
        return if kind.is_dir() {
            tree.set_root_metadata(&metadata, path)
        } else {
            Err(invalid(format!(
                "a {} entry cannot replace the layer root",
                describe_type(kind)
            )))
        };
    };
    if let Some(component) = parent.iter().find(|c| c.starts_with(WHITEOUT_PREFIX)) {
        if component.starts_with(WHITEOUT_META_PREFIX) {
            return Ok(());
        }
        return Err(invalid(format!(
            "whiteout name {:?} used as a directory",
            String::from_utf8_lossy(component)
        )));
    }

    match classify_name(name) {
        EntryName::AufsMetadata => return Ok(()),
        EntryName::Opaque => return tree.set_opaque(parent, path),
        EntryName::Whiteout(target) => {
            if target.is_empty() || target == b"." || target == b".." {
                return Err(invalid("whiteout names no file".to_owned()));
            }
            return tree.create_whiteout(parent, target, &metadata, path);
        }
        EntryName::Plain => {}
    }

    match kind {
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
            let file = tree.create_file(parent, name, path)?;
            match parsed.sparse {
                Some(sparse) => sparse.write(entry, &file, path)?,
                None => tree.copy_content(entry, &file, kind == EntryType::GNUSparse, path)?,
            }
            tree.set_fd_metadata(&file, &metadata, true, path)
        }
        EntryType::Directory => tree.create_dir(parent, name, &metadata, path),
        EntryType::Symlink => {
            let target = link_name(entry).ok_or_else(|| invalid("symlink has no target".into()))?;
            tree.create_symlink(parent, name, &target, &metadata, path)
        }
        EntryType::Link => {
            let target =
                link_name(entry).ok_or_else(|| invalid("hardlink has no target".into()))?;
            let target =
                normalize_path(&target).map_err(|reason| invalid(format!("hardlink {reason}")))?;
            tree.create_hardlink(parent, name, &target, path)
        }
        EntryType::Char | EntryType::Block | EntryType::Fifo => {
            let (file_type, device) = match kind {
                EntryType::Fifo => (FileType::Fifo, 0),
                _ => {
                    let major = header.device_major();
                    let minor = header.device_minor();
                    let (Ok(Some(major)), Ok(Some(minor))) = (major, minor) else {
                        return Err(invalid("invalid device number fields".to_owned()));
                    };
                    if kind == EntryType::Char && major == 0 && minor == 0 {
                        return Err(invalid(
                            "character device 0/0 is the overlayfs whiteout and cannot appear \
                             in a layer"
                                .to_owned(),
                        ));
                    }
                    let file_type = if kind == EntryType::Char {
                        FileType::CharacterDevice
                    } else {
                        FileType::BlockDevice
                    };
                    (file_type, rustix::fs::makedev(major, minor))
                }
            };
            tree.create_node(parent, name, file_type, device, &metadata, path)
        }
        other => Err(invalid(format!(
            "unsupported entry type {}",
            describe_type(other)
        ))),
    }
}

/// Splits a tar path into components, resolving `.` and `..` lexically.
///
/// `..` never climbs above the root and a leading `/` is ignored, so the result is always
/// relative to the layer root. An empty result is the root itself.
pub(super) fn normalize_path(raw: &[u8]) -> Result<Vec<Vec<u8>>, &'static str> {
    if raw.contains(&0) {
        return Err("path contains a NUL byte");
    }
    let mut components: Vec<Vec<u8>> = Vec::new();
    for part in raw.split(|byte| *byte == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                components.pop();
            }
            name => components.push(name.to_vec()),
        }
    }
    Ok(components)
}

fn classify_name(name: &[u8]) -> EntryName<'_> {
    if name == OPAQUE_MARKER {
        EntryName::Opaque
    } else if name.starts_with(WHITEOUT_META_PREFIX) {
        EntryName::AufsMetadata
    } else if let Some(target) = name.strip_prefix(WHITEOUT_PREFIX) {
        EntryName::Whiteout(target)
    } else {
        EntryName::Plain
    }
}

fn link_name<R: Read>(entry: &tar::Entry<'_, R>) -> Option<Vec<u8>> {
    entry
        .link_name_bytes()
        .map(|name| name.into_owned())
        .filter(|name| !name.is_empty())
}

fn pax_records<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut records = Vec::new();
    if let Some(extensions) = entry.pax_extensions()? {
        for extension in extensions {
            let extension = extension?;
            records.push((
                extension.key_bytes().to_vec(),
                extension.value_bytes().to_vec(),
            ));
        }
    }
    Ok(records)
}

/// Reads mode, owner, times and xattrs from a header and its PAX records.
///
/// The tar crate already applies the PAX `uid`, `gid`, `size`, `path` and `linkpath`
/// records. This adds `mtime`, `atime` and `SCHILY.xattr.*`.
fn parse_metadata(header: &Header, pax: &[(Vec<u8>, Vec<u8>)]) -> Result<Metadata, String> {
    let mode = header
        .mode()
        .map_err(|error| format!("invalid mode field: {error}"))?
        & 0o7777;
    let uid = parse_id(header.uid(), "uid")?;
    let gid = parse_id(header.gid(), "gid")?;
    let mtime = header
        .mtime()
        .map_err(|error| format!("invalid mtime field: {error}"))?;
    let mut last_modification = Timespec {
        tv_sec: i64::try_from(mtime).map_err(|_| format!("mtime {mtime} is out of range"))?,
        tv_nsec: 0,
    };
    let mut last_access = None;
    let mut xattrs = Vec::new();

    for (key, value) in pax {
        match key.as_slice() {
            b"mtime" => last_modification = parse_pax_time(value)?,
            b"atime" => last_access = Some(parse_pax_time(value)?),
            _ => {
                let Some(name) = key.strip_prefix(PAX_XATTR_PREFIX) else {
                    continue;
                };
                let printable = String::from_utf8_lossy(name);
                if name.starts_with(OVERLAY_XATTR_PREFIX) {
                    return Err(format!(
                        "xattr {printable} is reserved for overlayfs and cannot come from a layer"
                    ));
                }
                let name = CString::new(name)
                    .map_err(|_| format!("xattr name {printable:?} contains a NUL byte"))?;
                xattrs.push((name, value.clone()));
            }
        }
    }

    Ok(Metadata {
        mode,
        uid,
        gid,
        times: Timestamps {
            last_access: last_access.unwrap_or(last_modification),
            last_modification,
        },
        xattrs,
    })
}

fn parse_id(value: io::Result<u64>, field: &str) -> Result<u32, String> {
    let value = value.map_err(|error| format!("invalid {field} field: {error}"))?;
    match u32::try_from(value) {
        // -1 means "unchanged" to chown, so it cannot be stored as an owner.
        Ok(id) if id != u32::MAX => Ok(id),
        _ => Err(format!("{field} {value} is out of range")),
    }
}

/// Parses a PAX time such as `1700000000`, `1700000000.5` or `-1.25`.
fn parse_pax_time(value: &[u8]) -> Result<Timespec, String> {
    let invalid = || format!("invalid PAX time {:?}", String::from_utf8_lossy(value));
    let text = std::str::from_utf8(value).map_err(|_| invalid())?;
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (seconds, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if seconds.is_empty()
        || !seconds.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(invalid());
    }

    let seconds: i64 = seconds.parse().map_err(|_| invalid())?;
    // Digits past nanoseconds are truncated.
    let mut nanos: i64 = 0;
    for position in 0..9 {
        let digit = fraction.as_bytes().get(position).map_or(0, |b| b - b'0');
        nanos = nanos * 10 + i64::from(digit);
    }

    // A negative time with a fraction, such as -1.25, is -2 s plus 0.75 s.
    let time = if negative && nanos > 0 {
        Timespec {
            tv_sec: -seconds - 1,
            tv_nsec: 1_000_000_000 - nanos,
        }
    } else if negative {
        Timespec {
            tv_sec: -seconds,
            tv_nsec: 0,
        }
    } else {
        Timespec {
            tv_sec: seconds,
            tv_nsec: nanos,
        }
    };
    Ok(time)
}

fn describe_type(kind: EntryType) -> String {
    match kind {
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => "regular file".into(),
        EntryType::Link => "hardlink".into(),
        EntryType::Symlink => "symlink".into(),
        EntryType::Char => "character device".into(),
        EntryType::Block => "block device".into(),
        EntryType::Directory => "directory".into(),
        EntryType::Fifo => "fifo".into(),
        other => format!("{:?}", char::from(other.as_byte())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn components(raw: &str) -> Vec<String> {
        normalize_path(raw.as_bytes())
            .unwrap()
            .into_iter()
            .map(|c| String::from_utf8(c).unwrap())
            .collect()
    }

    #[test]
    fn normalize_path_stays_below_root() {
        assert_eq!(components("a/b/c"), ["a", "b", "c"]);
        assert_eq!(components("./a//b/"), ["a", "b"]);
        assert_eq!(components("/etc/passwd"), ["etc", "passwd"]);
        assert_eq!(components("../x"), ["x"]);
        assert_eq!(components("../../etc/passwd"), ["etc", "passwd"]);
        assert_eq!(components("a/../../b"), ["b"]);
        assert!(components("").is_empty());
        assert!(components(".").is_empty());
        assert!(components("..").is_empty());
        assert!(components("/").is_empty());
        assert!(normalize_path(b"a\0b").is_err());
    }

    #[test]
    fn classify_name_detects_whiteouts() {
        assert!(matches!(classify_name(b".wh..wh..opq"), EntryName::Opaque));
        assert!(matches!(
            classify_name(b".wh..wh.plnk"),
            EntryName::AufsMetadata
        ));
        assert!(matches!(
            classify_name(b".wh.foo"),
            EntryName::Whiteout(b"foo")
        ));
        assert!(matches!(classify_name(b"foo.wh."), EntryName::Plain));
    }

    #[test]
    fn pax_time_parses_fractions() {
        let parse = |text: &str| {
            let time = parse_pax_time(text.as_bytes()).unwrap();
            (time.tv_sec, time.tv_nsec)
        };
        assert_eq!(parse("1700000000"), (1_700_000_000, 0));
        assert_eq!(parse("1700000000.5"), (1_700_000_000, 500_000_000));
        assert_eq!(parse("1.1234567899"), (1, 123_456_789));
        assert_eq!(parse("-1.25"), (-2, 750_000_000));
        assert_eq!(parse("-3"), (-3, 0));
        assert!(parse_pax_time(b"").is_err());
        assert!(parse_pax_time(b"1e9").is_err());
        assert!(parse_pax_time(b".5").is_err());
    }
}
