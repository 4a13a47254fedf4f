//! Sparse files in GNU tar's PAX formats (0.0, 0.1 and 1.0).
//!
//! GNU tar writes these whenever it uses PAX headers, for example with `--xattrs`, and
//! bsdtar writes version 1.0. The tar crate reads only the old GNU sparse format (type
//! `S`), so an entry in a PAX format reaches this module as a regular file. Its data is
//! the file's non-hole segments, concatenated.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

use super::UnpackError;

/// Maximum size of a version 1.0 sparse map, which precedes the data in the entry. Go's
/// archive/tar applies the same 1 MiB limit.
const MAX_MAP_BYTES: usize = 1 << 20;

/// Layout of a sparse file described by `GNU.sparse.*` PAX records.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct PaxSparse {
    /// The file's real path, which replaces the `GNUSparseFile.<pid>/` name in the header.
    pub name: Option<Vec<u8>>,
    /// The size of the expanded file.
    pub real_size: u64,
    /// The data segments as (offset, length), or `None` when the map precedes the data
    /// (version 1.0).
    segments: Option<Vec<(u64, u64)>>,
}

fn record<'a>(pax: &'a [(Vec<u8>, Vec<u8>)], key: &[u8]) -> Option<&'a [u8]> {
    // The last record of a key wins, as POSIX specifies.
    pax.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, value)| value.as_slice())
}

fn parse_number(value: &[u8], what: &str) -> Result<u64, String> {
    std::str::from_utf8(value)
        .ok()
        .filter(|text| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| {
            format!(
                "invalid {what} {:?} in sparse file records",
                String::from_utf8_lossy(value)
            )
        })
}

fn pairs(numbers: Vec<u64>) -> Result<Vec<(u64, u64)>, String> {
    if numbers.len() % 2 == 1 {
        return Err("sparse map has an odd number of values".to_owned());
    }
    Ok(numbers.chunks(2).map(|pair| (pair[0], pair[1])).collect())
}

impl PaxSparse {
    /// Reads the sparse layout from an entry's PAX records, or returns `None` if the
    /// entry is not a PAX sparse file.
    pub fn from_records(pax: &[(Vec<u8>, Vec<u8>)]) -> Result<Option<PaxSparse>, String> {
        let major = record(pax, b"GNU.sparse.major");
        let minor = record(pax, b"GNU.sparse.minor");
        let version_1 = match (major, minor) {
            (Some(b"1"), Some(b"0")) => true,
            (Some(b"0"), Some(b"0" | b"1")) => false,
            (Some(_), _) | (_, Some(_)) => {
                return Err("unsupported GNU sparse format version".to_owned());
            }
            // Versions 0.0 and 0.1 have no version records.
            (None, None) => {
                let has_map = pax
                    .iter()
                    .any(|(key, _)| key == b"GNU.sparse.map" || key == b"GNU.sparse.offset");
                if !has_map {
                    return Ok(None);
                }
                false
            }
        };

        let size = record(pax, b"GNU.sparse.realsize")
            .or_else(|| record(pax, b"GNU.sparse.size"))
            .ok_or("sparse file records have no real size")?;
        let real_size = parse_number(size, "real size")?;
        let name = record(pax, b"GNU.sparse.name").map(<[u8]>::to_vec);

        let segments = if version_1 {
            None
        } else if let Some(map) = record(pax, b"GNU.sparse.map") {
            // Version 0.1: "offset,length,offset,length,...", empty without segments.
            let mut numbers = Vec::new();
            if !map.is_empty() {
                for part in map.split(|byte| *byte == b',') {
                    numbers.push(parse_number(part, "map value")?);
                }
            }
            Some(pairs(numbers)?)
        } else {
            // Version 0.0: repeated offset and numbytes records, in order.
            let numbers = pax
                .iter()
                .filter(|(key, _)| key == b"GNU.sparse.offset" || key == b"GNU.sparse.numbytes")
                .map(|(_, value)| parse_number(value, "map value"))
                .collect::<Result<Vec<_>, _>>()?;
            Some(pairs(numbers)?)
        };

        Ok(Some(PaxSparse {
            name,
            real_size,
            segments,
        }))
    }

    /// Writes the expanded file from an entry's data. Holes are left unwritten, so they
    /// stay holes on filesystems that support them.
    pub fn write(
        &self,
        data: &mut impl Read,
        mut file: &File,
        path: &str,
    ) -> Result<(), UnpackError> {
        let read_error = |source| UnpackError::Read {
            entry: Some(path.to_owned()),
            source,
        };
        let invalid = |reason: String| UnpackError::InvalidEntry {
            path: path.to_owned(),
            reason,
        };
        let write_error = |action: &'static str| {
            move |source| UnpackError::Io {
                path: path.to_owned(),
                action,
                source,
            }
        };

        let segments = match &self.segments {
            Some(segments) => segments.clone(),
            None => read_map(data).map_err(|error| match error {
                MapError::Read(source) => read_error(source),
                MapError::Invalid(reason) => invalid(reason),
            })?,
        };
        let mut end = 0u64;
        for (offset, length) in &segments {
            let segment_end = offset
                .checked_add(*length)
                .filter(|segment_end| *offset >= end && *segment_end <= self.real_size)
                .ok_or_else(|| {
                    invalid(format!(
                        "sparse segment at offset {offset} with length {length} overlaps another \
                         or ends past the real size {}",
                        self.real_size
                    ))
                })?;
            end = segment_end;
        }

        let mut buffer = vec![0u8; 64 * 1024];
        for (offset, length) in segments {
            file.seek(SeekFrom::Start(offset))
                .map_err(write_error("seek in file"))?;
            let mut remaining = length;
            while remaining > 0 {
                let want = buffer
                    .len()
                    .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                let n = match data.read(&mut buffer[..want]) {
                    Ok(0) => {
                        return Err(invalid(format!(
                            "sparse segment at offset {offset} needs {length} bytes but the \
                             entry ends {remaining} bytes early"
                        )));
                    }
                    Ok(n) => n,
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                    Err(error) => return Err(read_error(error)),
                };
                file.write_all(&buffer[..n])
                    .map_err(write_error("write file"))?;
                remaining -= n as u64;
            }
        }
        file.set_len(self.real_size)
            .map_err(write_error("set file length"))?;

        let mut extra = [0u8; 1];
        if data.read(&mut extra).map_err(read_error)? != 0 {
            return Err(invalid(
                "sparse file entry has data that its map does not refer to".to_owned(),
            ));
        }
        Ok(())
    }
}

enum MapError {
    Read(io::Error),
    Invalid(String),
}

/// Reads a version 1.0 map from the start of the entry's data: the number of segments,
/// then an offset and a length for each, all decimal and newline-terminated, padded with
/// NUL bytes to a 512-byte block.
fn read_map(data: &mut impl Read) -> Result<Vec<(u64, u64)>, MapError> {
    let mut map = Vec::new();
    let mut numbers: Vec<u64> = Vec::new();
    let mut line_start = 0;
    loop {
        if map.len() >= MAX_MAP_BYTES {
            return Err(MapError::Invalid(format!(
                "sparse map is longer than {MAX_MAP_BYTES} bytes"
            )));
        }
        let scanned = map.len();
        let mut block = [0u8; 512];
        data.read_exact(&mut block).map_err(MapError::Read)?;
        map.extend_from_slice(&block);

        for position in scanned..map.len() {
            if map[position] != b'\n' {
                continue;
            }
            let number =
                parse_number(&map[line_start..position], "map value").map_err(MapError::Invalid)?;
            numbers.push(number);
            line_start = position + 1;

            // The first number is the segment count, and each segment has two numbers.
            let needed = numbers[0]
                .checked_mul(2)
                .and_then(|values| values.checked_add(1))
                .ok_or_else(|| MapError::Invalid("sparse map is too long".to_owned()))?;
            if numbers.len() as u64 == needed {
                // The rest of this block is padding, and the data starts at the next one.
                return pairs(numbers.split_off(1)).map_err(MapError::Invalid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(pairs: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        pairs
            .iter()
            .map(|(key, value)| (key.as_bytes().to_vec(), value.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn records_without_sparse_keys_are_plain() {
        let pax = records(&[("path", "a"), ("mtime", "1")]);
        assert_eq!(PaxSparse::from_records(&pax), Ok(None));
    }

    #[test]
    fn version_0_1_map_parses() {
        let pax = records(&[
            ("GNU.sparse.size", "100"),
            ("GNU.sparse.numblocks", "2"),
            ("GNU.sparse.name", "dir/file"),
            ("GNU.sparse.map", "0,10,50,5"),
        ]);
        let sparse = PaxSparse::from_records(&pax).unwrap().unwrap();
        assert_eq!(sparse.real_size, 100);
        assert_eq!(sparse.name.as_deref(), Some(&b"dir/file"[..]));
        assert_eq!(sparse.segments, Some(vec![(0, 10), (50, 5)]));
    }

    #[test]
    fn version_0_0_records_parse_in_order() {
        let pax = records(&[
            ("GNU.sparse.size", "100"),
            ("GNU.sparse.numblocks", "2"),
            ("GNU.sparse.offset", "4"),
            ("GNU.sparse.numbytes", "1"),
            ("GNU.sparse.offset", "90"),
            ("GNU.sparse.numbytes", "10"),
        ]);
        let sparse = PaxSparse::from_records(&pax).unwrap().unwrap();
        assert_eq!(sparse.segments, Some(vec![(4, 1), (90, 10)]));
    }

    #[test]
    fn unknown_version_is_rejected() {
        let pax = records(&[("GNU.sparse.major", "2"), ("GNU.sparse.minor", "0")]);
        assert!(PaxSparse::from_records(&pax).is_err());
    }

    #[test]
    fn version_1_map_reads_from_data() {
        let mut data = b"2\n0\n3\n10\n2\n".to_vec();
        data.resize(512, 0);
        data.extend_from_slice(b"abcde");
        let mut reader = data.as_slice();
        let segments = match read_map(&mut reader) {
            Ok(segments) => segments,
            Err(_) => panic!("map did not parse"),
        };
        assert_eq!(segments, vec![(0, 3), (10, 2)]);
        assert_eq!(reader, b"abcde");
    }
}
