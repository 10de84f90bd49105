//! Attachments: the true type of a part from its bytes (never its name or declared type),
//! and archives walked inside one budget.
//!
//! The budget is passed down the recursion and checked while decompressing, never after:
//! archive layers, files per archive (counted from the archive's directory before any
//! member is read), decompressed bytes per member and in all, a compression-ratio guard,
//! and a deadline. Every member is read through a counter that stops at the limit plus
//! one byte, whatever size the archive declares. Exceeding a limit ends the walk with
//! that [`Violation`]; what was found until then is kept.

use std::io::{Cursor, Read};
use std::time::Instant;

/// What a part really is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrueType {
    /// Windows executable (`MZ`).
    Pe,
    Elf,
    MachO,
    /// A script with a `#!` line.
    Script,
    /// An OLE compound document (legacy Office) with a VBA project.
    OleMacro,
    Ole,
    /// An OOXML document (zip) with `vbaProject.bin`.
    OoxmlMacro,
    Ooxml,
    /// A PDF with JavaScript.
    PdfJavaScript,
    Pdf,
    Html,
    Zip,
    Gzip,
    Tar,
    Bzip2,
    Xz,
    SevenZip,
    /// Reported as unscannable (no open-source reader).
    Rar,
    Image,
    Other,
}

impl TrueType {
    pub fn label(self) -> &'static str {
        match self {
            TrueType::Pe => "pe",
            TrueType::Elf => "elf",
            TrueType::MachO => "macho",
            TrueType::Script => "script",
            TrueType::OleMacro => "ole_macro",
            TrueType::Ole => "ole",
            TrueType::OoxmlMacro => "ooxml_macro",
            TrueType::Ooxml => "ooxml",
            TrueType::PdfJavaScript => "pdf_javascript",
            TrueType::Pdf => "pdf",
            TrueType::Html => "html",
            TrueType::Zip => "zip",
            TrueType::Gzip => "gzip",
            TrueType::Tar => "tar",
            TrueType::Bzip2 => "bzip2",
            TrueType::Xz => "xz",
            TrueType::SevenZip => "7z",
            TrueType::Rar => "rar",
            TrueType::Image => "image",
            TrueType::Other => "other",
        }
    }

    /// Executable code of some kind (programs, scripts, macros, PDF JavaScript).
    pub fn is_executable(self) -> bool {
        matches!(
            self,
            TrueType::Pe
                | TrueType::Elf
                | TrueType::MachO
                | TrueType::Script
                | TrueType::OleMacro
                | TrueType::OoxmlMacro
                | TrueType::PdfJavaScript
        )
    }

    /// Its label and the groups it belongs to (`executable`, `macro`, `archive`,
    /// `document`): the names policy rules use.
    pub fn kinds(self) -> &'static [&'static str] {
        match self {
            TrueType::Pe => &["pe", "executable"],
            TrueType::Elf => &["elf", "executable"],
            TrueType::MachO => &["macho", "executable"],
            TrueType::Script => &["script", "executable"],
            TrueType::OleMacro => &["ole_macro", "executable", "macro", "document"],
            TrueType::Ole => &["ole", "document"],
            TrueType::OoxmlMacro => &["ooxml_macro", "executable", "macro", "document"],
            TrueType::Ooxml => &["ooxml", "document"],
            TrueType::PdfJavaScript => &["pdf_javascript", "executable", "document"],
            TrueType::Pdf => &["pdf", "document"],
            TrueType::Html => &["html"],
            TrueType::Zip => &["zip", "archive"],
            TrueType::Gzip => &["gzip", "archive"],
            TrueType::Tar => &["tar", "archive"],
            TrueType::Bzip2 => &["bzip2", "archive"],
            TrueType::Xz => &["xz", "archive"],
            TrueType::SevenZip => &["7z", "archive"],
            TrueType::Rar => &["rar", "archive"],
            TrueType::Image => &["image"],
            TrueType::Other => &["other"],
        }
    }

    /// Every type, for tests and documentation.
    pub const ALL: [TrueType; 20] = [
        TrueType::Pe,
        TrueType::Elf,
        TrueType::MachO,
        TrueType::Script,
        TrueType::OleMacro,
        TrueType::Ole,
        TrueType::OoxmlMacro,
        TrueType::Ooxml,
        TrueType::PdfJavaScript,
        TrueType::Pdf,
        TrueType::Html,
        TrueType::Zip,
        TrueType::Gzip,
        TrueType::Tar,
        TrueType::Bzip2,
        TrueType::Xz,
        TrueType::SevenZip,
        TrueType::Rar,
        TrueType::Image,
        TrueType::Other,
    ];
}

/// How far into a part the sniffer looks for markers (PDF JavaScript, VBA storage).
const SNIFF_WINDOW: usize = 4 << 20;

fn find(hay: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(&hay[..hay.len().min(SNIFF_WINDOW)], needle).is_some()
}

/// The true type of `b`, from magic numbers and, for documents, the markers of active
/// content.
pub fn sniff(b: &[u8]) -> TrueType {
    let starts = |m: &[u8]| b.starts_with(m);
    if starts(b"MZ") {
        return TrueType::Pe;
    }
    if starts(b"\x7fELF") {
        return TrueType::Elf;
    }
    if starts(&[0xfe, 0xed, 0xfa, 0xce])
        || starts(&[0xfe, 0xed, 0xfa, 0xcf])
        || starts(&[0xce, 0xfa, 0xed, 0xfe])
        || starts(&[0xcf, 0xfa, 0xed, 0xfe])
        || starts(&[0xca, 0xfe, 0xba, 0xbe])
    {
        return TrueType::MachO;
    }
    if starts(b"#!") {
        return TrueType::Script;
    }
    if starts(&[0xd0, 0xcf, 0x11, 0xe0, 0xa1, 0xb1, 0x1a, 0xe1]) {
        // The VBA project's storage names, as the directory holds them (UTF-16LE).
        let vba: Vec<u8> = "_VBA_PROJECT"
            .encode_utf16()
            .flat_map(|u| u.to_le_bytes())
            .collect();
        return if find(b, &vba) {
            TrueType::OleMacro
        } else {
            TrueType::Ole
        };
    }
    if starts(b"PK\x03\x04") || starts(b"PK\x05\x06") {
        // Names in the central directory, without extracting anything.
        if let Ok(z) = zip::ZipArchive::new(Cursor::new(b)) {
            let names: Vec<String> = z
                .file_names()
                .filter_map(Result::ok)
                .map(|n| n.to_ascii_lowercase())
                .collect();
            if names.iter().any(|n| n.ends_with("vbaproject.bin")) {
                return TrueType::OoxmlMacro;
            }
            if names.iter().any(|n| n == "[content_types].xml") {
                return TrueType::Ooxml;
            }
        }
        return TrueType::Zip;
    }
    if starts(b"%PDF-") {
        return if find(b, b"/JavaScript") || find(b, b"/JS") {
            TrueType::PdfJavaScript
        } else {
            TrueType::Pdf
        };
    }
    if starts(&[0x1f, 0x8b]) {
        return TrueType::Gzip;
    }
    if starts(b"BZh") {
        return TrueType::Bzip2;
    }
    if starts(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        return TrueType::Xz;
    }
    if starts(&[b'7', b'z', 0xbc, 0xaf, 0x27, 0x1c]) {
        return TrueType::SevenZip;
    }
    if starts(b"Rar!\x1a\x07") {
        return TrueType::Rar;
    }
    if starts(b"\x89PNG\r\n\x1a\n")
        || starts(&[0xff, 0xd8, 0xff])
        || starts(b"GIF87a")
        || starts(b"GIF89a")
        || (starts(b"RIFF") && b.get(8..12) == Some(b"WEBP"))
    {
        return TrueType::Image;
    }
    if b.len() >= 262 && &b[257..262] == b"ustar" {
        return TrueType::Tar;
    }
    let head = &b[..b.len().min(1024)];
    let lower: Vec<u8> = head
        .iter()
        .skip_while(|c| c.is_ascii_whitespace())
        .take(64)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if lower.starts_with(b"<!doctype html") || lower.starts_with(b"<html") {
        return TrueType::Html;
    }
    TrueType::Other
}

/// The walk's budget: the product's limits by default.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Archive layers opened along one path (the 21st is refused).
    pub max_layers: u32,
    /// Members of one archive, counted from its directory before any is read.
    pub max_files: u32,
    /// Decompressed bytes of one member.
    pub max_member_bytes: u64,
    /// Decompressed bytes of the whole walk.
    pub max_total_bytes: u64,
    /// Decompressed / compressed size of a member, past its first MiB.
    pub max_ratio: u64,
    /// Memory a decoder may ask for (an LZMA dictionary, a 7z header): more is refused
    /// before it is allocated.
    pub max_decoder_memory: u64,
    pub deadline: Option<Instant>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_layers: 20,
            max_files: 353,
            max_member_bytes: 60_000_000,
            max_total_bytes: 200_000_000,
            max_ratio: 1000,
            max_decoder_memory: 64 << 20,
            deadline: None,
        }
    }
}

/// A limit the walk exceeded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("more than {limit} archive layers at {path}")]
    Layers { path: String, limit: u32 },
    #[error("{count} files in {path}, more than {limit}")]
    Files {
        path: String,
        count: u64,
        limit: u32,
    },
    #[error("{path} decompresses to more than {limit} bytes")]
    MemberBytes { path: String, limit: u64 },
    #[error("the archives decompress to more than {limit} bytes in all")]
    TotalBytes { limit: u64 },
    #[error("{path} decompresses more than {limit} times its size")]
    Ratio { path: String, limit: u64 },
    #[error("{path} needs more than {limit} bytes of decoder memory")]
    DecoderMemory { path: String, limit: u64 },
    #[error("the archives took longer than their deadline")]
    Deadline,
}

impl Violation {
    /// A short name of the limit (metrics, the verdict).
    pub fn label(&self) -> &'static str {
        match self {
            Violation::Layers { .. } => "archive_layers",
            Violation::Files { .. } => "archive_files",
            Violation::MemberBytes { .. } => "file_size",
            Violation::TotalBytes { .. } => "total_size",
            Violation::Ratio { .. } => "compression_ratio",
            Violation::DecoderMemory { .. } => "decoder_memory",
            Violation::Deadline => "scan_time",
        }
    }

    /// The limit in words, without the attacker's file names (for replies and headers).
    pub fn summary(&self) -> String {
        match self {
            Violation::Layers { limit, .. } => format!("more than {limit} archive layers"),
            Violation::Files { count, limit, .. } => {
                format!("{count} files in an archive, more than {limit}")
            }
            Violation::MemberBytes { limit, .. } => {
                format!("a file decompresses to more than {limit} bytes")
            }
            Violation::TotalBytes { limit } => {
                format!("the archives decompress to more than {limit} bytes in all")
            }
            Violation::Ratio { limit, .. } => {
                format!("a file decompresses more than {limit} times its size")
            }
            Violation::DecoderMemory { limit, .. } => {
                format!("an archive needs more than {limit} bytes of decoder memory")
            }
            Violation::Deadline => "the archives took longer than the scan deadline".into(),
        }
    }
}

/// One object found: the part itself or an archive member, at any depth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// `part/inner.zip/evil.exe`.
    pub path: String,
    /// Archive layers above it.
    pub layer: u32,
    pub true_type: TrueType,
    pub size: u64,
    /// Encrypted (password-protected): not read.
    pub encrypted: bool,
}

/// What a walk found.
#[derive(Debug, Default)]
pub struct Walk {
    pub found: Vec<Found>,
    pub violation: Option<Violation>,
    /// Archives (or members) that could not be read (corrupt, RAR, a size that lies), and why.
    pub unscannable: Vec<(String, String)>,
    /// Decompressed bytes read.
    pub bytes: u64,
}

impl Walk {
    pub fn has_encrypted(&self) -> bool {
        self.found.iter().any(|f| f.encrypted)
    }
}

struct Budget<'a> {
    limits: &'a Limits,
    total: u64,
}

/// Reads `r` to its end, at most `cap` bytes: `Ok(None)` when there is more.
fn read_capped(r: impl Read, cap: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    r.take(cap.saturating_add(1)).read_to_end(&mut out)?;
    Ok((out.len() as u64 <= cap).then_some(out))
}

/// Walks the part `name` (its decoded bytes): its true type, and every archive member
/// inside it, each handed to `scan` with its path. Stops at the first limit exceeded.
pub fn walk(
    name: &str,
    bytes: &[u8],
    limits: &Limits,
    scan: &mut dyn FnMut(&str, &[u8], TrueType),
) -> Walk {
    walk_as(name, bytes, None, limits, scan)
}

/// The same, reading the part as `as_type` whatever its bytes say (the fuzz targets
/// drive each archive reader this way); members are sniffed as usual.
pub fn walk_as(
    name: &str,
    bytes: &[u8],
    as_type: Option<TrueType>,
    limits: &Limits,
    scan: &mut dyn FnMut(&str, &[u8], TrueType),
) -> Walk {
    let mut out = Walk::default();
    walk_into(&mut out, name, bytes, as_type, limits, scan);
    out
}

/// Walks one more part into `out`, within what is left of the budget `out` has spent
/// (one budget for all the parts of a message). Nothing is walked once `out` has a
/// violation.
pub fn walk_into(
    out: &mut Walk,
    name: &str,
    bytes: &[u8],
    as_type: Option<TrueType>,
    limits: &Limits,
    scan: &mut dyn FnMut(&str, &[u8], TrueType),
) {
    if out.violation.is_some() {
        return;
    }
    let mut budget = Budget {
        limits,
        total: out.bytes,
    };
    if let Err(v) = visit_as(name, bytes, as_type, 0, &mut budget, out, scan) {
        out.violation = Some(v);
    }
    out.bytes = budget.total;
}

fn visit(
    path: &str,
    bytes: &[u8],
    layer: u32,
    budget: &mut Budget<'_>,
    out: &mut Walk,
    scan: &mut dyn FnMut(&str, &[u8], TrueType),
) -> Result<(), Violation> {
    visit_as(path, bytes, None, layer, budget, out, scan)
}

fn visit_as(
    path: &str,
    bytes: &[u8],
    as_type: Option<TrueType>,
    layer: u32,
    budget: &mut Budget<'_>,
    out: &mut Walk,
    scan: &mut dyn FnMut(&str, &[u8], TrueType),
) -> Result<(), Violation> {
    if budget.limits.deadline.is_some_and(|d| Instant::now() > d) {
        return Err(Violation::Deadline);
    }
    let t = as_type.unwrap_or_else(|| sniff(bytes));
    out.found.push(Found {
        path: path.to_string(),
        layer,
        true_type: t,
        size: bytes.len() as u64,
        encrypted: false,
    });
    scan(path, bytes, t);
    let opens = matches!(
        t,
        TrueType::Zip
            | TrueType::Gzip
            | TrueType::Tar
            | TrueType::Bzip2
            | TrueType::Xz
            | TrueType::SevenZip
    );
    if opens && layer >= budget.limits.max_layers {
        return Err(Violation::Layers {
            path: path.to_string(),
            limit: budget.limits.max_layers,
        });
    }
    match t {
        TrueType::Zip => zip_members(path, bytes, layer, budget, out, scan),
        TrueType::Gzip => {
            let inner = format!("{}/{}", path, gz_name(path));
            let member = read_member(
                &inner,
                flate2::read::GzDecoder::new(bytes),
                Some(bytes.len() as u64),
                budget,
            );
            match take(&inner, member, out)? {
                Some(data) => visit(&inner, &data, layer + 1, budget, out, scan),
                None => Ok(()),
            }
        }
        TrueType::Tar => tar_members(path, bytes, layer, budget, out, scan),
        TrueType::Bzip2 | TrueType::Xz => {
            let inner = format!("{}/{}", path, stream_name(path, t));
            let compressed = Some(bytes.len() as u64);
            let member = if t == TrueType::Bzip2 {
                read_member(
                    &inner,
                    bzip2::read::MultiBzDecoder::new(bytes),
                    compressed,
                    budget,
                )
            } else {
                let kb = budget.limits.max_decoder_memory / 1024;
                read_member(
                    &inner,
                    lzma_rust2::XzReader::new_mem_limit(
                        bytes,
                        true,
                        kb.min(u32::MAX as u64) as u32,
                    ),
                    compressed,
                    budget,
                )
            };
            match take(&inner, member, out)? {
                Some(data) => visit(&inner, &data, layer + 1, budget, out, scan),
                None => Ok(()),
            }
        }
        TrueType::SevenZip => seven_zip_members(path, bytes, layer, budget, out, scan),
        TrueType::Rar => {
            out.unscannable
                .push((path.to_string(), "rar is not opened".to_string()));
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The name of what a single-stream compressor holds: `a.tar.bz2` → `a.tar`.
fn stream_name(path: &str, t: TrueType) -> String {
    let last = path.rsplit('/').next().unwrap_or(path);
    let suffixes: &[&str] = if t == TrueType::Bzip2 {
        &[".bz2", ".bz", ".tbz2", ".tbz"]
    } else {
        &[".xz", ".txz"]
    };
    for s in suffixes {
        if let Some(stem) = last.strip_suffix(s) {
            return if s.starts_with(".t") {
                format!("{stem}.tar")
            } else {
                stem.to_string()
            };
        }
    }
    "data".to_string()
}

fn gz_name(path: &str) -> String {
    let last = path.rsplit('/').next().unwrap_or(path);
    last.strip_suffix(".gz")
        .or_else(|| last.strip_suffix(".tgz").map(|_| "tar"))
        .unwrap_or("data")
        .to_string()
}

/// Why a member was not read whole.
enum Unread {
    Limit(Violation),
    Broken(String),
}

/// Reads one member through the counter, within the member, ratio (when `compressed`
/// is known) and total limits, whatever size the archive declares.
fn read_member(
    path: &str,
    r: impl Read,
    compressed: Option<u64>,
    budget: &mut Budget<'_>,
) -> Result<Vec<u8>, Unread> {
    let l = budget.limits;
    let by_ratio = compressed.map_or(u64::MAX, |c| c.saturating_mul(l.max_ratio).max(1 << 20));
    let left = l.max_total_bytes.saturating_sub(budget.total);
    let cap = l.max_member_bytes.min(by_ratio).min(left);
    match read_capped(r, cap) {
        Ok(Some(data)) => {
            budget.total += data.len() as u64;
            Ok(data)
        }
        Ok(None) => Err(Unread::Limit(
            if cap == left && left < l.max_member_bytes.min(by_ratio) {
                Violation::TotalBytes {
                    limit: l.max_total_bytes,
                }
            } else if by_ratio < l.max_member_bytes {
                Violation::Ratio {
                    path: path.to_string(),
                    limit: l.max_ratio,
                }
            } else {
                Violation::MemberBytes {
                    path: path.to_string(),
                    limit: l.max_member_bytes,
                }
            },
        )),
        Err(e) if e.kind() == std::io::ErrorKind::OutOfMemory => {
            Err(Unread::Limit(Violation::DecoderMemory {
                path: path.to_string(),
                limit: l.max_decoder_memory,
            }))
        }
        Err(e) => Err(Unread::Broken(e.to_string())),
    }
}

/// A member read, or the limit it broke, or an archive that could not be read.
fn take(
    path: &str,
    member: Result<Vec<u8>, Unread>,
    out: &mut Walk,
) -> Result<Option<Vec<u8>>, Violation> {
    match member {
        Ok(data) => Ok(Some(data)),
        Err(Unread::Limit(v)) => Err(v),
        Err(Unread::Broken(e)) => {
            out.unscannable.push((path.to_string(), e));
            Ok(None)
        }
    }
}

fn zip_members(
    path: &str,
    bytes: &[u8],
    layer: u32,
    budget: &mut Budget<'_>,
    out: &mut Walk,
    scan: &mut dyn FnMut(&str, &[u8], TrueType),
) -> Result<(), Violation> {
    let mut z = match zip::ZipArchive::new(Cursor::new(bytes)) {
        Ok(z) => z,
        Err(e) => {
            out.unscannable.push((path.to_string(), e.to_string()));
            return Ok(());
        }
    };
    let count = z.len() as u64;
    if count > budget.limits.max_files as u64 {
        return Err(Violation::Files {
            path: path.to_string(),
            count,
            limit: budget.limits.max_files,
        });
    }
    for i in 0..z.len() {
        if budget.limits.deadline.is_some_and(|d| Instant::now() > d) {
            return Err(Violation::Deadline);
        }
        let (name, encrypted, is_dir, compressed) = match z.by_index_raw(i) {
            Ok(f) => (
                f.name()
                    .map(|n| n.to_string())
                    .unwrap_or_else(|_| format!("#{i}")),
                f.encrypted(),
                f.is_dir(),
                f.compressed_size(),
            ),
            Err(e) => {
                out.unscannable
                    .push((format!("{path}/#{i}"), e.to_string()));
                continue;
            }
        };
        if is_dir {
            continue;
        }
        let inner = format!("{path}/{}", name.trim_start_matches('/'));
        if encrypted {
            out.found.push(Found {
                path: inner,
                layer: layer + 1,
                true_type: TrueType::Other,
                size: 0,
                encrypted: true,
            });
            continue;
        }
        // The raw stream, decoded here through the counter: the archive's declared size
        // neither caps nor hides what the stream really holds.
        let member = match z.by_index_raw(i) {
            Ok(f) => {
                let declared = f.size();
                let read = match f.compression() {
                    zip::CompressionMethod::Stored => read_member(&inner, f, None, budget),
                    zip::CompressionMethod::Deflated => read_member(
                        &inner,
                        flate2::read::DeflateDecoder::new(f),
                        Some(compressed),
                        budget,
                    ),
                    m => Err(Unread::Broken(format!(
                        "compression method {m:?} is not read"
                    ))),
                };
                if let Ok(data) = &read
                    && data.len() as u64 != declared
                {
                    out.unscannable.push((
                        inner.clone(),
                        format!("declares {declared} bytes and holds {}", data.len()),
                    ));
                }
                read
            }
            Err(e) => Err(Unread::Broken(e.to_string())),
        };
        if let Some(data) = take(&inner, member, out)? {
            visit(&inner, &data, layer + 1, budget, out, scan)?;
        }
    }
    Ok(())
}

/// The AES coder of 7z (`06 F1 07 01`): its members are password-protected.
const SEVEN_ZIP_AES: &[u8] = &[0x06, 0xf1, 0x07, 0x01];

fn seven_zip_members(
    path: &str,
    bytes: &[u8],
    layer: u32,
    budget: &mut Budget<'_>,
    out: &mut Walk,
    scan: &mut dyn FnMut(&str, &[u8], TrueType),
) -> Result<(), Violation> {
    use sevenz_rust2::{ArchiveReader, EntryDecision, Error, Password};
    let kb = (budget.limits.max_decoder_memory / 1024) as usize;
    let too_big = |e: &Error| matches!(e, Error::MaxMemLimited { .. });
    let mut reader =
        match ArchiveReader::new_with_memory_limit(Cursor::new(bytes), Password::empty(), kb) {
            Ok(r) => r,
            Err(e) if too_big(&e) => {
                return Err(Violation::DecoderMemory {
                    path: path.to_string(),
                    limit: budget.limits.max_decoder_memory,
                });
            }
            Err(Error::PasswordRequired) => {
                // The header itself is encrypted: not even the names can be read.
                out.found.push(Found {
                    path: format!("{path}/*"),
                    layer: layer + 1,
                    true_type: TrueType::Other,
                    size: 0,
                    encrypted: true,
                });
                return Ok(());
            }
            Err(e) => {
                out.unscannable.push((path.to_string(), e.to_string()));
                return Ok(());
            }
        };
    reader.set_thread_count(1);
    let archive = reader.archive();
    let count = archive.files.iter().filter(|f| !f.is_directory).count() as u64;
    if count > budget.limits.max_files as u64 {
        return Err(Violation::Files {
            path: path.to_string(),
            count,
            limit: budget.limits.max_files,
        });
    }
    let encrypted = archive.blocks.iter().any(|b| {
        b.coders
            .iter()
            .any(|c| c.encoder_method_id() == SEVEN_ZIP_AES)
    });
    if encrypted {
        for f in archive.files.iter().filter(|f| f.has_stream) {
            out.found.push(Found {
                path: format!("{path}/{}", f.name.trim_start_matches('/')),
                layer: layer + 1,
                true_type: TrueType::Other,
                size: 0,
                encrypted: true,
            });
        }
        return Ok(());
    }
    // A solid block has no per-member compressed size: the archive's own size bounds
    // the ratio.
    let compressed = Some(bytes.len() as u64);
    let mut stop: Option<Violation> = None;
    let result = reader.for_each_entries_with_decision_allowing_surplus(|entry, r| {
        if entry.is_directory || !entry.has_stream {
            return Ok(EntryDecision::Continue);
        }
        if budget.limits.deadline.is_some_and(|d| Instant::now() > d) {
            stop = Some(Violation::Deadline);
            return Ok(EntryDecision::Stop);
        }
        let inner = format!("{path}/{}", entry.name.trim_start_matches('/'));
        let member = read_member(&inner, r, compressed, budget);
        match take(&inner, member, out) {
            Ok(Some(data)) => {
                if let Err(v) = visit(&inner, &data, layer + 1, budget, out, scan) {
                    stop = Some(v);
                    return Ok(EntryDecision::Stop);
                }
                Ok(EntryDecision::Continue)
            }
            Ok(None) => Ok(EntryDecision::SkipBlock),
            Err(v) => {
                stop = Some(v);
                Ok(EntryDecision::Stop)
            }
        }
    });
    if let Some(v) = stop {
        return Err(v);
    }
    match result {
        Err(e) if too_big(&e) => Err(Violation::DecoderMemory {
            path: path.to_string(),
            limit: budget.limits.max_decoder_memory,
        }),
        Err(e) => {
            out.unscannable.push((path.to_string(), e.to_string()));
            Ok(())
        }
        Ok(()) => Ok(()),
    }
}

fn tar_members(
    path: &str,
    bytes: &[u8],
    layer: u32,
    budget: &mut Budget<'_>,
    out: &mut Walk,
    scan: &mut dyn FnMut(&str, &[u8], TrueType),
) -> Result<(), Violation> {
    // Counted first: the headers only (the iterator skips the data).
    let mut count = 0u64;
    match tar::Archive::new(Cursor::new(bytes)).entries() {
        Ok(entries) => {
            for e in entries {
                if e.is_err() {
                    break;
                }
                count += 1;
                if count > budget.limits.max_files as u64 {
                    return Err(Violation::Files {
                        path: path.to_string(),
                        count,
                        limit: budget.limits.max_files,
                    });
                }
            }
        }
        Err(e) => {
            out.unscannable.push((path.to_string(), e.to_string()));
            return Ok(());
        }
    }
    let mut archive = tar::Archive::new(Cursor::new(bytes));
    let entries = match archive.entries() {
        Ok(e) => e,
        Err(e) => {
            out.unscannable.push((path.to_string(), e.to_string()));
            return Ok(());
        }
    };
    for entry in entries {
        let mut entry = match entry {
            Ok(e) => e,
            Err(e) => {
                out.unscannable.push((path.to_string(), e.to_string()));
                break;
            }
        };
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "?".into());
        let inner = format!("{path}/{}", name.trim_start_matches('/'));
        // A tar member is stored, not compressed: no ratio to guard.
        let member = read_member(&inner, &mut entry, None, budget);
        if let Some(data) = take(&inner, member, out)? {
            visit(&inner, &data, layer + 1, budget, out, scan)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const EICAR: &[u8] = br"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

    fn zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, data) in files {
            w.start_file(*name, opts).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    fn gzip_of(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn paths(w: &Walk) -> Vec<&str> {
        w.found.iter().map(|f| f.path.as_str()).collect()
    }

    #[test]
    fn true_types_come_from_the_bytes() {
        assert_eq!(sniff(b"MZ\x90\x00rest"), TrueType::Pe);
        assert_eq!(sniff(b"\x7fELF\x02\x01"), TrueType::Elf);
        assert_eq!(sniff(&[0xcf, 0xfa, 0xed, 0xfe, 7, 0]), TrueType::MachO);
        assert_eq!(sniff(b"#!/bin/sh\nrm -rf /\n"), TrueType::Script);
        assert_eq!(
            sniff(b"%PDF-1.7\n1 0 obj << /S /JavaScript /JS (app.alert(1)) >>"),
            TrueType::PdfJavaScript
        );
        assert_eq!(sniff(b"%PDF-1.7\n1 0 obj << /Type /Page >>"), TrueType::Pdf);
        assert_eq!(sniff(b"  <!DOCTYPE html><html>"), TrueType::Html);
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n...."), TrueType::Image);
        assert_eq!(sniff(b"Rar!\x1a\x07\x01\x00"), TrueType::Rar);
        assert_eq!(
            sniff(&[b'7', b'z', 0xbc, 0xaf, 0x27, 0x1c, 0, 4]),
            TrueType::SevenZip
        );
        assert_eq!(sniff(b"BZh91AY&SY"), TrueType::Bzip2);
        assert_eq!(sniff(&gzip_of(b"x")), TrueType::Gzip);
        assert_eq!(sniff(&tar_of(&[("a.txt", b"hello")])), TrueType::Tar);
        assert_eq!(sniff(&zip_of(&[("a.txt", b"hello")])), TrueType::Zip);
        assert_eq!(
            sniff(&zip_of(&[
                ("[Content_Types].xml", b"<Types/>"),
                ("word/document.xml", b"<w/>")
            ])),
            TrueType::Ooxml
        );
        assert_eq!(
            sniff(&zip_of(&[
                ("[Content_Types].xml", b"<Types/>"),
                ("word/vbaProject.bin", b"\xd0\xcf")
            ])),
            TrueType::OoxmlMacro
        );
        let mut ole = vec![0xd0, 0xcf, 0x11, 0xe0, 0xa1, 0xb1, 0x1a, 0xe1];
        ole.extend(std::iter::repeat_n(0u8, 600));
        assert_eq!(sniff(&ole), TrueType::Ole);
        ole.extend("_VBA_PROJECT".encode_utf16().flat_map(|u| u.to_le_bytes()));
        assert_eq!(sniff(&ole), TrueType::OleMacro);
        // The name says PDF, the bytes say program: the bytes win.
        assert_eq!(sniff(b"MZ invoice.pdf"), TrueType::Pe);
        assert_eq!(sniff(b"plain words"), TrueType::Other);
    }

    #[test]
    fn eicar_is_handed_to_the_scanner_at_every_depth() {
        let inner = zip_of(&[("eicar.com", EICAR)]);
        let outer = zip_of(&[("inner.zip", &inner), ("readme.txt", b"hello")]);
        let tgz = gzip_of(&tar_of(&[("docs/outer.zip", &outer)]));
        let mut seen = Vec::new();
        let w = walk("mail.tar.gz", &tgz, &Limits::default(), &mut |p, b, _| {
            if b == EICAR {
                seen.push(p.to_string());
            }
        });
        assert_eq!(w.violation, None, "{w:?}");
        assert_eq!(
            seen,
            ["mail.tar.gz/mail.tar/docs/outer.zip/inner.zip/eicar.com"]
        );
        assert!(paths(&w).contains(&"mail.tar.gz/mail.tar/docs/outer.zip/readme.txt"));
        let eicar = w
            .found
            .iter()
            .find(|f| f.path.ends_with("eicar.com"))
            .unwrap();
        assert_eq!(eicar.layer, 4);
    }

    fn nested(layers: u32) -> Vec<u8> {
        let mut data = zip_of(&[("payload.txt", b"the bottom")]);
        for i in 1..layers {
            data = zip_of(&[(&format!("layer{i}.zip"), &data)]);
        }
        data
    }

    #[test]
    fn twenty_layers_pass_and_twenty_one_are_refused() {
        let w = walk("a.zip", &nested(20), &Limits::default(), &mut |_, _, _| {});
        assert_eq!(w.violation, None);
        assert!(
            w.found
                .iter()
                .any(|f| f.path.ends_with("payload.txt") && f.layer == 20)
        );
        let w = walk("a.zip", &nested(21), &Limits::default(), &mut |_, _, _| {});
        assert!(
            matches!(w.violation, Some(Violation::Layers { limit: 20, .. })),
            "{w:?}"
        );
        assert!(!w.found.iter().any(|f| f.path.ends_with("payload.txt")));
    }

    #[test]
    fn files_are_counted_before_any_is_read() {
        let names: Vec<String> = (0..354).map(|i| format!("f{i}.txt")).collect();
        let files = |n: usize| -> Vec<(&str, &[u8])> {
            names[..n].iter().map(|s| (s.as_str(), &b"x"[..])).collect()
        };
        let ok = zip_of(&files(353));
        let w = walk("ok.zip", &ok, &Limits::default(), &mut |_, _, _| {});
        assert_eq!(w.violation, None);
        assert_eq!(w.found.len(), 354);
        let over = zip_of(&files(354));
        let mut scanned = 0;
        let w = walk("over.zip", &over, &Limits::default(), &mut |_, _, _| {
            scanned += 1
        });
        assert!(matches!(
            w.violation,
            Some(Violation::Files {
                count: 354,
                limit: 353,
                ..
            })
        ));
        assert_eq!(scanned, 1, "only the archive itself, no member");
        let w = walk(
            "over.tar",
            &tar_of(&files(354)),
            &Limits::default(),
            &mut |_, _, _| {},
        );
        assert!(matches!(
            w.violation,
            Some(Violation::Files { count: 354, .. })
        ));
    }

    #[test]
    fn a_member_at_the_limit_passes_and_one_byte_more_is_refused() {
        let limits = Limits {
            max_member_bytes: 4096,
            ..Limits::default()
        };
        let at = zip_of(&[("a.bin", &[7u8; 4096])]);
        assert_eq!(
            walk("a.zip", &at, &limits, &mut |_, _, _| {}).violation,
            None
        );
        let over = zip_of(&[("a.bin", &[7u8; 4097])]);
        let w = walk("a.zip", &over, &limits, &mut |_, _, _| {});
        assert!(
            matches!(
                w.violation,
                Some(Violation::MemberBytes { limit: 4096, .. })
            ),
            "{w:?}"
        );
        let w = walk(
            "a.tar",
            &tar_of(&[("a.bin", &[7u8; 4097])]),
            &limits,
            &mut |_, _, _| {},
        );
        assert!(
            matches!(w.violation, Some(Violation::MemberBytes { .. })),
            "{w:?}"
        );
    }

    #[test]
    fn gzip_bombs_stop_at_a_limit_without_inflating_it_all() {
        // 40 MB of zeros in about 40 KB: past a thousand to one, under 60 MB.
        let bomb = gzip_of(&vec![0u8; 40_000_000]);
        let w = walk("bomb.gz", &bomb, &Limits::default(), &mut |_, _, _| {});
        assert!(
            matches!(w.violation, Some(Violation::Ratio { limit: 1000, .. })),
            "{w:?}"
        );
        assert_eq!(w.bytes, 0, "nothing of it was kept");
        // 100 MB in about 100 KB: the member limit (60 MB) comes first.
        let bomb = gzip_of(&vec![0u8; 100_000_000]);
        let w = walk("bomb.gz", &bomb, &Limits::default(), &mut |_, _, _| {});
        assert!(
            matches!(
                w.violation,
                Some(Violation::MemberBytes {
                    limit: 60_000_000,
                    ..
                })
            ),
            "{w:?}"
        );
    }

    #[test]
    fn the_total_is_bounded_across_members() {
        let limits = Limits {
            max_total_bytes: 10_000,
            ..Limits::default()
        };
        let files: Vec<(String, Vec<u8>)> = (0..5)
            .map(|i| (format!("f{i}"), vec![i as u8; 3000]))
            .collect();
        let refs: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(n, d)| (n.as_str(), d.as_slice()))
            .collect();
        let w = walk("t.zip", &zip_of(&refs), &limits, &mut |_, _, _| {});
        assert!(
            matches!(w.violation, Some(Violation::TotalBytes { limit: 10_000 })),
            "{w:?}"
        );
        assert!(w.bytes <= 10_000);
    }

    #[test]
    fn a_corrupt_archive_is_unscannable_not_a_crash() {
        let mut z = zip_of(&[("a.txt", &[b'a'; 5000])]);
        let mid = z.len() / 2;
        for b in &mut z[30..mid] {
            *b ^= 0x5a;
        }
        let w = walk("bad.zip", &z, &Limits::default(), &mut |_, _, _| {});
        assert_eq!(w.violation, None);
        assert!(!w.unscannable.is_empty(), "{w:?}");
        let w = walk(
            "bad.gz",
            &gzip_of(b"hello")[..8],
            &Limits::default(),
            &mut |_, _, _| {},
        );
        assert!(!w.unscannable.is_empty(), "{w:?}");
    }

    #[test]
    fn a_deadline_ends_the_walk() {
        let limits = Limits {
            deadline: Some(Instant::now()),
            ..Limits::default()
        };
        std::thread::sleep(std::time::Duration::from_millis(2));
        let w = walk("a.zip", &nested(3), &limits, &mut |_, _, _| {});
        assert_eq!(w.violation, Some(Violation::Deadline));
    }

    #[test]
    fn a_path_traversal_name_is_only_a_name() {
        let z = zip_of(&[("../../etc/passwd", b"root:x:0:0")]);
        let w = walk("t.zip", &z, &Limits::default(), &mut |_, _, _| {});
        assert_eq!(w.violation, None);
        assert!(paths(&w).contains(&"t.zip/../../etc/passwd"));
    }

    fn seven_zip_of(files: &[(&str, &[u8])], lzma_dict: Option<u32>) -> Vec<u8> {
        let mut w = sevenz_rust2::ArchiveWriter::new(Cursor::new(Vec::new())).unwrap();
        if let Some(d) = lzma_dict {
            let mut o = sevenz_rust2::encoder_options::LzmaOptions::from_level(1);
            o.set_dictionary_size(d);
            w.set_content_methods(vec![o.into()]);
        }
        for (name, data) in files {
            w.push_archive_entry(sevenz_rust2::ArchiveEntry::new_file(name), Some(*data))
                .unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    fn bzip2_of(data: &[u8]) -> Vec<u8> {
        let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::best());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn xz_of(data: &[u8]) -> Vec<u8> {
        let mut w =
            lzma_rust2::XzWriter::new(Vec::new(), lzma_rust2::XzOptions::with_preset(1)).unwrap();
        w.write_all(data).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn seven_zip_bzip2_and_xz_are_opened_at_any_depth() {
        let inner = zip_of(&[("eicar.com", EICAR)]);
        let sz = seven_zip_of(&[("docs/readme.txt", b"hello"), ("in.zip", &inner)], None);
        let bz = bzip2_of(&sz);
        let xz = xz_of(&bz);
        let mut seen = Vec::new();
        let w = walk("a.7z.bz2.xz", &xz, &Limits::default(), &mut |p, b, _| {
            if b == EICAR {
                seen.push(p.to_string());
            }
        });
        assert_eq!(w.violation, None, "{:?}", w.unscannable);
        assert!(w.unscannable.is_empty(), "{:?}", w.unscannable);
        assert_eq!(seen, ["a.7z.bz2.xz/a.7z.bz2/a.7z/in.zip/eicar.com"]);
        let f = w
            .found
            .iter()
            .find(|f| f.path.ends_with("eicar.com"))
            .unwrap();
        assert_eq!(f.layer, 4);
        assert_eq!(stream_name("x.tbz2", TrueType::Bzip2), "x.tar");
        assert_eq!(stream_name("x.txz", TrueType::Xz), "x.tar");
    }

    #[test]
    fn seven_zip_files_are_counted_from_its_header() {
        let names: Vec<String> = (0..354).map(|i| format!("f{i}.txt")).collect();
        let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"x"[..])).collect();
        let w = walk(
            "n.7z",
            &seven_zip_of(&files[..353], None),
            &Limits::default(),
            &mut |_, _, _| {},
        );
        assert_eq!(w.violation, None);
        let w = walk(
            "n.7z",
            &seven_zip_of(&files, None),
            &Limits::default(),
            &mut |_, _, _| {},
        );
        assert!(
            matches!(w.violation, Some(Violation::Files { count: 354, .. })),
            "{:?}",
            w.violation
        );
        assert_eq!(w.bytes, 0, "nothing was decompressed");
    }

    /// A 7z whose LZMA coder asks for a 1.5 GiB dictionary: refused before it is allocated.
    #[test]
    fn a_seven_zip_dictionary_bomb_is_refused_before_allocating() {
        let sz = seven_zip_of(&[("a.txt", &[b'a'; 1000][..])], Some(1 << 16));
        // The coder's properties: lc/lp/pb byte, then the dictionary size (LE).
        let props = [0x5d, 0x00, 0x00, 0x01, 0x00];
        let at = memchr::memmem::rfind(&sz, &props).expect("coder properties in the header");
        let mut bomb = sz.clone();
        bomb[at + 1..at + 5].copy_from_slice(&0x6000_0000u32.to_le_bytes());
        // Fix the header's CRC, then the start header's.
        let next_off = u64::from_le_bytes(bomb[12..20].try_into().unwrap()) as usize + 32;
        let next_len = u64::from_le_bytes(bomb[20..28].try_into().unwrap()) as usize;
        let crc = crc32fast::hash(&bomb[next_off..next_off + next_len]);
        bomb[28..32].copy_from_slice(&crc.to_le_bytes());
        let crc = crc32fast::hash(&bomb[12..32]);
        bomb[8..12].copy_from_slice(&crc.to_le_bytes());
        let w = walk("bomb.7z", &bomb, &Limits::default(), &mut |_, _, _| {});
        assert!(
            matches!(w.violation, Some(Violation::DecoderMemory { .. })),
            "{:?} {:?}",
            w.violation,
            w.unscannable
        );
        // The same archive as written is read.
        let w = walk("ok.7z", &sz, &Limits::default(), &mut |_, _, _| {});
        assert_eq!(w.violation, None, "{:?}", w.unscannable);
    }

    #[test]
    fn bzip2_and_xz_bombs_stop_at_a_limit() {
        let zeros = vec![0u8; 80_000_000];
        for (name, data) in [("z.bz2", bzip2_of(&zeros)), ("z.xz", xz_of(&zeros))] {
            let w = walk(name, &data, &Limits::default(), &mut |_, _, _| {});
            assert!(
                matches!(
                    w.violation,
                    Some(Violation::Ratio { .. } | Violation::MemberBytes { .. })
                ),
                "{name}: {:?}",
                w.violation
            );
            assert!(w.bytes <= 60_000_001, "{name}: {}", w.bytes);
        }
    }

    /// Sets a zip's declared uncompressed size of its first entry (local header and
    /// central directory) to `size`.
    fn lie_about_size(z: &mut [u8], size: u32) {
        let local = memchr::memmem::find(z, b"PK\x03\x04").unwrap();
        z[local + 22..local + 26].copy_from_slice(&size.to_le_bytes());
        let central = memchr::memmem::find(z, b"PK\x01\x02").unwrap();
        z[central + 24..central + 28].copy_from_slice(&size.to_le_bytes());
    }

    #[test]
    fn a_zip_that_lies_about_its_size_is_read_for_what_it_holds() {
        // Declared 10 bytes; the stream holds EICAR after padding: it is found.
        let mut z = zip_of(&[("small.txt", &[b"0123456789".as_slice(), EICAR].concat())]);
        lie_about_size(&mut z, 10);
        let mut seen = false;
        let w = walk("lie.zip", &z, &Limits::default(), &mut |_, b, _| {
            seen |= memchr::memmem::find(b, EICAR).is_some();
        });
        assert!(seen, "{w:?}");
        assert!(
            w.unscannable
                .iter()
                .any(|(_, why)| why.contains("declares 10 bytes")),
            "{w:?}"
        );
        // Declared 1 KB, holds 80 MB of zeros: stopped by a limit, not by the declaration.
        let mut z = zip_of(&[("zeros.bin", &vec![0u8; 80_000_000])]);
        lie_about_size(&mut z, 1000);
        let w = walk("lie.zip", &z, &Limits::default(), &mut |_, _, _| {});
        assert!(
            matches!(
                w.violation,
                Some(Violation::Ratio { .. } | Violation::MemberBytes { .. })
            ),
            "{:?}",
            w.violation
        );
    }

    /// Fifield's construction, simplified: many central-directory entries sharing one
    /// compressed kernel. Each is read through the counter; the total stops it.
    #[test]
    fn an_overlapping_entry_zip_bomb_stops_at_the_total() {
        let kernel = zip_of(&[("k000", &vec![0u8; 1_000_000])]);
        let local_end = memchr::memmem::find(&kernel, b"PK\x01\x02").unwrap();
        let cd_end = memchr::memmem::find(&kernel, b"PK\x05\x06").unwrap();
        let entry = &kernel[local_end..cd_end];
        let n: u16 = 300;
        let mut bomb = kernel[..local_end].to_vec();
        let cd_start = bomb.len() as u32;
        for i in 0..n {
            // Same offset (0) for every entry, a distinct name of the same length.
            let mut e = entry.to_vec();
            e[47..50].copy_from_slice(format!("{i:03}").as_bytes());
            bomb.extend_from_slice(&e);
        }
        let cd_len = bomb.len() as u32 - cd_start;
        bomb.extend_from_slice(b"PK\x05\x06\0\0\0\0");
        bomb.extend_from_slice(&n.to_le_bytes());
        bomb.extend_from_slice(&n.to_le_bytes());
        bomb.extend_from_slice(&cd_len.to_le_bytes());
        bomb.extend_from_slice(&cd_start.to_le_bytes());
        bomb.extend_from_slice(&[0, 0]);
        let limits = Limits {
            max_total_bytes: 100_000_000,
            ..Limits::default()
        };
        let w = walk("overlap.zip", &bomb, &limits, &mut |_, _, _| {});
        assert!(
            matches!(w.violation, Some(Violation::TotalBytes { .. })),
            "{:?} {:?}",
            w.violation,
            w.unscannable.first()
        );
        assert!(w.bytes <= 100_000_000);
    }
}
