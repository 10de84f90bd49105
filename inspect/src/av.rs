//! The built-in antivirus engine: ClamAV signature files compiled into one lookup set of
//! hashes (`.hdb` MD5, `.hsb` SHA-1 / SHA-256, `MD5:size:name` and its kin) and one
//! Hyperscan database of body signatures (`.ndb`, hex with ClamAV's wildcards, at the
//! offsets that map onto a regular expression). Every decoded part and every archive
//! member is looked up; EICAR is known without any file.
//!
//! A line that is malformed is an error naming its file and line (an import with errors
//! is refused); a well-formed line using what this engine cannot express (an offset from
//! a PE entry point, a target type it does not sniff) is reported as skipped, and the
//! rest is used.

use std::collections::HashMap;
use std::fmt::Write as _;

use hyperscan::prelude::{BlockDatabase, Builder, Matching, Patterns, Scratch};
use hyperscan::{CompileFlags, Serialized};
use md5::Md5;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::attach::TrueType;

/// A thread's scratch space for [`Antivirus::scan`].
pub use hyperscan::prelude::Scratch as AvScratch;

/// The EICAR test file, as its standard writes it.
pub const EICAR: &[u8] = br"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

/// The name ClamAV gives EICAR.
pub const EICAR_NAME: &str = "Eicar-Test-Signature";

/// What a body signature applies to (ClamAV's target types that this engine sniffs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    Any,
    Pe,
    Ole,
    Html,
    /// The whole message as received.
    Mail,
    Image,
    Elf,
    MachO,
    Pdf,
}

impl Target {
    fn from_clamav(n: &str) -> Option<Result<Target, String>> {
        Some(Ok(match n {
            "0" => Target::Any,
            "1" => Target::Pe,
            "2" => Target::Ole,
            "3" => Target::Html,
            "4" => Target::Mail,
            "5" => Target::Image,
            "6" => Target::Elf,
            "9" => Target::MachO,
            "10" => Target::Pdf,
            "7" | "8" | "11" | "12" | "13" | "14" => {
                return Some(Err(format!("target type {n} is not sniffed")));
            }
            _ => return None,
        }))
    }

    /// Whether an object of `t` (or the whole message, `mail`) is this target's.
    fn applies(self, t: TrueType, mail: bool) -> bool {
        match self {
            Target::Any => true,
            Target::Mail => mail,
            Target::Pe => t == TrueType::Pe,
            Target::Ole => matches!(t, TrueType::Ole | TrueType::OleMacro),
            Target::Html => t == TrueType::Html,
            Target::Image => t == TrueType::Image,
            Target::Elf => t == TrueType::Elf,
            Target::MachO => t == TrueType::MachO,
            Target::Pdf => matches!(t, TrueType::Pdf | TrueType::PdfJavaScript),
        }
    }
}

/// A line that was refused or skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineIssue {
    pub file: String,
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for LineIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AvError {
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Lines(Vec<LineIssue>),
    #[error("{path}: {message}")]
    Read { path: String, message: String },
    #[error("hyperscan: {0}")]
    Hyperscan(String),
    #[error("not a compiled signature set: {0}")]
    Format(String),
}

/// A hash signature: the object's size when the line gives one.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct HashSig {
    size: Option<u64>,
    name: u32,
}

/// A body signature: its name, target and where it must end (for `EOF-n`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BodySig {
    name: u32,
    target: Target,
    source: String,
}

/// Signatures as parsed, before compiling.
#[derive(Debug, Default, Clone)]
pub struct SignatureSet {
    names: Vec<String>,
    md5: HashMap<[u8; 16], Vec<HashSig>>,
    sha1: HashMap<[u8; 20], Vec<HashSig>>,
    sha256: HashMap<[u8; 32], Vec<HashSig>>,
    bodies: Vec<BodySig>,
    /// Lines not used, and why.
    pub skipped: Vec<LineIssue>,
}

/// How many signatures of each kind a set has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub hashes: usize,
    pub bodies: usize,
    pub skipped: usize,
}

/// The built-in signatures: EICAR by its MD5 and as a body signature at offset 0 (so it
/// is found with the trailing white space its standard allows).
const BUILTIN_HDB: &str = "44d88612fea8a8f36de82e1278abb02f:68:Eicar-Test-Signature\n";

fn hex_of(b: &[u8]) -> String {
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

impl SignatureSet {
    /// EICAR only.
    pub fn builtin() -> SignatureSet {
        let mut s = SignatureSet::default();
        let _ = s.add_hashes("built-in.hdb", BUILTIN_HDB);
        let ndb = format!("{EICAR_NAME}:0:0:{}\n", hex_of(EICAR));
        let _ = s.add_ndb("built-in.ndb", &ndb);
        s
    }

    pub fn counts(&self) -> Counts {
        Counts {
            hashes: self.md5.values().map(Vec::len).sum::<usize>()
                + self.sha1.values().map(Vec::len).sum::<usize>()
                + self.sha256.values().map(Vec::len).sum::<usize>(),
            bodies: self.bodies.len(),
            skipped: self.skipped.len(),
        }
    }

    fn name(&mut self, n: &str) -> u32 {
        self.names.push(n.to_string());
        (self.names.len() - 1) as u32
    }

    /// Adds a file by its extension (`.hdb`, `.hsb`, `.ndb`; `.hdu`, `.hsu`, `.ndu`, the
    /// "potentially unwanted" kin, read the same way).
    pub fn add_file(&mut self, file: &str, text: &str) -> Result<(), AvError> {
        let ext = file.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
        match ext.as_str() {
            "hdb" | "hsb" | "hdu" | "hsu" => self.add_hashes(file, text),
            "ndb" | "ndu" => self.add_ndb(file, text),
            _ => Err(AvError::Lines(vec![LineIssue {
                file: file.to_string(),
                line: 0,
                message: "not a signature file this engine reads (.hdb, .hsb, .ndb)".into(),
            }])),
        }
    }

    /// Reads the files at `paths`.
    pub fn add_paths(&mut self, paths: &[std::path::PathBuf]) -> Result<(), AvError> {
        let mut errors = Vec::new();
        for p in paths {
            let name = p.display().to_string();
            let bytes = std::fs::read(p).map_err(|e| AvError::Read {
                path: name.clone(),
                message: e.to_string(),
            })?;
            let text = String::from_utf8_lossy(&bytes);
            match self.add_file(&name, &text) {
                Ok(()) => {}
                Err(AvError::Lines(l)) => errors.extend(l),
                Err(e) => return Err(e),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(AvError::Lines(errors))
        }
    }

    /// `HASH:size:name` lines (size `*` for any); the hash's length says its kind.
    fn add_hashes(&mut self, file: &str, text: &str) -> Result<(), AvError> {
        let mut errors = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |m: &str| LineIssue {
                file: file.to_string(),
                line: i + 1,
                message: m.to_string(),
            };
            let mut f = line.splitn(4, ':');
            let (Some(hash), Some(size), Some(name)) = (f.next(), f.next(), f.next()) else {
                errors.push(err("expected HASH:size:name"));
                continue;
            };
            let name = name.trim();
            if name.is_empty() {
                errors.push(err("the signature has no name"));
                continue;
            }
            let size = match size {
                "*" => None,
                s => match s.parse::<u64>() {
                    Ok(n) => Some(n),
                    Err(_) => {
                        errors.push(err(&format!("size {s:?} is not a number or *")));
                        continue;
                    }
                },
            };
            let hash = hash.to_ascii_lowercase();
            let sig = |s: &mut Self| HashSig {
                size,
                name: s.name(name),
            };
            match hash.len() {
                32 => match unhex::<16>(&hash) {
                    Some(h) => {
                        let sig = sig(self);
                        self.md5.entry(h).or_default().push(sig);
                    }
                    None => errors.push(err("the MD5 hash is not hexadecimal")),
                },
                40 => match unhex::<20>(&hash) {
                    Some(h) => {
                        let sig = sig(self);
                        self.sha1.entry(h).or_default().push(sig);
                    }
                    None => errors.push(err("the SHA-1 hash is not hexadecimal")),
                },
                64 => match unhex::<32>(&hash) {
                    Some(h) => {
                        let sig = sig(self);
                        self.sha256.entry(h).or_default().push(sig);
                    }
                    None => errors.push(err("the SHA-256 hash is not hexadecimal")),
                },
                n => errors.push(err(&format!(
                    "a hash of {n} characters is none of MD5 (32), SHA-1 (40), SHA-256 (64)"
                ))),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(AvError::Lines(errors))
        }
    }

    /// `Name:TargetType:Offset:HexSignature[:MinFL[:MaxFL]]` lines.
    fn add_ndb(&mut self, file: &str, text: &str) -> Result<(), AvError> {
        let mut errors = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let issue = |m: String| LineIssue {
                file: file.to_string(),
                line: i + 1,
                message: m,
            };
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 || f.len() > 6 {
                errors.push(issue(
                    "expected Name:TargetType:Offset:HexSignature[:MinFL[:MaxFL]]".into(),
                ));
                continue;
            }
            let (name, target, offset, hex) = (f[0], f[1], f[2], f[3]);
            if name.is_empty() {
                errors.push(issue("the signature has no name".into()));
                continue;
            }
            let target = match Target::from_clamav(target) {
                Some(Ok(t)) => t,
                Some(Err(m)) => {
                    self.skipped.push(issue(m));
                    continue;
                }
                None => {
                    errors.push(issue(format!(
                        "target type {target:?} is not one of ClamAV's"
                    )));
                    continue;
                }
            };
            let body = match hex_to_regex(hex) {
                Ok(b) => b,
                Err(Problem::Malformed(m)) => {
                    errors.push(issue(m));
                    continue;
                }
                Err(Problem::Unsupported(m)) => {
                    self.skipped.push(issue(m));
                    continue;
                }
            };
            let source = match offset_regex(offset, &body) {
                Ok(s) => s,
                Err(Problem::Malformed(m)) => {
                    errors.push(issue(m));
                    continue;
                }
                Err(Problem::Unsupported(m)) => {
                    self.skipped.push(issue(m));
                    continue;
                }
            };
            let name = self.name(name);
            self.bodies.push(BodySig {
                name,
                target,
                source,
            });
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(AvError::Lines(errors))
        }
    }

    /// Compiles the set; a body signature Hyperscan refuses is skipped with its reason.
    pub fn compile(mut self) -> Result<Antivirus, AvError> {
        let (hs, serialized) = loop {
            if self.bodies.is_empty() {
                break (None, Vec::new());
            }
            let mut patterns = Vec::with_capacity(self.bodies.len());
            for (i, b) in self.bodies.iter().enumerate() {
                let mut p = hyperscan::Pattern::with_flags(
                    b.source.as_str(),
                    CompileFlags::DOTALL | CompileFlags::SINGLEMATCH,
                )
                .map_err(|e| AvError::Hyperscan(e.to_string()))?;
                p.id = Some(i);
                patterns.push(p);
            }
            match Patterns(patterns).build::<hyperscan::BlockMode>() {
                Ok(db) => {
                    let bytes = db
                        .serialize()
                        .map_err(|e| AvError::Hyperscan(e.to_string()))?
                        .to_vec();
                    break (Some(db), bytes);
                }
                Err(e) => {
                    let Some(bad) = crate::compiled::failing_expression(&e) else {
                        return Err(AvError::Hyperscan(e.to_string()));
                    };
                    let b = self.bodies.remove(bad);
                    self.skipped.push(LineIssue {
                        file: "compile".into(),
                        line: 0,
                        message: format!("{}: {e}", self.names[b.name as usize]),
                    });
                }
            }
        };
        let counts = self.counts();
        Ok(Antivirus {
            hashed_sizes: hashed_sizes(&self),
            set: self,
            hs,
            serialized,
            counts,
        })
    }
}

enum Problem {
    Malformed(String),
    Unsupported(String),
}

/// ClamAV's hex signature as a byte regex (Hyperscan syntax, DOTALL).
fn hex_to_regex(hex: &str) -> Result<String, Problem> {
    let b = hex.as_bytes();
    let mut out = String::with_capacity(hex.len() * 2);
    let mut i = 0;
    let mut literal = 0usize;
    let nib = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    while i < b.len() {
        match b[i] {
            b'*' => {
                out.push_str(".*");
                i += 1;
            }
            b'{' => {
                let end = b[i..]
                    .iter()
                    .position(|&c| c == b'}')
                    .ok_or_else(|| Problem::Malformed("an unclosed {".into()))?;
                let inner = &hex[i + 1..i + end];
                let num = |s: &str| -> Result<u64, Problem> {
                    s.parse()
                        .map_err(|_| Problem::Malformed(format!("{{{inner}}} is not a range")))
                };
                let q = match inner.split_once('-') {
                    None => format!(".{{{}}}", num(inner)?),
                    Some(("", m)) => format!(".{{0,{}}}", num(m)?),
                    Some((n, "")) => format!(".{{{},}}", num(n)?),
                    Some((n, m)) => {
                        let (n, m) = (num(n)?, num(m)?);
                        if n > m {
                            return Err(Problem::Malformed(format!("{{{inner}}}: {n} > {m}")));
                        }
                        format!(".{{{n},{m}}}")
                    }
                };
                out.push_str(&q);
                i += end + 1;
            }
            b'[' => {
                let end = b[i..]
                    .iter()
                    .position(|&c| c == b']')
                    .ok_or_else(|| Problem::Malformed("an unclosed [".into()))?;
                let inner = &hex[i + 1..i + end];
                let (n, m) = inner
                    .split_once('-')
                    .and_then(|(n, m)| Some((n.parse::<u64>().ok()?, m.parse::<u64>().ok()?)))
                    .ok_or_else(|| Problem::Malformed(format!("[{inner}] is not a range")))?;
                out.push_str(&format!(".{{{n},{m}}}"));
                i += end + 1;
            }
            b'!' if b.get(i + 1) == Some(&b'(') => {
                let end = b[i..]
                    .iter()
                    .position(|&c| c == b')')
                    .ok_or_else(|| Problem::Malformed("an unclosed !(".into()))?;
                let inner = &hex[i + 2..i + end];
                let mut class = String::from("[^");
                for alt in inner.split('|') {
                    if alt.len() != 2 {
                        return Err(Problem::Unsupported(
                            "a negated group of more than single bytes".into(),
                        ));
                    }
                    let x = u8::from_str_radix(alt, 16)
                        .map_err(|_| Problem::Malformed(format!("!({inner}) is not hex")))?;
                    let _ = write!(class, "\\x{x:02x}");
                }
                class.push(']');
                out.push_str(&class);
                i += end + 1;
            }
            b'(' => {
                let end = b[i..]
                    .iter()
                    .position(|&c| c == b')')
                    .ok_or_else(|| Problem::Malformed("an unclosed (".into()))?;
                let inner = &hex[i + 1..i + end];
                if inner == "B" || inner == "L" {
                    return Err(Problem::Unsupported(format!("the ({inner}) anchor")));
                }
                let mut alts = Vec::new();
                for alt in inner.split('|') {
                    alts.push(hex_to_regex(alt)?);
                }
                out.push_str("(?:");
                out.push_str(&alts.join("|"));
                out.push(')');
                i += end + 1;
            }
            hi => {
                let lo = *b
                    .get(i + 1)
                    .ok_or_else(|| Problem::Malformed("an odd number of hex digits".into()))?;
                match (hi, lo) {
                    (b'?', b'?') => out.push('.'),
                    (b'?', l) => {
                        let l = nib(l).ok_or_else(|| bad_hex(hex))?;
                        out.push('[');
                        for h in 0..16u8 {
                            let _ = write!(out, "\\x{:02x}", h << 4 | l);
                        }
                        out.push(']');
                    }
                    (h, b'?') => {
                        let h = nib(h).ok_or_else(|| bad_hex(hex))?;
                        let _ = write!(out, "[\\x{:02x}-\\x{:02x}]", h << 4, h << 4 | 0xf);
                    }
                    (h, l) => {
                        let (h, l) = (
                            nib(h).ok_or_else(|| bad_hex(hex))?,
                            nib(l).ok_or_else(|| bad_hex(hex))?,
                        );
                        let _ = write!(out, "\\x{:02x}", h << 4 | l);
                        literal += 1;
                    }
                }
                i += 2;
            }
        }
    }
    if out.is_empty() {
        return Err(Problem::Malformed("an empty signature".into()));
    }
    if literal == 0 && !hex.contains('(') {
        return Err(Problem::Malformed(
            "a signature of wildcards only would match everything".into(),
        ));
    }
    Ok(out)
}

fn bad_hex(hex: &str) -> Problem {
    Problem::Malformed(format!(
        "{:?} is not a hex signature",
        hex.chars().take(40).collect::<String>()
    ))
}

/// The signature placed at its offset: `*` anywhere, `n` at n, `n,m` from n to n+m,
/// `EOF-n` starting n bytes before the end (for fixed-length signatures).
fn offset_regex(offset: &str, body: &str) -> Result<String, Problem> {
    let num = |s: &str| -> Result<u64, Problem> {
        s.parse()
            .map_err(|_| Problem::Malformed(format!("offset {offset:?} is not one of ClamAV's")))
    };
    if offset == "*" {
        return Ok(body.to_string());
    }
    if let Some(rest) = offset.strip_prefix("EOF-") {
        let n = num(rest)?;
        let Some(len) = fixed_len(body) else {
            return Err(Problem::Unsupported(
                "EOF-n offset with a signature of variable length".into(),
            ));
        };
        if len > n {
            return Err(Problem::Malformed(format!(
                "offset {offset}: the signature is longer than {n} bytes"
            )));
        }
        return Ok(format!("{body}.{{{}}}\\z", n - len));
    }
    if offset.starts_with("EP")
        || offset.starts_with('S')
        || offset.starts_with("VI")
        || offset.starts_with("$")
    {
        return Err(Problem::Unsupported(format!(
            "offset {offset} needs executable sections"
        )));
    }
    let (n, shift) = match offset.split_once(',') {
        Some((n, m)) => (num(n)?, num(m)?),
        None => (num(offset)?, 0),
    };
    Ok(if n == 0 && shift == 0 {
        format!("\\A{body}")
    } else if shift == 0 {
        format!("\\A.{{{n}}}{body}")
    } else {
        format!("\\A.{{{n},{}}}{body}", n + shift)
    })
}

/// The number of bytes `re` (as [`hex_to_regex`] writes it) always matches, if fixed.
fn fixed_len(re: &str) -> Option<u64> {
    if re.contains('*') || re.contains(',') || re.contains("(?:") {
        return None;
    }
    let mut n = 0u64;
    let b = re.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => {
                n += 1;
                i += 4;
            }
            b'.' => {
                if b.get(i + 1) == Some(&b'{') {
                    let end = re[i..].find('}')? + i;
                    n += re[i + 2..end].parse::<u64>().ok()?;
                    i = end + 1;
                } else {
                    n += 1;
                    i += 1;
                }
            }
            b'[' => {
                let end = re[i..].find(']')? + i;
                n += 1;
                i = end + 1;
            }
            _ => return None,
        }
    }
    Some(n)
}

/// A compiled set, shared by every thread; each scans with its own [`Scratch`].
pub struct Antivirus {
    set: SignatureSet,
    hs: Option<BlockDatabase>,
    serialized: Vec<u8>,
    counts: Counts,
    /// The sizes hash signatures name: an object of another size is not hashed (as
    /// ClamAV does); `None` when a signature matches any size.
    hashed_sizes: Option<std::collections::HashSet<u64>>,
}

/// The sizes `set`'s hash signatures name, or `None` when one matches any size.
fn hashed_sizes(set: &SignatureSet) -> Option<std::collections::HashSet<u64>> {
    let mut out = std::collections::HashSet::new();
    let all = set
        .md5
        .values()
        .chain(set.sha1.values())
        .chain(set.sha256.values())
        .flatten();
    for sig in all {
        out.insert(sig.size?);
    }
    Some(out)
}

impl std::fmt::Debug for Antivirus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Antivirus")
            .field("counts", &self.counts)
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    hyperscan: String,
    names: Vec<String>,
    md5: Vec<(String, Vec<HashSig>)>,
    sha1: Vec<(String, Vec<HashSig>)>,
    sha256: Vec<(String, Vec<HashSig>)>,
    bodies: Vec<BodySig>,
    skipped: Vec<(String, usize, String)>,
}

const MAGIC: &[u8; 8] = b"BWAV\x00\x00\x00\x01";

impl Antivirus {
    /// EICAR only.
    pub fn builtin() -> Result<Antivirus, AvError> {
        SignatureSet::builtin().compile()
    }

    /// The built-in signatures and the files at `paths`.
    pub fn load(paths: &[std::path::PathBuf]) -> Result<Antivirus, AvError> {
        let mut set = SignatureSet::builtin();
        set.add_paths(paths)?;
        set.compile()
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    pub fn skipped(&self) -> &[LineIssue] {
        &self.set.skipped
    }

    /// Scratch space for one thread.
    pub fn scratch(&self) -> Result<Option<Scratch>, AvError> {
        self.hs
            .as_ref()
            .map(|db| db.alloc_scratch())
            .transpose()
            .map_err(|e| AvError::Hyperscan(e.to_string()))
    }

    /// The name of the first signature `object` (of true type `t`; the whole message
    /// when `mail`) matches.
    pub fn scan(
        &self,
        scratch: Option<&Scratch>,
        object: &[u8],
        t: TrueType,
        mail: bool,
    ) -> Option<&str> {
        if !mail && let Some(n) = self.hash_match(object) {
            return Some(n);
        }
        let (Some(db), Some(scratch)) = (&self.hs, scratch) else {
            return None;
        };
        let mut found: Option<u32> = None;
        let _ = db.scan(object, scratch, |id: u32, _from, _to, _flags| {
            match self.set.bodies.get(id as usize) {
                Some(b) if b.target.applies(t, mail) => {
                    found = Some(b.name);
                    Matching::Terminate
                }
                _ => Matching::Continue,
            }
        });
        found.and_then(|n| self.set.names.get(n as usize).map(String::as_str))
    }

    fn hash_match(&self, object: &[u8]) -> Option<&str> {
        let size = object.len() as u64;
        if let Some(sizes) = &self.hashed_sizes
            && !sizes.contains(&size)
        {
            return None;
        }
        let pick = |sigs: Option<&Vec<HashSig>>| {
            sigs.and_then(|v| v.iter().find(|s| s.size.is_none_or(|n| n == size)))
                .map(|s| s.name)
        };
        let mut hit = None;
        if !self.set.md5.is_empty() {
            let d: [u8; 16] = Md5::digest(object).into();
            hit = pick(self.set.md5.get(&d));
        }
        if hit.is_none() && !self.set.sha256.is_empty() {
            let d: [u8; 32] = Sha256::digest(object).into();
            hit = pick(self.set.sha256.get(&d));
        }
        if hit.is_none() && !self.set.sha1.is_empty() {
            let d: [u8; 20] = sha1::Sha1::digest(object).into();
            hit = pick(self.set.sha1.get(&d));
        }
        hit.and_then(|n| self.set.names.get(n as usize).map(String::as_str))
    }

    /// The compiled set as bytes (the control service publishes them beside a snapshot).
    pub fn to_bytes(&self) -> Vec<u8> {
        fn list<const N: usize>(m: &HashMap<[u8; N], Vec<HashSig>>) -> Vec<(String, Vec<HashSig>)> {
            let mut v: Vec<(String, Vec<HashSig>)> =
                m.iter().map(|(k, s)| (hex_of(k), s.clone())).collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        }
        let m = Manifest {
            hyperscan: crate::compiled::hyperscan_version(),
            names: self.set.names.clone(),
            md5: list(&self.set.md5),
            sha1: list(&self.set.sha1),
            sha256: list(&self.set.sha256),
            bodies: self.set.bodies.clone(),
            skipped: self
                .set
                .skipped
                .iter()
                .map(|s| (s.file.clone(), s.line, s.message.clone()))
                .collect(),
        };
        let json = serde_json::to_vec(&m).unwrap_or_default();
        let mut out = Vec::with_capacity(json.len() + self.serialized.len() + 24);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(json.len() as u64).to_le_bytes());
        out.extend_from_slice(&json);
        out.extend_from_slice(&self.serialized);
        out
    }

    /// Loads [`Antivirus::to_bytes`]; refused when damaged or made by another Hyperscan.
    pub fn from_bytes(bytes: &[u8]) -> Result<Antivirus, AvError> {
        let bad = |m: &str| AvError::Format(m.to_string());
        let rest = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or_else(|| bad("wrong magic"))?;
        let len = rest
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .ok_or_else(|| bad("truncated"))? as usize;
        let json = rest
            .get(8..8usize.saturating_add(len))
            .ok_or_else(|| bad("truncated"))?;
        let db_bytes = &rest[8 + len..];
        let m: Manifest =
            serde_json::from_slice(json).map_err(|e| AvError::Format(e.to_string()))?;
        if m.hyperscan != crate::compiled::hyperscan_version() {
            return Err(bad("compiled by another Hyperscan version"));
        }
        if m.bodies.iter().any(|b| b.name as usize >= m.names.len()) {
            return Err(bad("a signature names nothing"));
        }
        fn table<const N: usize>(
            v: Vec<(String, Vec<HashSig>)>,
        ) -> Result<HashMap<[u8; N], Vec<HashSig>>, AvError> {
            v.into_iter()
                .map(|(k, s)| {
                    unhex::<N>(&k)
                        .map(|h| (h, s))
                        .ok_or_else(|| AvError::Format(format!("bad hash {k}")))
                })
                .collect()
        }
        let hs = if db_bytes.is_empty() {
            None
        } else {
            Some(
                db_bytes
                    .deserialize::<hyperscan::BlockMode>()
                    .map_err(|e| AvError::Format(e.to_string()))?,
            )
        };
        if hs.is_none() != m.bodies.is_empty() {
            return Err(bad("body signatures without their database"));
        }
        let set = SignatureSet {
            md5: table::<16>(m.md5)?,
            sha1: table::<20>(m.sha1)?,
            sha256: table::<32>(m.sha256)?,
            bodies: m.bodies,
            skipped: m
                .skipped
                .into_iter()
                .map(|(file, line, message)| LineIssue {
                    file,
                    line,
                    message,
                })
                .collect(),
            names: m.names,
        };
        let counts = set.counts();
        Ok(Antivirus {
            hashed_sizes: hashed_sizes(&set),
            set,
            hs,
            serialized: db_bytes.to_vec(),
            counts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan<'a>(av: &'a Antivirus, b: &[u8], t: TrueType) -> Option<&'a str> {
        let s = av.scratch().unwrap();
        av.scan(s.as_ref(), b, t, false)
    }

    #[test]
    fn eicar_is_known_without_any_file() {
        let av = Antivirus::builtin().unwrap();
        assert_eq!(scan(&av, EICAR, TrueType::Other), Some(EICAR_NAME));
        let padded = [EICAR, b"  \r\n"].concat();
        assert_eq!(scan(&av, &padded, TrueType::Other), Some(EICAR_NAME));
        assert_eq!(scan(&av, b"hello", TrueType::Other), None);
        let inside = [b"x".as_slice(), EICAR].concat();
        assert_eq!(scan(&av, &inside, TrueType::Other), None, "offset 0 only");
    }

    #[test]
    fn hash_signatures_of_every_kind_with_and_without_size() {
        let mut s = SignatureSet::default();
        let md5 = hex_of(&Md5::digest(b"alpha"));
        let sha1 = hex_of(&sha1::Sha1::digest(b"beta"));
        let sha256 = hex_of(&Sha256::digest(b"gamma"));
        s.add_file("a.hdb", &format!("# comment\n{md5}:5:Test.Alpha\n"))
            .unwrap();
        s.add_file(
            "b.hsb",
            &format!("{sha1}:*:Test.Beta\n{sha256}:6:Test.Gamma.WrongSize\n"),
        )
        .unwrap();
        let av = s.compile().unwrap();
        assert_eq!(scan(&av, b"alpha", TrueType::Other), Some("Test.Alpha"));
        assert_eq!(scan(&av, b"beta", TrueType::Other), Some("Test.Beta"));
        assert_eq!(scan(&av, b"gamma", TrueType::Other), None, "size 6 given");
        assert_eq!(av.counts().hashes, 3);
    }

    #[test]
    fn malformed_lines_are_named_and_unsupported_ones_skipped() {
        let mut s = SignatureSet::default();
        let e = s
            .add_file(
                "x.hdb",
                "abc:1:Short\n44d88612fea8a8f36de82e1278abb02f:x:Bad\nzz:1\n",
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.hdb:1: a hash of 3 characters"), "{e}");
        assert!(e.contains("x.hdb:2: size \"x\""), "{e}");
        assert!(e.contains("x.hdb:3: expected HASH:size:name"), "{e}");
        let e = s
            .add_file(
                "y.ndb",
                "Ok.Sig:0:*:41424344\nBad.Hex:0:*:4142zz\nBad.Target:99:*:4142\nEp.Sig:1:EP+10:41424344\nText.Sig:7:*:41424344\nWild:0:*:??\n",
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("y.ndb:2:"), "{e}");
        assert!(e.contains("y.ndb:3: target type \"99\""), "{e}");
        assert!(e.contains("y.ndb:6: a signature of wildcards only"), "{e}");
        assert!(!e.contains("y.ndb:1:") && !e.contains("y.ndb:4:"), "{e}");
        let skipped: Vec<usize> = s.skipped.iter().map(|x| x.line).collect();
        assert_eq!(skipped, [4, 5]);
        assert!(s.add_file("z.txt", "").is_err());
    }

    #[test]
    fn body_signatures_map_wildcards_and_offsets() {
        let mut s = SignatureSet::default();
        s.add_file(
            "t.ndb",
            concat!(
                "Any.Place:0:*:6576696c{2}6d65\n",    // evil..me
                "At.Ten:0:10:4142\n",                 // AB at 10
                "Float:0:2,3:5859\n",                 // XY at 2..5
                "Tail:0:EOF-4:5a5a\n",                // ZZ 4 bytes from the end
                "Nibbles:0:*:7a3??8(61|62)*717171\n", // z 3? ?8 (a|b) ... qqq
                "Range:0:*:6e6e{-2}6f6f[1-2]7070\n",
                "Not:0:*:6b6b!(00|01)6b6b\n",
                "Pe.Only:1:*:70656f6e6c79\n", // peonly
            ),
        )
        .unwrap();
        let av = s.compile().unwrap();
        let t = TrueType::Other;
        assert_eq!(scan(&av, b"an evil--me here", t), Some("Any.Place"));
        assert_eq!(scan(&av, b"an evil-me here", t), None);
        assert_eq!(scan(&av, b"0123456789AB", t), Some("At.Ten"));
        assert_eq!(scan(&av, b"012345678AB", t), None);
        assert_eq!(scan(&av, b"....XY", t), Some("Float"));
        assert_eq!(scan(&av, b"......XY", t), None);
        assert_eq!(scan(&av, b"xxxZZ..", t), Some("Tail"));
        assert_eq!(scan(&av, b"xxxZZ...", t), None);
        assert_eq!(scan(&av, b"z38b...qqq", t), Some("Nibbles"));
        assert_eq!(scan(&av, b"nn..ooxpp", t), Some("Range"));
        assert_eq!(scan(&av, b"nn...ooxpp", t), None);
        assert_eq!(scan(&av, b"kk\x02kk", t), Some("Not"));
        assert_eq!(scan(&av, b"kk\x01kk", t), None);
        assert_eq!(scan(&av, b"MZ peonly", TrueType::Pe), Some("Pe.Only"));
        assert_eq!(scan(&av, b"   peonly", TrueType::Other), None);
    }

    #[test]
    fn a_compiled_set_survives_bytes() {
        let mut s = SignatureSet::builtin();
        s.add_file("t.ndb", "Any.Place:0:*:6576696c\nEp:1:EP+1:41\n")
            .unwrap();
        let av = s.compile().unwrap();
        let back = Antivirus::from_bytes(&av.to_bytes()).unwrap();
        assert_eq!(back.counts(), av.counts());
        assert_eq!(scan(&back, b"so evil", TrueType::Other), Some("Any.Place"));
        assert_eq!(scan(&back, EICAR, TrueType::Other), Some(EICAR_NAME));
        assert_eq!(back.skipped().len(), 1);
        assert!(Antivirus::from_bytes(b"BWAV\0\0\0\x01garbage").is_err());
        let mut broken = av.to_bytes();
        broken.truncate(broken.len() - 10);
        assert!(Antivirus::from_bytes(&broken).is_err());
    }
}
