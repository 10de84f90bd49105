//! The rule model shared by Bulwark's own rule files (TOML) and imported SpamAssassin
//! `.cf` files, and the loader that reads paths of either kind.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What a regex rule is matched against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Class {
    /// A named header of the message (or a pseudo-header such as `ALL`).
    Header,
    /// A header of any MIME part.
    MimeHeader,
    /// Rendered text: Subject and text parts, HTML rendered, one paragraph per line.
    Body,
    /// Decoded text parts, HTML as written.
    RawBody,
    /// Each URL, one per line.
    Uri,
    /// The whole message as received.
    Full,
}

impl Class {
    pub const ALL: [Class; 6] = [
        Class::Header,
        Class::MimeHeader,
        Class::Body,
        Class::RawBody,
        Class::Uri,
        Class::Full,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Header => "header",
            Class::MimeHeader => "mimeheader",
            Class::Body => "body",
            Class::RawBody => "rawbody",
            Class::Uri => "uri",
            Class::Full => "full",
        }
    }

    pub fn parse(s: &str) -> Option<Class> {
        Class::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// Which form of a header value a header rule reads (`Name`, `Name:raw`, `Name:addr`,
/// `Name:name`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum HeaderPart {
    Decoded,
    Raw,
    Addr,
    Name,
}

/// The header a header rule reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HeaderTarget {
    pub name: String,
    pub part: HeaderPart,
    /// The value to match when the message has no such header (`[if-unset: …]`).
    pub if_unset: Option<String>,
}

impl HeaderTarget {
    /// Parses `Name`, `Name:raw`, `Name:addr` or `Name:name`.
    pub fn parse(spec: &str) -> Result<HeaderTarget, String> {
        let (name, part) = match spec.rsplit_once(':') {
            Some((n, "raw")) => (n, HeaderPart::Raw),
            Some((n, "addr")) => (n, HeaderPart::Addr),
            Some((n, "name")) => (n, HeaderPart::Name),
            Some((_, other)) => return Err(format!("unknown header modifier ':{other}'")),
            None => (spec, HeaderPart::Decoded),
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            return Err(format!("bad header name {name:?}"));
        }
        Ok(HeaderTarget {
            name: name.to_string(),
            part,
            if_unset: None,
        })
    }
}

/// A regular expression with its Perl-style flags.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    pub source: String,
    pub caseless: bool,
    pub dotall: bool,
    pub multiline: bool,
}

impl Pattern {
    /// A pattern with flags from a Perl flag string (`i`, `s`, `m`, `x`; `g` and `o`
    /// mean nothing here). `x` is applied by removing the white space and comments it
    /// allows, so every engine sees the same plain pattern.
    pub fn with_flags(source: &str, flags: &str) -> Result<Pattern, String> {
        let mut p = Pattern {
            source: source.to_string(),
            caseless: false,
            dotall: false,
            multiline: false,
        };
        let mut extended = false;
        for f in flags.chars() {
            match f {
                'i' => p.caseless = true,
                's' => p.dotall = true,
                'm' => p.multiline = true,
                'x' => extended = true,
                'g' | 'o' => {}
                other => return Err(format!("unsupported regex flag '{other}'")),
            }
        }
        if extended {
            p.source = strip_extended(source);
        }
        Ok(p)
    }
}

/// Removes what Perl's `/x` ignores: unescaped white space and `#` comments outside
/// character classes.
fn strip_extended(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    let mut in_class = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                out.push(c);
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            }
            '[' if !in_class => {
                in_class = true;
                out.push(c);
                // A `]` right after `[` or `[^` is literal.
                if chars.peek() == Some(&'^') {
                    out.push('^');
                    chars.next();
                }
                if chars.peek() == Some(&']') {
                    out.push(']');
                    chars.next();
                }
            }
            ']' if in_class => {
                in_class = false;
                out.push(c);
            }
            c if !in_class && c.is_whitespace() => {}
            '#' if !in_class => {
                for n in chars.by_ref() {
                    if n == '\n' {
                        break;
                    }
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// What makes a rule hit.
#[derive(Debug, Clone, PartialEq)]
pub enum Test {
    /// A regex over one class of view; with `negate`, the rule hits when it does not
    /// match (`!~`).
    Regex {
        class: Class,
        header: Option<HeaderTarget>,
        pattern: Pattern,
        negate: bool,
    },
    /// The message has the header.
    Exists(String),
    /// An expression over other rules' hits.
    Meta(String),
    /// A check implemented in code (see [`crate::native`]).
    Native(String),
}

/// Where a rule was defined.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Origin {
    pub file: String,
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// A verdict class a rule can decide on its own, whatever the score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VerdictClass {
    Spam,
    Phishing,
    Auth,
}

impl VerdictClass {
    pub fn as_str(self) -> &'static str {
        match self {
            VerdictClass::Spam => "spam",
            VerdictClass::Phishing => "phishing",
            VerdictClass::Auth => "auth",
        }
    }

    pub fn parse(s: &str) -> Option<VerdictClass> {
        match s {
            "spam" => Some(VerdictClass::Spam),
            "phishing" => Some(VerdictClass::Phishing),
            "auth" => Some(VerdictClass::Auth),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub test: Test,
    /// Scores for SpamAssassin's four score sets (no Bayes/no network, network, Bayes,
    /// Bayes and network); a rule with one score has it in all four.
    pub scores: [f64; 4],
    /// The rule had an explicit `score` line (SpamAssassin gives others 1.0, or 0.01 to
    /// `T_` test rules).
    pub scored: bool,
    pub describe: Option<String>,
    pub tflags: Vec<String>,
    /// A verdict the rule decides by itself when it hits.
    pub verdict: Option<VerdictClass>,
    pub origin: Origin,
}

impl Rule {
    pub fn new(name: &str, test: Test, origin: Origin) -> Rule {
        Rule {
            name: name.to_string(),
            test,
            scores: [1.0; 4],
            scored: false,
            describe: None,
            tflags: Vec::new(),
            verdict: None,
            origin,
        }
    }

    /// A sub-rule (`__NAME`): only meta rules read it; it scores nothing.
    pub fn is_subrule(&self) -> bool {
        self.name.starts_with("__")
    }

    /// Needs the network (DNS lists and the like), which the rule engine does not do.
    pub fn is_net(&self) -> bool {
        self.tflags.iter().any(|f| f == "net")
    }

    pub fn score(&self, set: usize) -> f64 {
        if self.is_subrule() {
            return 0.0;
        }
        if !self.scored && self.name.starts_with("T_") {
            return 0.01;
        }
        self.scores[set.min(3)]
    }
}

/// A rule that could not be taken, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    pub name: String,
    pub origin: Origin,
    pub reason: String,
}

/// A set of rules, in definition order, with what was skipped on the way.
#[derive(Debug, Default, Clone)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    pub skipped: Vec<Skipped>,
}

impl RuleSet {
    /// Adds `other`, whose rules replace same-named ones (later files win, as in
    /// SpamAssassin).
    pub fn merge(&mut self, other: RuleSet) {
        let mut index: HashMap<String, usize> = self
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| (r.name.clone(), i))
            .collect();
        for r in other.rules {
            match index.get(&r.name) {
                Some(&i) => self.rules[i] = r,
                None => {
                    index.insert(r.name.clone(), self.rules.len());
                    self.rules.push(r);
                }
            }
        }
        self.skipped.extend(other.skipped);
    }
}

/// A rule file that cannot be read at all.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
}

/// Bulwark's rule file format.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlFile {
    #[serde(default)]
    rule: Vec<TomlRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlRule {
    name: String,
    /// header, mimeheader, body, rawbody, uri, full, exists, meta, native
    class: String,
    header: Option<String>,
    pattern: Option<String>,
    #[serde(default)]
    flags: String,
    #[serde(default)]
    negate: bool,
    if_unset: Option<String>,
    expression: Option<String>,
    /// A native check's call, such as `check_bayes(0.99,1.00)`.
    call: Option<String>,
    score: Option<f64>,
    describe: Option<String>,
    #[serde(default)]
    tflags: Vec<String>,
    verdict: Option<String>,
}

/// Parses a Bulwark rule file (TOML, `[[rule]]` tables).
pub fn parse_toml(text: &str, file: &str) -> Result<RuleSet, String> {
    let parsed: TomlFile = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut set = RuleSet::default();
    // TOML spans are not kept per table; the rule's line is found by its name.
    let line_of = |name: &str| {
        text.lines()
            .position(|l| l.contains(&format!("\"{name}\"")) || l.contains(&format!("'{name}'")))
            .map_or(0, |i| i + 1)
    };
    for r in parsed.rule {
        let origin = Origin {
            file: file.to_string(),
            line: line_of(&r.name),
        };
        let fail = |m: String| format!("{origin}: rule {}: {m}", r.name);
        if r.name.is_empty()
            || !r
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(fail("a rule name is letters, digits and '_'".into()));
        }
        let test = match r.class.as_str() {
            "exists" => Test::Exists(
                r.header
                    .clone()
                    .ok_or_else(|| fail("needs header".into()))?,
            ),
            "meta" => Test::Meta(
                r.expression
                    .clone()
                    .ok_or_else(|| fail("needs expression".into()))?,
            ),
            "native" => {
                let call = r.call.clone().ok_or_else(|| fail("needs call".into()))?;
                if !crate::native::supported(&call) {
                    return Err(fail(format!("no native check {call:?}")));
                }
                Test::Native(call)
            }
            other => {
                let class = Class::parse(other).ok_or_else(|| {
                    fail(format!(
                        "unknown class {other:?} (header, mimeheader, body, rawbody, uri, full, exists, meta, native)"
                    ))
                })?;
                let source = r
                    .pattern
                    .as_deref()
                    .ok_or_else(|| fail("needs pattern".into()))?;
                let pattern = Pattern::with_flags(source, &r.flags).map_err(fail)?;
                let header = match class {
                    Class::Header | Class::MimeHeader => {
                        let spec = r
                            .header
                            .as_deref()
                            .ok_or_else(|| fail("needs header".into()))?;
                        let mut h = HeaderTarget::parse(spec).map_err(fail)?;
                        h.if_unset = r.if_unset.clone();
                        Some(h)
                    }
                    _ => None,
                };
                Test::Regex {
                    class,
                    header,
                    pattern,
                    negate: r.negate,
                }
            }
        };
        let mut rule = Rule::new(&r.name, test, origin.clone());
        if let Some(s) = r.score {
            rule.scores = [s; 4];
            rule.scored = true;
        }
        rule.describe = r.describe;
        rule.tflags = r.tflags;
        if let Some(v) = r.verdict {
            rule.verdict = Some(
                VerdictClass::parse(&v).ok_or_else(|| fail(format!("unknown verdict {v:?}")))?,
            );
        }
        set.rules.push(rule);
    }
    Ok(set)
}

/// Loads rule paths: `.toml` files in Bulwark's format, `.cf` files, and directories of
/// `.cf` files (read in name order, as SpamAssassin does).
pub fn load_paths(paths: &[PathBuf]) -> Result<RuleSet, LoadError> {
    let mut sa_files = Vec::new();
    let mut set = RuleSet::default();
    for path in paths {
        if path.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|source| LoadError::Io {
                    path: path.clone(),
                    source,
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "cf" || e == "toml"))
                .collect();
            entries.sort();
            for p in entries {
                if p.extension().is_some_and(|e| e == "toml") {
                    set.merge(load_toml(&p)?);
                } else {
                    sa_files.push(p);
                }
            }
        } else if path.extension().is_some_and(|e| e == "toml") {
            set.merge(load_toml(path)?);
        } else {
            sa_files.push(path.clone());
        }
    }
    if !sa_files.is_empty() {
        let mut texts = Vec::with_capacity(sa_files.len());
        for p in &sa_files {
            let bytes = std::fs::read(p).map_err(|source| LoadError::Io {
                path: p.clone(),
                source,
            })?;
            texts.push((p.display().to_string(), bytes));
        }
        let sa = crate::sa::parse_files(&texts);
        set.merge(sa);
    }
    Ok(set)
}

fn load_toml(path: &Path) -> Result<RuleSet, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_toml(&text, &path.display().to_string()).map_err(|message| LoadError::Syntax {
        path: path.to_path_buf(),
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_rules_parse_with_their_lines() {
        let text = r#"
[[rule]]
name = "SUBJ_FREE"
class = "header"
header = "Subject"
pattern = '\bfree\b'
flags = "i"
score = 2.5
describe = "Subject says free"

[[rule]]
name = "BOTH"
class = "meta"
expression = "SUBJ_FREE && __X"
score = 1.0
verdict = "phishing"
"#;
        let set = parse_toml(text, "local.toml").expect("parses");
        assert_eq!(set.rules.len(), 2);
        assert_eq!(set.rules[0].origin.line, 3);
        assert_eq!(set.rules[0].scores, [2.5; 4]);
        match &set.rules[0].test {
            Test::Regex {
                class,
                header,
                pattern,
                negate,
            } => {
                assert_eq!(*class, Class::Header);
                assert_eq!(header.as_ref().map(|h| h.name.as_str()), Some("Subject"));
                assert!(pattern.caseless);
                assert!(!negate);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(set.rules[1].verdict, Some(VerdictClass::Phishing));
    }

    #[test]
    fn toml_errors_name_the_rule_and_line() {
        let text = "[[rule]]\nname = \"X\"\nclass = \"bogus\"\npattern = \"a\"\n";
        let e = parse_toml(text, "f.toml").expect_err("bad class");
        assert!(e.contains("f.toml:2: rule X: unknown class"), "{e}");
        let e = parse_toml("[[rule]]\nname = \"Y\"\nclass = \"body\"\n", "f.toml").expect_err("x");
        assert!(e.contains("needs pattern"), "{e}");
    }

    #[test]
    fn extended_patterns_lose_space_and_comments() {
        let p = Pattern::with_flags("a b # comment\n [ x] \\ c", "x").expect("ok");
        assert_eq!(p.source, "ab[ x]\\ c");
    }
}
