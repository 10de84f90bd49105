//! Filtering policy: what each verdict class does (globally and per domain), and the
//! ordered policy rules that can decide otherwise.
//!
//! Two forms of each: the archived one the engine reads (scores in thousandths, actions
//! as an enum, patterns lower case and sorted) and the one people write ([`VerdictSpec`],
//! [`RuleSpec`]: JSON through the control API, TOML through the CLI), converted by
//! [`VerdictSpec::compile`] and [`RuleSpec::compile`], which name the field at fault.

use rkyv::{Archive, Deserialize, Serialize};

/// What happens to a message, mildest first (the strongest applicable action wins).
#[derive(
    Archive,
    Serialize,
    Deserialize,
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
)]
pub enum FilterAction {
    #[default]
    Deliver,
    Tag,
    /// Deliver with the infected (or over-limit) attachments replaced by a notice.
    Strip,
    Quarantine,
    Reject,
}

impl FilterAction {
    pub const NAMES: &'static str = "\"deliver\", \"tag\", \"strip\", \"quarantine\" or \"reject\"";

    pub fn parse(s: &str) -> Option<FilterAction> {
        match s {
            "deliver" => Some(FilterAction::Deliver),
            "tag" => Some(FilterAction::Tag),
            "strip" => Some(FilterAction::Strip),
            "quarantine" => Some(FilterAction::Quarantine),
            "reject" => Some(FilterAction::Reject),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FilterAction::Deliver => "deliver",
            FilterAction::Tag => "tag",
            FilterAction::Strip => "strip",
            FilterAction::Quarantine => "quarantine",
            FilterAction::Reject => "reject",
        }
    }
}

impl ArchivedFilterAction {
    pub fn to_native(&self) -> FilterAction {
        match self {
            ArchivedFilterAction::Deliver => FilterAction::Deliver,
            ArchivedFilterAction::Tag => FilterAction::Tag,
            ArchivedFilterAction::Strip => FilterAction::Strip,
            ArchivedFilterAction::Quarantine => FilterAction::Quarantine,
            ArchivedFilterAction::Reject => FilterAction::Reject,
        }
    }
}

/// What a message gets when an external antivirus engine (clamd) cannot answer.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanFailure {
    /// Deferred with `451 4.7.0` (fail closed).
    Tempfail,
    /// Delivered with `X-Bulwark-Virus: unchecked` (fail open).
    Tag,
}

impl ScanFailure {
    pub const NAMES: &'static str = "\"tempfail\" or \"tag\"";

    pub fn parse(s: &str) -> Option<ScanFailure> {
        match s {
            "tempfail" => Some(ScanFailure::Tempfail),
            "tag" => Some(ScanFailure::Tag),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ScanFailure::Tempfail => "tempfail",
            ScanFailure::Tag => "tag",
        }
    }
}

impl ArchivedScanFailure {
    pub fn to_native(&self) -> ScanFailure {
        match self {
            ArchivedScanFailure::Tempfail => ScanFailure::Tempfail,
            ArchivedScanFailure::Tag => ScanFailure::Tag,
        }
    }
}

/// The verdict classes a policy rule can test for.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VerdictClass {
    /// No class applied.
    Clean,
    /// Score at or above the tag threshold, below the spam threshold.
    Suspect,
    /// Score at or above the spam threshold.
    Spam,
    Phishing,
    /// DMARC failed for a domain publishing `p=reject` or `p=quarantine`.
    AuthFail,
    /// Past a structural limit.
    Malformed,
    /// A virus found.
    Virus,
    /// An attachment past a limit of the archive walk.
    Limit,
}

impl VerdictClass {
    pub const NAMES: &'static str = "\"clean\", \"suspect\", \"spam\", \"phishing\", \"authfail\", \"malformed\", \"virus\" or \"limit\"";

    pub fn parse(s: &str) -> Option<VerdictClass> {
        match s {
            "clean" => Some(VerdictClass::Clean),
            "suspect" => Some(VerdictClass::Suspect),
            "spam" => Some(VerdictClass::Spam),
            "phishing" => Some(VerdictClass::Phishing),
            "authfail" => Some(VerdictClass::AuthFail),
            "malformed" => Some(VerdictClass::Malformed),
            "virus" => Some(VerdictClass::Virus),
            "limit" => Some(VerdictClass::Limit),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            VerdictClass::Clean => "clean",
            VerdictClass::Suspect => "suspect",
            VerdictClass::Spam => "spam",
            VerdictClass::Phishing => "phishing",
            VerdictClass::AuthFail => "authfail",
            VerdictClass::Malformed => "malformed",
            VerdictClass::Virus => "virus",
            VerdictClass::Limit => "limit",
        }
    }

    /// The class's bit in a set of classes.
    pub fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl ArchivedVerdictClass {
    pub fn to_native(&self) -> VerdictClass {
        match self {
            ArchivedVerdictClass::Clean => VerdictClass::Clean,
            ArchivedVerdictClass::Suspect => VerdictClass::Suspect,
            ArchivedVerdictClass::Spam => VerdictClass::Spam,
            ArchivedVerdictClass::Phishing => VerdictClass::Phishing,
            ArchivedVerdictClass::AuthFail => VerdictClass::AuthFail,
            ArchivedVerdictClass::Malformed => VerdictClass::Malformed,
            ArchivedVerdictClass::Virus => VerdictClass::Virus,
            ArchivedVerdictClass::Limit => VerdictClass::Limit,
        }
    }
}

/// Thresholds and actions; each `None` inherits (a domain's from the global policy, the
/// global policy's from the engine's `[inspection]`). Scores in thousandths.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct VerdictPolicy {
    pub tag_threshold: Option<i64>,
    pub spam_threshold: Option<i64>,
    pub spam_action: Option<FilterAction>,
    pub phishing_action: Option<FilterAction>,
    pub malformed_action: Option<FilterAction>,
    pub dmarc_reject_action: Option<FilterAction>,
    pub dmarc_quarantine_action: Option<FilterAction>,
    pub virus_action: Option<FilterAction>,
    pub limit_action: Option<FilterAction>,
    pub antivirus_on_failure: Option<ScanFailure>,
    pub subject_tag: Option<String>,
}

impl VerdictPolicy {
    pub fn is_empty(&self) -> bool {
        *self == VerdictPolicy::default()
    }
}

impl ArchivedVerdictPolicy {
    pub fn to_native(&self) -> VerdictPolicy {
        let action = |a: Option<&ArchivedFilterAction>| a.map(|a| a.to_native());
        VerdictPolicy {
            tag_threshold: self.tag_threshold.as_ref().map(|v| v.to_native()),
            spam_threshold: self.spam_threshold.as_ref().map(|v| v.to_native()),
            spam_action: action(self.spam_action.as_ref()),
            phishing_action: action(self.phishing_action.as_ref()),
            malformed_action: action(self.malformed_action.as_ref()),
            dmarc_reject_action: action(self.dmarc_reject_action.as_ref()),
            dmarc_quarantine_action: action(self.dmarc_quarantine_action.as_ref()),
            virus_action: action(self.virus_action.as_ref()),
            limit_action: action(self.limit_action.as_ref()),
            antivirus_on_failure: self.antivirus_on_failure.as_ref().map(|f| f.to_native()),
            subject_tag: self.subject_tag.as_ref().map(|t| t.as_str().to_string()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.tag_threshold.is_none()
            && self.spam_threshold.is_none()
            && self.spam_action.is_none()
            && self.phishing_action.is_none()
            && self.malformed_action.is_none()
            && self.dmarc_reject_action.is_none()
            && self.dmarc_quarantine_action.is_none()
            && self.virus_action.is_none()
            && self.limit_action.is_none()
            && self.antivirus_on_failure.is_none()
            && self.subject_tag.is_none()
    }
}

/// A policy rule: when every condition holds, `action` is what happens to the message,
/// whatever the verdict classes chose. Rules are tried in order; the first that holds
/// decides. An empty condition always holds.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicyRule {
    pub name: String,
    /// Sender patterns (`user@domain`, `domain`, `*.domain`), lower case, sorted; any.
    pub senders: Vec<String>,
    /// Recipient patterns, the same forms; any.
    pub recipients: Vec<String>,
    /// A header field name (lower case); with `contains` empty, the field must exist.
    pub header: String,
    /// Lower-case substrings, one of which the field's value must contain.
    pub contains: Vec<String>,
    /// Message size bounds in octets (0: none).
    pub min_size: u64,
    pub max_size: u64,
    /// Score bounds in thousandths (`min` inclusive, `max` exclusive).
    pub min_score: Option<i64>,
    pub max_score: Option<i64>,
    /// Any of these classes (empty: any).
    pub verdicts: Vec<VerdictClass>,
    /// Conditions one attachment must meet together (see [`AttachmentRule`]).
    pub attachment: AttachmentRule,
    /// An archive could not be read (RAR, a corrupt one).
    pub unscannable: bool,
    pub action: FilterAction,
}

/// The true types (and groups of them) an attachment condition may name: what
/// `bulwark_inspect::attach::TrueType::kinds` gives.
pub const ATTACHMENT_TYPES: &[&str] = &[
    "pe",
    "elf",
    "macho",
    "script",
    "ole_macro",
    "ole",
    "ooxml_macro",
    "ooxml",
    "pdf_javascript",
    "pdf",
    "html",
    "zip",
    "gzip",
    "tar",
    "bzip2",
    "xz",
    "7z",
    "rar",
    "image",
    "other",
    // Groups.
    "executable",
    "macro",
    "archive",
    "document",
];

/// What a rule asks of one attachment (a part with a file name or of a non-text type,
/// or a member of an archive); every condition set must hold for the same attachment.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct AttachmentRule {
    /// True types or groups ([`ATTACHMENT_TYPES`]); any.
    pub types: Vec<String>,
    /// File name extensions, lower case without the dot; any.
    pub extensions: Vec<String>,
    /// File name patterns (`*` any run, `?` one character), lower case; any.
    pub names: Vec<String>,
    /// Decoded size bounds in octets (0: none; `max` inclusive).
    pub min_size: u64,
    pub max_size: u64,
    /// A program's extension behind a document's (`invoice.pdf.exe`).
    pub double_extension: bool,
    /// Encrypted (a password-protected archive or member).
    pub encrypted: bool,
}

impl AttachmentRule {
    pub fn is_empty(&self) -> bool {
        *self == AttachmentRule::default()
    }
}

/// One attachment as a rule sees it.
#[derive(Debug, Clone, Copy)]
pub struct AttachmentFacts<'a> {
    /// The file name, if it has one.
    pub name: Option<&'a str>,
    /// Its true type and the groups it belongs to ([`ATTACHMENT_TYPES`]).
    pub kinds: &'a [&'static str],
    /// The name's last extension, lower case.
    pub extension: Option<&'a str>,
    pub double_extension: bool,
    pub size: u64,
    pub encrypted: bool,
}

impl ArchivedAttachmentRule {
    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
            && self.extensions.is_empty()
            && self.names.is_empty()
            && self.min_size == 0
            && self.max_size == 0
            && !self.double_extension
            && !self.encrypted
    }

    /// Whether `a` meets every condition.
    pub fn matches(&self, a: &AttachmentFacts<'_>) -> bool {
        let (min, max) = (self.min_size.to_native(), self.max_size.to_native());
        (self.types.is_empty() || self.types.iter().any(|t| a.kinds.contains(&t.as_str())))
            && (self.extensions.is_empty()
                || a.extension
                    .is_some_and(|e| self.extensions.iter().any(|x| x.as_str() == e)))
            && (self.names.is_empty()
                || a.name.is_some_and(|n| {
                    let n = n.to_lowercase();
                    self.names.iter().any(|p| glob(p.as_bytes(), n.as_bytes()))
                }))
            && (min == 0 || a.size >= min)
            && (max == 0 || a.size <= max)
            && (!self.double_extension || a.double_extension)
            && (!self.encrypted || a.encrypted)
    }
}

/// `*` (any run of characters, `/` included) and `?` (one octet) against `s`, in linear
/// time (backtracking only to the last `*`).
pub fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

impl ArchivedPolicyRule {
    /// Whether the rule names recipients (and so may apply to some recipients of a
    /// message and not others).
    pub fn has_recipients(&self) -> bool {
        !self.recipients.is_empty()
    }

    pub fn sender_matches(&self, sender: &str) -> bool {
        self.senders.is_empty() || crate::schema::pattern_matches(&self.senders, sender)
    }

    pub fn recipient_matches(&self, rcpt: &str) -> bool {
        self.recipients.is_empty() || crate::schema::pattern_matches(&self.recipients, rcpt)
    }

    /// The conditions on what inspection found: size, score, classes (a set of
    /// [`VerdictClass::bit`]s). The size is known to lie in `size` (inclusive; a message
    /// still arriving has only bounds): a size condition holds only when it holds for
    /// every size in the range.
    pub fn result_matches(&self, size: (u64, u64), score: f64, classes: u8) -> bool {
        let min_size = self.min_size.to_native();
        let max_size = self.max_size.to_native();
        if (min_size > 0 && size.0 < min_size) || (max_size > 0 && size.1 > max_size) {
            return false;
        }
        let milli = (score * 1000.0).round() as i64;
        if let Some(min) = self.min_score.as_ref()
            && milli < min.to_native()
        {
            return false;
        }
        if let Some(max) = self.max_score.as_ref()
            && milli >= max.to_native()
        {
            return false;
        }
        self.verdicts.is_empty()
            || self
                .verdicts
                .iter()
                .any(|v| classes & v.to_native().bit() != 0)
    }
}

/// A [`VerdictPolicy`] as people write it: scores as numbers, actions by name; a missing
/// (or null) field inherits.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct VerdictSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag_threshold: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spam_threshold: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spam_action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phishing_action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub malformed_action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dmarc_reject_action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dmarc_quarantine_action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virus_action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub antivirus_on_failure: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_tag: Option<String>,
}

/// A field that does not hold what it should.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The field's name (for rules, `rules[N].field`).
    pub field: String,
    pub message: String,
}

fn field_error(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// A score as thousandths, refusing what is not a finite number of sensible size.
pub fn score_milli(field: &str, v: f64) -> Result<i64, FieldError> {
    if !v.is_finite() || v.abs() > 1.0e9 {
        return Err(field_error(field, format!("{v} is not a usable score")));
    }
    Ok((v * 1000.0).round() as i64)
}

pub fn parse_action(field: &str, s: &str) -> Result<FilterAction, FieldError> {
    FilterAction::parse(s).ok_or_else(|| {
        field_error(
            field,
            format!("{s:?} is not an action (use {})", FilterAction::NAMES),
        )
    })
}

impl VerdictSpec {
    pub fn compile(&self) -> Result<VerdictPolicy, FieldError> {
        let action = |field: &str, v: &Option<String>| {
            v.as_deref().map(|s| parse_action(field, s)).transpose()
        };
        let p = VerdictPolicy {
            tag_threshold: self
                .tag_threshold
                .map(|v| score_milli("tag_threshold", v))
                .transpose()?,
            spam_threshold: self
                .spam_threshold
                .map(|v| score_milli("spam_threshold", v))
                .transpose()?,
            spam_action: action("spam_action", &self.spam_action)?,
            phishing_action: action("phishing_action", &self.phishing_action)?,
            malformed_action: action("malformed_action", &self.malformed_action)?,
            dmarc_reject_action: action("dmarc_reject_action", &self.dmarc_reject_action)?,
            dmarc_quarantine_action: action(
                "dmarc_quarantine_action",
                &self.dmarc_quarantine_action,
            )?,
            virus_action: action("virus_action", &self.virus_action)?,
            limit_action: action("limit_action", &self.limit_action)?,
            antivirus_on_failure: self
                .antivirus_on_failure
                .as_deref()
                .map(|f| {
                    ScanFailure::parse(f).ok_or_else(|| {
                        field_error(
                            "antivirus_on_failure",
                            format!("{f:?} must be {}", ScanFailure::NAMES),
                        )
                    })
                })
                .transpose()?,
            subject_tag: self.subject_tag.clone(),
        };
        if let Some(tag) = &p.subject_tag
            && (tag.len() > 200 || tag.contains(['\r', '\n']))
        {
            return Err(field_error(
                "subject_tag",
                "must be one line of at most 200 octets",
            ));
        }
        if let (Some(t), Some(s)) = (p.tag_threshold, p.spam_threshold)
            && s < t
        {
            return Err(field_error(
                "spam_threshold",
                format!(
                    "{} is below tag_threshold ({})",
                    s as f64 / 1000.0,
                    t as f64 / 1000.0
                ),
            ));
        }
        Ok(p)
    }

    /// The spec a policy was compiled from (scores back as numbers).
    pub fn of(p: &VerdictPolicy) -> VerdictSpec {
        let name = |a: Option<FilterAction>| a.map(|a| a.as_str().to_string());
        VerdictSpec {
            tag_threshold: p.tag_threshold.map(|v| v as f64 / 1000.0),
            spam_threshold: p.spam_threshold.map(|v| v as f64 / 1000.0),
            spam_action: name(p.spam_action),
            phishing_action: name(p.phishing_action),
            malformed_action: name(p.malformed_action),
            dmarc_reject_action: name(p.dmarc_reject_action),
            dmarc_quarantine_action: name(p.dmarc_quarantine_action),
            virus_action: name(p.virus_action),
            limit_action: name(p.limit_action),
            antivirus_on_failure: p.antivirus_on_failure.map(|f| f.as_str().to_string()),
            subject_tag: p.subject_tag.clone(),
        }
    }
}

/// A [`PolicyRule`] as people write it.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub senders: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contains: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_score: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_score: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verdicts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachment_types: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachment_extensions: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachment_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment_min_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment_max_size: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub double_extension: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub encrypted: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unscannable: bool,
    pub action: String,
}

/// Lower-cased entries of `list`, each checked by `check`, sorted and deduplicated.
fn lowered(
    field: &str,
    list: &[String],
    check: impl Fn(&str) -> Result<(), String>,
) -> Result<Vec<String>, FieldError> {
    let mut out = Vec::with_capacity(list.len());
    for (i, x) in list.iter().enumerate() {
        let x = x.trim().to_lowercase();
        check(&x).map_err(|m| field_error(format!("{field}[{i}]"), m))?;
        out.push(x);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn patterns(field: &str, list: &[String]) -> Result<Vec<String>, FieldError> {
    let mut out = Vec::with_capacity(list.len());
    for (i, p) in list.iter().enumerate() {
        let p = p.trim().to_ascii_lowercase();
        crate::address::check_sender_pattern(&p)
            .map_err(|m| field_error(format!("{field}[{i}]"), m))?;
        out.push(p);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

impl RuleSpec {
    pub fn compile(&self) -> Result<PolicyRule, FieldError> {
        let name = self.name.trim();
        if name.is_empty()
            || name.len() > 100
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        {
            return Err(field_error(
                "name",
                format!(
                    "{:?} must be 1 to 100 letters, digits, '-', '_', '.' or ':'",
                    self.name
                ),
            ));
        }
        let header = self.header.as_deref().unwrap_or("").trim();
        if !header.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            return Err(field_error(
                "header",
                format!("{header:?} is not a header field name"),
            ));
        }
        if header.is_empty() && !self.contains.is_empty() {
            return Err(field_error("contains", "needs `header`"));
        }
        let mut contains = Vec::with_capacity(self.contains.len());
        for (i, c) in self.contains.iter().enumerate() {
            if c.is_empty() || c.contains(['\r', '\n']) {
                return Err(field_error(
                    format!("contains[{i}]"),
                    "must be non-empty text on one line",
                ));
            }
            contains.push(c.to_lowercase());
        }
        let mut verdicts = Vec::with_capacity(self.verdicts.len());
        for (i, v) in self.verdicts.iter().enumerate() {
            let class = VerdictClass::parse(v).ok_or_else(|| {
                field_error(
                    format!("verdicts[{i}]"),
                    format!("{v:?} is not a verdict (use {})", VerdictClass::NAMES),
                )
            })?;
            if !verdicts.contains(&class) {
                verdicts.push(class);
            }
        }
        let (min_size, max_size) = (self.min_size.unwrap_or(0), self.max_size.unwrap_or(0));
        if max_size > 0 && min_size > max_size {
            return Err(field_error(
                "max_size",
                format!("{max_size} is below min_size ({min_size})"),
            ));
        }
        let min_score = self
            .min_score
            .map(|v| score_milli("min_score", v))
            .transpose()?;
        let max_score = self
            .max_score
            .map(|v| score_milli("max_score", v))
            .transpose()?;
        if let (Some(lo), Some(hi)) = (min_score, max_score)
            && hi <= lo
        {
            return Err(field_error("max_score", "must be above min_score"));
        }
        let extensions: Vec<String> = self
            .attachment_extensions
            .iter()
            .map(|e| e.trim().trim_start_matches('.').to_string())
            .collect();
        let attachment = AttachmentRule {
            types: lowered("attachment_types", &self.attachment_types, |t| {
                if ATTACHMENT_TYPES.contains(&t) {
                    Ok(())
                } else {
                    Err(format!(
                        "{t:?} is not a type (use {})",
                        ATTACHMENT_TYPES.join(", ")
                    ))
                }
            })?,
            extensions: lowered("attachment_extensions", &extensions, |e| {
                if e.is_empty()
                    || e.len() > 20
                    || !e.chars().all(|c| c.is_alphanumeric() || "-_~".contains(c))
                {
                    Err(format!("{e:?} is not an extension (like \"exe\", no dot)"))
                } else {
                    Ok(())
                }
            })?,
            names: lowered("attachment_names", &self.attachment_names, |n| {
                if n.is_empty() || n.len() > 200 || n.chars().any(char::is_control) {
                    Err("must be a file name pattern of 1 to 200 characters".into())
                } else {
                    Ok(())
                }
            })?,
            min_size: self.attachment_min_size.unwrap_or(0),
            max_size: self.attachment_max_size.unwrap_or(0),
            double_extension: self.double_extension,
            encrypted: self.encrypted,
        };
        if attachment.max_size > 0 && attachment.min_size > attachment.max_size {
            return Err(field_error(
                "attachment_max_size",
                format!(
                    "{} is below attachment_min_size ({})",
                    attachment.max_size, attachment.min_size
                ),
            ));
        }
        Ok(PolicyRule {
            name: name.to_string(),
            senders: patterns("senders", &self.senders)?,
            recipients: patterns("recipients", &self.recipients)?,
            header: header.to_ascii_lowercase(),
            contains,
            min_size,
            max_size,
            min_score,
            max_score,
            verdicts,
            attachment,
            unscannable: self.unscannable,
            action: parse_action("action", &self.action)?,
        })
    }

    pub fn of(r: &PolicyRule) -> RuleSpec {
        RuleSpec {
            name: r.name.clone(),
            senders: r.senders.clone(),
            recipients: r.recipients.clone(),
            header: (!r.header.is_empty()).then(|| r.header.clone()),
            contains: r.contains.clone(),
            min_size: (r.min_size > 0).then_some(r.min_size),
            max_size: (r.max_size > 0).then_some(r.max_size),
            min_score: r.min_score.map(|v| v as f64 / 1000.0),
            max_score: r.max_score.map(|v| v as f64 / 1000.0),
            verdicts: r.verdicts.iter().map(|v| v.as_str().to_string()).collect(),
            attachment_types: r.attachment.types.clone(),
            attachment_extensions: r.attachment.extensions.clone(),
            attachment_names: r.attachment.names.clone(),
            attachment_min_size: (r.attachment.min_size > 0).then_some(r.attachment.min_size),
            attachment_max_size: (r.attachment.max_size > 0).then_some(r.attachment.max_size),
            double_extension: r.attachment.double_extension,
            encrypted: r.attachment.encrypted,
            unscannable: r.unscannable,
            action: r.action.as_str().to_string(),
        }
    }
}

/// Compiles an ordered list of rules; names must be unique. Errors name `rules[N].field`.
pub fn compile_rules(specs: &[RuleSpec]) -> Result<Vec<PolicyRule>, FieldError> {
    let mut out: Vec<PolicyRule> = Vec::with_capacity(specs.len());
    for (i, s) in specs.iter().enumerate() {
        let r = s.compile().map_err(|e| FieldError {
            field: format!("rules[{i}].{}", e.field),
            message: e.message,
        })?;
        if out.iter().any(|o| o.name == r.name) {
            return Err(field_error(
                format!("rules[{i}].name"),
                format!("{:?} is used by an earlier rule", r.name),
            ));
        }
        out.push(r);
    }
    Ok(out)
}

/// Whether a header field called `name` in `content`'s header section has a value
/// (unfolded, compared in lower case) containing one of `needles`; with no needles,
/// whether the field exists.
pub fn header_contains<S: AsRef<str>>(content: &[u8], name: &str, needles: &[S]) -> bool {
    let mut rest = content;
    let mut found = false;
    while !rest.is_empty() {
        let end = memchr_nl(rest).map_or(rest.len(), |i| i + 1);
        let line = &rest[..end];
        rest = &rest[end..];
        let bare = trim_eol(line);
        if bare.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            continue;
        }
        let Some(colon) = bare.iter().position(|&b| b == b':') else {
            continue;
        };
        if !bare[..colon]
            .trim_ascii()
            .eq_ignore_ascii_case(name.as_bytes())
        {
            continue;
        }
        found = true;
        if needles.is_empty() {
            return true;
        }
        // The value with its continuation lines.
        let mut value = bare[colon + 1..].to_vec();
        let mut more = rest;
        while let Some(&first) = more.first() {
            if first != b' ' && first != b'\t' {
                break;
            }
            let e = memchr_nl(more).map_or(more.len(), |i| i + 1);
            value.extend_from_slice(trim_eol(&more[..e]));
            more = &more[e..];
        }
        let value = String::from_utf8_lossy(&value).to_lowercase();
        if needles.iter().any(|n| value.contains(n.as_ref())) {
            return true;
        }
    }
    found && needles.is_empty()
}

fn memchr_nl(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'\n')
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_spec_round_trips_and_names_bad_fields() {
        let spec: VerdictSpec =
            serde_json::from_str(r#"{"spam_threshold": 8.5, "spam_action": "quarantine", "antivirus_on_failure": "tag"}"#)
                .unwrap();
        let p = spec.compile().unwrap();
        assert_eq!(p.spam_threshold, Some(8500));
        assert_eq!(p.antivirus_on_failure, Some(ScanFailure::Tag));
        assert_eq!(p.spam_action, Some(FilterAction::Quarantine));
        assert_eq!(VerdictSpec::of(&p), spec);
        let bad = VerdictSpec {
            phishing_action: Some("bounce".into()),
            ..Default::default()
        };
        assert_eq!(bad.compile().unwrap_err().field, "phishing_action");
        let bad = VerdictSpec {
            antivirus_on_failure: Some("open".into()),
            ..Default::default()
        };
        assert_eq!(bad.compile().unwrap_err().field, "antivirus_on_failure");
        let inverted = VerdictSpec {
            tag_threshold: Some(9.0),
            spam_threshold: Some(4.0),
            ..Default::default()
        };
        assert_eq!(inverted.compile().unwrap_err().field, "spam_threshold");
        assert!(serde_json::from_str::<VerdictSpec>(r#"{"spam_treshold": 1}"#).is_err());
    }

    #[test]
    fn rules_compile_with_errors_naming_index_and_field() {
        let ok = RuleSpec {
            name: "r1".into(),
            senders: vec!["*.Example.NET".into()],
            verdicts: vec!["spam".into()],
            action: "quarantine".into(),
            ..Default::default()
        };
        let rules = compile_rules(std::slice::from_ref(&ok)).unwrap();
        assert_eq!(rules[0].senders, vec!["*.example.net".to_string()]);
        let mut dup = ok.clone();
        dup.action = "reject".into();
        assert_eq!(
            compile_rules(&[ok.clone(), dup]).unwrap_err().field,
            "rules[1].name"
        );
        let mut bad = ok.clone();
        bad.recipients = vec!["not a pattern".into()];
        assert_eq!(
            compile_rules(&[bad]).unwrap_err().field,
            "rules[0].recipients[0]"
        );
        let mut bad = ok;
        bad.verdicts = vec!["worm".into()];
        assert_eq!(
            compile_rules(&[bad]).unwrap_err().field,
            "rules[0].verdicts[0]"
        );
    }

    #[test]
    fn globs_match_whole_names_with_stars_and_question_marks() {
        assert!(glob(b"*.pdf.*", b"invoice.pdf.exe"));
        assert!(!glob(b"*.pdf.*", b"invoice.pdf"));
        assert!(glob(b"invoice?.zip", b"invoice7.zip"));
        assert!(!glob(b"invoice?.zip", b"invoice77.zip"));
        assert!(glob(b"*", b""));
        assert!(glob(b"a*b*c", b"axxbyyc"));
        assert!(!glob(b"a*b*c", b"axxbyy"));
        // Linear: a long name of near misses is answered at once.
        let name = vec![b'a'; 10_000];
        assert!(!glob(b"*a*a*a*a*a*b", &name));
    }

    #[test]
    fn attachment_conditions_compile_round_trip_and_match_one_attachment() {
        let spec = RuleSpec {
            name: "no-programs".into(),
            attachment_types: vec!["Executable".into()],
            attachment_extensions: vec!["exe".into(), ".SCR".into()],
            attachment_min_size: Some(10),
            action: "reject".into(),
            ..Default::default()
        };
        let rule = spec.compile().unwrap();
        assert_eq!(rule.attachment.types, ["executable"]);
        assert_eq!(rule.attachment.extensions, ["exe", "scr"]);
        assert_eq!(RuleSpec::of(&rule).compile().unwrap(), rule);
        let snap = crate::Snapshot::from_policy(&crate::Policy {
            rules: vec![rule],
            ..Default::default()
        })
        .unwrap();
        let r = &snap.policy().rules[0];
        let exe = AttachmentFacts {
            name: Some("a.exe"),
            kinds: &["pe", "executable"],
            extension: Some("exe"),
            double_extension: false,
            size: 100,
            encrypted: false,
        };
        assert!(r.attachment.matches(&exe));
        // Each condition on the same attachment: a small one, or one named .txt, fails.
        assert!(!r.attachment.matches(&AttachmentFacts { size: 5, ..exe }));
        assert!(!r.attachment.matches(&AttachmentFacts {
            extension: Some("txt"),
            ..exe
        }));
        assert!(!r.attachment.matches(&AttachmentFacts {
            kinds: &["pdf", "document"],
            ..exe
        }));
        for (field, bad) in [
            (
                "attachment_types[0]",
                RuleSpec {
                    attachment_types: vec!["exe".into()],
                    ..spec.clone()
                },
            ),
            (
                "attachment_extensions[0]",
                RuleSpec {
                    attachment_extensions: vec!["a b".into()],
                    ..spec.clone()
                },
            ),
            (
                "attachment_names[0]",
                RuleSpec {
                    attachment_names: vec!["".into()],
                    ..spec.clone()
                },
            ),
            (
                "attachment_max_size",
                RuleSpec {
                    attachment_max_size: Some(5),
                    ..spec.clone()
                },
            ),
        ] {
            assert_eq!(bad.compile().unwrap_err().field, field);
        }
    }

    #[test]
    fn header_conditions_unfold_and_ignore_case() {
        let msg = b"From: a@b.test\r\nSubject: Your\r\n  INVOICE is ready\r\n\r\nSubject: body\r\n";
        assert!(header_contains(msg, "subject", &["invoice is"]));
        assert!(header_contains::<&str>(msg, "subject", &[]));
        assert!(!header_contains(msg, "subject", &["body"]));
        assert!(!header_contains::<&str>(msg, "x-missing", &[]));
    }
}
