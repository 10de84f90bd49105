//! The inspection pipeline as the engine calls it: rules (built-in, then configured)
//! compiled once and cached on disk by content hash, a message scored against them and
//! the classifier, a verdict and an action, and the headers stamped on delivered mail.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::classifier::Model;
use crate::compiled::{CompileError, Compiled, PseudoHeaders, Scanner};
use crate::mime::{self, LimitHit, Limits};
use crate::native;
use crate::rules::{self, RuleSet};

/// Bulwark's built-in rules.
pub const DEFAULT_RULES: &str = include_str!("../rules/default.toml");

/// What happens to a message, mildest first: when several verdict classes apply, the
/// strongest action wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    Deliver,
    /// Deliver with the spam headers set (and the subject tagged, if configured).
    Tag,
    /// Deliver with the infected (or over-limit) attachments replaced by a notice part;
    /// quarantined instead when they cannot be told apart from the message.
    Strip,
    /// Kept in the quarantine store, not delivered until released.
    Quarantine,
    /// `550 5.7.1` in the session.
    Reject,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Deliver => "deliver",
            Action::Tag => "tag",
            Action::Strip => "strip",
            Action::Quarantine => "quarantine",
            Action::Reject => "reject",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "deliver" => Some(Action::Deliver),
            "tag" => Some(Action::Tag),
            "strip" => Some(Action::Strip),
            "quarantine" => Some(Action::Quarantine),
            "reject" => Some(Action::Reject),
            _ => None,
        }
    }
}

/// The verdict class that decided the action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Clean,
    Spam,
    Phishing,
    /// Past a structural limit (parts, nesting, header size).
    Malformed(LimitHit),
    /// DMARC failed for a From domain that publishes `p=reject` or `p=quarantine`.
    AuthFail,
    /// An antivirus engine found a virus.
    Virus,
    /// An attachment exceeded a limit of the archive walk (its label, as in
    /// [`crate::attach::Violation::label`]).
    Limit(&'static str),
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Clean => "clean",
            Verdict::Spam => "spam",
            Verdict::Phishing => "phishing",
            Verdict::Malformed(_) => "malformed",
            Verdict::AuthFail => "authfail",
            Verdict::Virus => "virus",
            Verdict::Limit(_) => "limit",
        }
    }
}

/// Thresholds and actions of the verdict classes.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdicts {
    /// Score from which a message is suspect: tagged and delivered.
    pub tag_threshold: f64,
    /// Score from which a message is spam and gets `spam_action`.
    pub spam_threshold: f64,
    pub spam_action: Action,
    /// Prefix put on the Subject of tagged mail; empty for none.
    pub subject_tag: String,
    pub phishing_action: Action,
    pub malformed_action: Action,
    /// For mail failing DMARC whose From domain publishes `p=reject` / `p=quarantine`.
    pub dmarc_reject_action: Action,
    pub dmarc_quarantine_action: Action,
    /// A virus found by either antivirus engine.
    pub virus_action: Action,
    /// An attachment past a limit of the archive walk (the product refuses such mail).
    pub limit_action: Action,
}

impl Default for Verdicts {
    fn default() -> Self {
        Verdicts {
            tag_threshold: 5.0,
            spam_threshold: 15.0,
            spam_action: Action::Reject,
            subject_tag: String::new(),
            phishing_action: Action::Reject,
            malformed_action: Action::Reject,
            dmarc_reject_action: Action::Reject,
            dmarc_quarantine_action: Action::Quarantine,
            virus_action: Action::Reject,
            limit_action: Action::Reject,
        }
    }
}

/// Limits, default verdicts and what the phishing checks protect.
#[derive(Debug, Clone)]
pub struct Settings {
    pub limits: Limits,
    /// Thresholds and actions unless the envelope brings others (a domain's policy).
    pub verdicts: Verdicts,
    /// Domains the gateway serves: names imitating them are phishing signs.
    pub managed_domains: Vec<String>,
    /// Brands to protect from imitation (`None`: the built-in list).
    pub brands: Option<Vec<String>>,
    /// URL shortener hosts (`None`: the built-in list).
    pub shorteners: Option<Vec<String>>,
    pub url_blocklist: crate::phishing::Blocklist,
    /// Network tests run (sender authentication): SpamAssassin's network score sets apply.
    pub network_tests: bool,
    /// Name in `X-Spam-Status` and `X-Bulwark-Product-Ver`.
    pub product: String,
    /// The built-in antivirus signatures (EICAR at least); `None`: no virus scanning.
    pub antivirus: Option<Arc<crate::av::Antivirus>>,
    /// The archive walk's budget (its deadline is set per message).
    pub attachment_limits: crate::attach::Limits,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            limits: Limits::default(),
            verdicts: Verdicts::default(),
            managed_domains: Vec::new(),
            brands: None,
            shorteners: None,
            url_blocklist: crate::phishing::Blocklist::default(),
            network_tests: false,
            product: format!("Bulwark {}", env!("CARGO_PKG_VERSION")),
            antivirus: None,
            attachment_limits: crate::attach::Limits::default(),
        }
    }
}

/// Which verdict classes applied to a message (several may).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Classes {
    /// Score at or above the tag threshold and below the spam threshold.
    pub suspect: bool,
    pub spam: bool,
    pub phishing: bool,
    pub authfail: bool,
    pub malformed: bool,
    pub virus: bool,
    pub limit: bool,
}

/// What the session knows about a message besides its content.
#[derive(Debug, Clone)]
pub struct Envelope<'a> {
    pub client_ip: IpAddr,
    pub helo: &'a str,
    pub mail_from: &'a str,
    pub hostname: &'a str,
    pub queue_id: &'a str,
    pub arrival: u64,
    /// Sender authentication's results, when it ran.
    pub auth: Option<&'a native::AuthSummary>,
    /// Every recipient has the sender on its approved list: no spam or authentication
    /// verdict (the score is still computed and stamped); phishing and structural limits
    /// still apply.
    pub approved: bool,
    /// Thresholds and actions for this message (its recipients' domain policy); `None`:
    /// the settings' own.
    pub verdicts: Option<&'a Verdicts>,
}

/// A rule that hit, with the score it added.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// The rule's index in the compiled set.
    pub index: usize,
    pub name: String,
    pub score: f64,
}

/// The outcome of inspecting one message.
#[derive(Debug, Clone)]
pub struct Report {
    pub score: f64,
    pub hits: Vec<Hit>,
    pub verdict: Verdict,
    /// Every class that applied (`verdict` is the one whose action was strongest).
    pub classes: Classes,
    /// The thresholds the message was judged by.
    pub tag_threshold: f64,
    pub spam_threshold: f64,
    /// The decoded Subject (at most 256 characters), for logs and the quarantine.
    pub subject: String,
    pub action: Action,
    /// The policy rule that set `action`, when one did (the caller applies rules).
    pub policy_rule: Option<String>,
    pub probability: Option<f64>,
    /// Whether only the start of the message was read (larger than the scan bound).
    pub truncated: bool,
    pub parse_time: Duration,
    pub rules_time: Duration,
    pub pcre_limit: usize,
    /// What the antivirus engines and the attachment walk said, once merged.
    pub malware: MalwareVerdict,
}

/// The attachment and antivirus findings of a message, as stamped and logged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MalwareVerdict {
    /// Whether any antivirus engine looked at the message.
    pub scanned: bool,
    /// The first virus found: its name, where (`2:invoice.zip/a.exe`), and which engine.
    pub virus: Option<(String, String, &'static str)>,
    /// The limit an attachment exceeded, described without its file names.
    pub limit: Option<String>,
    /// An engine that could not answer, when the message was delivered anyway (tagged).
    pub unchecked: Option<String>,
    /// The attachments the walk found (archive members included), for policy rules.
    pub attachments: Vec<Attachment>,
    /// Archives (or members) that could not be read: where, and why.
    pub unscannable: Vec<(String, String)>,
}

/// An attachment (a part with a file name or of a non-text type, or an archive member).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// `2:invoice.zip/a.exe`.
    pub path: String,
    pub name: Option<String>,
    pub true_type: crate::attach::TrueType,
    pub size: u64,
    pub encrypted: bool,
    /// The leaf part it is in (what stripping it removes).
    pub part: usize,
}

/// What the external antivirus engine (clamd) said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum External {
    Clean,
    Virus(String),
    /// It could not answer (the reason).
    Failed(String),
}

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    Load(#[from] rules::LoadError),
    #[error("built-in rules: {0}")]
    Builtin(String),
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error("model {path}: {message}")]
    Model { path: PathBuf, message: String },
}

/// How the rules were obtained at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Compiled,
    Cache,
}

/// Rules and model, shared by every core; each core scans with its own [`Scanner`].
pub struct Inspector {
    pub compiled: Arc<Compiled>,
    pub model: Option<Arc<Model>>,
    pub settings: Settings,
    /// SpamAssassin score set: 0 without a model or network tests, +1 with network tests
    /// (sender authentication), +2 with a model.
    score_set: usize,
    pub origin: Origin,
    phishing: crate::phishing::Phishing,
}

impl std::fmt::Debug for Inspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inspector")
            .field("rules", &self.compiled.rules.len())
            .field("model", &self.model.as_ref().map(|m| m.tokens()))
            .finish()
    }
}

/// The built-in rules followed by the rules at `paths`.
pub fn load_rules(paths: &[PathBuf]) -> Result<RuleSet, InspectError> {
    let mut set = rules::parse_toml(DEFAULT_RULES, "built-in").map_err(InspectError::Builtin)?;
    set.merge(rules::load_paths(paths)?);
    Ok(set)
}

/// A key for a rule set: its parsed content and the engine versions it compiles for.
pub fn content_key(set: &RuleSet) -> String {
    let mut h = Sha256::new();
    h.update(crate::compiled::hyperscan_version().as_bytes());
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update(format!("{:?}", set.rules).as_bytes());
    let d = h.finalize();
    d.iter().take(12).fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Compiles `set`, or loads it from `cache_dir` when compiled before; a fresh compile
/// is written there (a failed write only costs the next start a compile).
pub fn compile_cached(
    set: &RuleSet,
    cache_dir: Option<&Path>,
) -> Result<(Compiled, Origin), InspectError> {
    let key = content_key(set);
    let path = cache_dir.map(|d| d.join(format!("rules-{key}.bwr")));
    if let Some(p) = &path
        && let Ok(bytes) = std::fs::read(p)
        && let Ok(c) = Compiled::from_bytes(&bytes)
    {
        return Ok((c, Origin::Cache));
    }
    let compiled = Compiled::compile(set)?;
    if let (Some(dir), Some(p)) = (cache_dir, &path)
        && std::fs::create_dir_all(dir).is_ok()
    {
        let tmp = p.with_extension("tmp");
        if std::fs::write(&tmp, compiled.to_bytes()).is_ok() {
            let _ = std::fs::rename(&tmp, p);
        }
    }
    Ok((compiled, Origin::Compiled))
}

impl Inspector {
    pub fn new(
        compiled: Compiled,
        model: Option<Model>,
        settings: Settings,
        origin: Origin,
    ) -> Self {
        Self::from_shared(Arc::new(compiled), model.map(Arc::new), settings, origin)
    }

    /// The same, with rules and model another inspector may share.
    pub fn from_shared(
        compiled: Arc<Compiled>,
        model: Option<Arc<Model>>,
        settings: Settings,
        origin: Origin,
    ) -> Self {
        let score_set = if model.is_some() { 2 } else { 0 } + usize::from(settings.network_tests);
        let phishing = crate::phishing::Phishing::new(
            &settings.managed_domains,
            settings.brands.as_deref(),
            settings.shorteners.as_deref(),
            settings.url_blocklist.clone(),
        );
        Inspector {
            compiled,
            model,
            settings,
            score_set,
            origin,
            phishing,
        }
    }

    /// Loads rules (built-in and `paths`, cached in `cache_dir`) and the model at
    /// `model`.
    pub fn load(
        paths: &[PathBuf],
        model: Option<&Path>,
        cache_dir: Option<&Path>,
        settings: Settings,
    ) -> Result<Inspector, InspectError> {
        let set = load_rules(paths)?;
        let (compiled, origin) = compile_cached(&set, cache_dir)?;
        let model = match model {
            Some(p) => {
                let bytes = std::fs::read(p).map_err(|e| InspectError::Model {
                    path: p.to_path_buf(),
                    message: e.to_string(),
                })?;
                Some(Model::from_bytes(&bytes).map_err(|e| InspectError::Model {
                    path: p.to_path_buf(),
                    message: e.to_string(),
                })?)
            }
            None => None,
        };
        Ok(Inspector::new(compiled, model, settings, origin))
    }

    pub fn scanner(&self) -> Result<Scanner, CompileError> {
        Scanner::new(&self.compiled)
    }

    /// Inspects `raw` (the message as it will be delivered, without our own trace
    /// header).
    pub fn inspect(&self, scanner: &mut Scanner, raw: &[u8], env: &Envelope<'_>) -> Report {
        let t0 = Instant::now();
        let views = mime::parse(raw, &self.settings.limits);
        let parse_time = t0.elapsed();
        let t1 = Instant::now();
        let probability = self.model.as_ref().and_then(|m| m.probability(&views));
        let phish = self.phishing.check(&views);
        let ctx = native::Context {
            spam_probability: probability,
            arrival: env.arrival,
            auth: env.auth,
            phish: Some(&phish),
        };
        // The relay that handed us the message, as SpamAssassin describes it; only when
        // it is known (a client address, and its verified name from iprev), since rules
        // such as RDNS_NONE read an empty name as "has no reverse DNS".
        let mut values = vec![("EnvelopeFrom", Cow::Borrowed(env.mail_from))];
        if !env.client_ip.is_unspecified()
            && let Some(a) = env.auth
        {
            let relay = format!(
                "[ ip={} rdns={} helo={} by={} ident= envfrom={} intl=0 id={} auth= msa=0 ]",
                env.client_ip, a.rdns, env.helo, env.hostname, env.mail_from, env.queue_id
            );
            values.push(("X-Spam-Relays-External", Cow::Owned(relay.clone())));
            values.push(("X-Spam-Relays-Untrusted", Cow::Owned(relay)));
        }
        let pseudo = PseudoHeaders { values };
        let hits = scanner.scan(&self.compiled, &views, &pseudo, |call| {
            native::evaluate(call, &views, &ctx)
        });
        let rules_time = t1.elapsed();
        let mut score = 0.0;
        let mut hit_list = Vec::new();
        let mut phishing = false;
        for (i, r) in self.compiled.rules.iter().enumerate() {
            if !hits.hit(i) {
                continue;
            }
            if r.verdict.as_deref() == Some("phishing") {
                phishing = true;
            }
            if r.subrule {
                continue;
            }
            let s = r.scores[self.score_set];
            if s == 0.0 {
                continue;
            }
            score += s;
            hit_list.push(Hit {
                index: i,
                name: r.name.clone(),
                score: s,
            });
        }
        hit_list.sort_by(|a, b| {
            b.score
                .abs()
                .partial_cmp(&a.score.abs())
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        let verdicts = env.verdicts.unwrap_or(&self.settings.verdicts);
        let (verdict, action, classes) = decide(
            verdicts,
            views.limit,
            phishing,
            env.auth.filter(|_| !env.approved),
            if env.approved {
                f64::NEG_INFINITY
            } else {
                score
            },
        );
        Report {
            score,
            hits: hit_list,
            verdict,
            classes,
            tag_threshold: verdicts.tag_threshold,
            spam_threshold: verdicts.spam_threshold,
            subject: views.subject.chars().take(256).collect(),
            action,
            policy_rule: None,
            probability,
            truncated: views.truncated,
            parse_time,
            rules_time,
            pcre_limit: hits.pcre_limit,
            malware: MalwareVerdict::default(),
        }
    }

    /// Merges the attachment walk and antivirus findings into `report`: a virus or a
    /// limit takes its class's action when that is at least as strong as what the
    /// content decided (a virus first, then a limit).
    pub fn apply_malware(
        &self,
        report: &mut Report,
        builtin: Option<&crate::malware::Report>,
        external: Option<&External>,
        verdicts: Option<&Verdicts>,
    ) {
        let v = verdicts.unwrap_or(&self.settings.verdicts);
        let m = &mut report.malware;
        m.scanned =
            builtin.is_some() || matches!(external, Some(External::Clean | External::Virus(_)));
        if let Some(b) = builtin
            && let Some(x) = b.viruses.first()
        {
            m.virus = Some((x.virus.clone(), x.path.clone(), "builtin"));
        }
        if m.virus.is_none()
            && let Some(External::Virus(name)) = external
        {
            m.virus = Some((name.clone(), "message".into(), "clamd"));
        }
        if let Some(External::Failed(why)) = external {
            m.unchecked = Some(format!("clamd: {why}"));
        }
        let limit = builtin.and_then(|b| b.violation.as_ref());
        if let Some(l) = limit {
            m.limit = Some(l.summary());
        }
        if let Some(b) = builtin {
            m.attachments = b
                .objects
                .iter()
                .filter(|o| o.is_attachment())
                .map(|o| Attachment {
                    path: o.path.clone(),
                    name: o.name.clone(),
                    true_type: o.true_type,
                    size: o.size,
                    encrypted: o.encrypted,
                    part: o.part,
                })
                .collect();
            m.unscannable = b.unscannable.clone();
        }
        let mut take = |class: Verdict, action: Action| {
            if report.verdict == Verdict::Clean || action >= report.action {
                report.verdict = class;
                report.action = action;
            }
        };
        if let Some(l) = limit {
            report.classes.limit = true;
            take(Verdict::Limit(l.label()), v.limit_action);
        }
        if report.malware.virus.is_some() {
            report.classes.virus = true;
            take(Verdict::Virus, v.virus_action);
        }
    }

    /// The header fields stamped on a delivered message (each ending CRLF).
    pub fn stamp(&self, report: &Report, out: &mut Vec<u8>) {
        let s = &self.settings;
        // Tagged mail is flagged whatever decided the tag (a policy rule may tag clean mail).
        let spam = report.verdict != Verdict::Clean || report.action == Action::Tag;
        let mut h = String::with_capacity(512);
        let _ = write!(
            h,
            "X-Bulwark-Result: {}--{:.3}-{}-{}\r\n",
            report.verdict.as_str(),
            report.score,
            report.tag_threshold,
            report.spam_threshold
        );
        let detail: Vec<String> = report
            .hits
            .iter()
            .map(|x| format!("{}={}", x.name, trim_float(x.score)))
            .collect();
        fold_into(&mut h, "X-Bulwark-Result-Detail:", &detail, ",");
        if let Some(rule) = &report.policy_rule {
            let _ = write!(h, "X-Bulwark-Policy-Rule: {rule}\r\n");
        }
        let m = &report.malware;
        if let Some(v) = virus_header(m) {
            h.push_str(&v);
        }
        if let Some(limit) = &m.limit {
            let _ = write!(
                h,
                "X-Bulwark-Attachment-Limit: {}\r\n",
                header_safe(limit, 200)
            );
        }
        // What could not be looked into, so that the reader knows the verdict did not
        // cover it: unreadable archives, and encrypted ones.
        let unscanned: Vec<String> = m
            .unscannable
            .iter()
            .map(|(path, why)| (path.as_str(), why.as_str()))
            .chain(
                m.attachments
                    .iter()
                    .filter(|a| a.encrypted)
                    .map(|a| (a.path.as_str(), "encrypted")),
            )
            .take(10)
            .map(|(path, why)| format!("{} ({})", header_safe(path, 100), header_safe(why, 60)))
            .collect();
        if !unscanned.is_empty() {
            fold_into(&mut h, "X-Bulwark-Unscannable:", &unscanned, ";");
        }
        let _ = write!(h, "X-Bulwark-Product-Ver: {}\r\n", s.product);
        let _ = write!(h, "X-Spam-Flag: {}\r\n", if spam { "YES" } else { "NO" });
        let names: Vec<String> = {
            let mut n: Vec<String> = report.hits.iter().map(|x| x.name.clone()).collect();
            n.sort();
            n
        };
        let tests = if names.is_empty() {
            "none".to_string()
        } else {
            names.join(",")
        };
        let status = format!(
            "{}, score={:.1} required={:.1} tests={} autolearn=no version={}",
            if spam { "Yes" } else { "No" },
            report.score,
            report.tag_threshold,
            tests,
            s.product
        );
        let words: Vec<String> = status.split(' ').map(str::to_string).collect();
        fold_into(&mut h, "X-Spam-Status:", &words, "");
        out.extend_from_slice(h.as_bytes());
    }
}

/// The verdict classes that apply, and of them the one with the strongest action (on a
/// tie, the first of: malformed, phishing, authentication, spam).
fn decide(
    v: &Verdicts,
    limit: Option<LimitHit>,
    phishing: bool,
    auth: Option<&native::AuthSummary>,
    score: f64,
) -> (Verdict, Action, Classes) {
    use native::{AuthResult, DmarcPolicy};
    let mut classes = Classes::default();
    let mut best = (Verdict::Clean, Action::Deliver);
    let mut consider = |f: (Verdict, Action)| {
        if best.0 == Verdict::Clean || f.1 > best.1 {
            best = f;
        }
    };
    if let Some(limit) = limit {
        classes.malformed = true;
        consider((Verdict::Malformed(limit), v.malformed_action));
    }
    if phishing {
        classes.phishing = true;
        consider((Verdict::Phishing, v.phishing_action));
    }
    if let Some(a) = auth
        && a.dmarc == AuthResult::Fail
    {
        let action = match a.dmarc_policy {
            Some(DmarcPolicy::Reject) => Some(v.dmarc_reject_action),
            Some(DmarcPolicy::Quarantine) => Some(v.dmarc_quarantine_action),
            _ => None,
        };
        if let Some(action) = action {
            classes.authfail = true;
            consider((Verdict::AuthFail, action));
        }
    }
    if score >= v.spam_threshold {
        classes.spam = true;
        consider((Verdict::Spam, v.spam_action));
    } else if score >= v.tag_threshold {
        classes.suspect = true;
        consider((Verdict::Spam, Action::Tag));
    }
    (best.0, best.1, classes)
}

/// The `X-Bulwark-Virus` field (with its CRLF) for these findings, if any engine ran.
pub fn virus_header(m: &MalwareVerdict) -> Option<String> {
    if let Some((name, path, engine)) = &m.virus {
        Some(format!(
            "X-Bulwark-Virus: infected; name={}; engine={engine}; in={}\r\n",
            header_safe(name, 100),
            header_safe(path, 200)
        ))
    } else if let Some(why) = &m.unchecked {
        Some(format!(
            "X-Bulwark-Virus: unchecked; {}\r\n",
            header_safe(why, 200)
        ))
    } else if m.scanned {
        Some("X-Bulwark-Virus: clean\r\n".to_string())
    } else {
        None
    }
}

/// `s` as one header line: printable ASCII only (others become `?`), at most `max`
/// characters.
fn header_safe(s: &str, max: usize) -> String {
    s.chars()
        .take(max)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

fn trim_float(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

/// Writes `name` and `items` (joined by `sep` and a space) folded before 78 columns.
fn fold_into(out: &mut String, name: &str, items: &[String], sep: &str) {
    out.push_str(name);
    let mut col = name.len();
    if items.is_empty() {
        out.push_str(" none\r\n");
        return;
    }
    for (i, item) in items.iter().enumerate() {
        let piece = if i + 1 < items.len() {
            format!("{item}{sep}")
        } else {
            item.clone()
        };
        if col + 1 + piece.len() > 78 && col > name.len() {
            out.push_str("\r\n\t");
            col = 8;
        } else {
            out.push(' ');
            col += 1;
        }
        out.push_str(&piece);
        col += piece.len();
    }
    out.push_str("\r\n");
}

/// Whether a header field name is one Bulwark stamps (inbound copies are removed).
pub fn is_stamped_name(name: &[u8]) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with(b"x-bulwark-") || lower == b"x-spam-flag" || lower == b"x-spam-status"
}

/// Whether an `Authentication-Results` value claims to come from `authserv_id` (RFC 8601
/// §5: such fields from outside are forgeries and are removed).
pub fn claims_authserv_id(value: &[u8], authserv_id: &str) -> bool {
    let end = memchr::memchr(b';', value).unwrap_or(value.len());
    // The id, possibly followed by a version number, and comments are allowed.
    let mut id = value[..end].trim_ascii();
    if let Some(p) = id
        .iter()
        .position(|b| b.is_ascii_whitespace() || *b == b'(')
    {
        id = &id[..p];
    }
    !authserv_id.is_empty() && id.eq_ignore_ascii_case(authserv_id.as_bytes())
}

/// Byte ranges (whole fields with their folded lines and CRLF) of the top-level header
/// fields that Bulwark stamps (including `Authentication-Results` claiming
/// `authserv_id`), and of `Subject` when `subject` is set; removing them gives the body
/// to deliver after our own fields.
pub fn field_ranges(raw: &[u8], subject: bool, authserv_id: &str) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < raw.len() {
        if raw[i..].starts_with(b"\r\n") || raw[i] == b'\n' {
            break;
        }
        // One field: up to a line end not followed by white space.
        let start = i;
        let mut end = i;
        loop {
            match memchr::memchr(b'\n', &raw[end..]) {
                Some(p) => {
                    end += p + 1;
                    if end < raw.len() && (raw[end] == b' ' || raw[end] == b'\t') {
                        continue;
                    }
                }
                None => end = raw.len(),
            }
            break;
        }
        let field = &raw[start..end];
        let colon = memchr::memchr(b':', field);
        if let Some(c) = colon {
            let name = field[..c].trim_ascii_end();
            let forged = name.eq_ignore_ascii_case(b"authentication-results")
                && claims_authserv_id(&field[c + 1..], authserv_id);
            if is_stamped_name(name) || forged || (subject && name.eq_ignore_ascii_case(b"subject"))
            {
                out.push(start..end);
            }
        } else {
            // Not a header field: the header section ended without an empty line.
            break;
        }
        i = end;
    }
    out
}

/// The Subject field's value as written (unfolded is not needed: folding is kept).
pub fn raw_subject(raw: &[u8]) -> Option<&[u8]> {
    let r = field_ranges(raw, true, "").into_iter().find(|r| {
        raw[r.clone()]
            .get(..8)
            .is_some_and(|n| n.eq_ignore_ascii_case(b"subject:"))
    })?;
    let field = &raw[r];
    Some(field[8..].trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inspector() -> Inspector {
        let set = load_rules(&[]).expect("built-in rules");
        let compiled = Compiled::compile(&set).expect("compiles");
        Inspector::new(compiled, None, Settings::default(), Origin::Compiled)
    }

    fn env() -> Envelope<'static> {
        Envelope {
            client_ip: "192.0.2.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
            helo: "client.example",
            mail_from: "a@client.example",
            hostname: "mx.bulwark.test",
            queue_id: "0000000000000000001",
            arrival: 1_796_000_000,
            auth: None,
            approved: false,
            verdicts: None,
        }
    }

    #[test]
    fn the_envelopes_verdicts_replace_the_settings_and_every_class_is_reported() {
        let i = inspector();
        let mut s = i.scanner().unwrap();
        let gtube = b"From: a@client.example\r\nSubject: x\r\n\r\nXJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n";
        let r = i.inspect(&mut s, gtube, &env());
        assert_eq!((r.verdict, r.action), (Verdict::Spam, Action::Reject));
        assert!(r.classes.spam && !r.classes.suspect && !r.classes.phishing);
        let lenient = Verdicts {
            spam_threshold: 5000.0,
            tag_threshold: 2000.0,
            ..Default::default()
        };
        let r = i.inspect(
            &mut s,
            gtube,
            &Envelope {
                verdicts: Some(&lenient),
                ..env()
            },
        );
        assert_eq!(r.action, Action::Deliver, "score {}", r.score);
        assert_eq!(r.classes, Classes::default());
        assert_eq!((r.tag_threshold, r.spam_threshold), (2000.0, 5000.0));
        let mut stamp = Vec::new();
        i.stamp(&r, &mut stamp);
        let stamp = String::from_utf8(stamp).unwrap();
        assert!(stamp.contains("-2000-5000\r\n"), "{stamp}");
        assert!(stamp.contains("X-Spam-Flag: NO\r\n"), "{stamp}");
        // A policy rule that tags clean mail flags it.
        let mut tagged = r.clone();
        tagged.action = Action::Tag;
        tagged.policy_rule = Some("tag-all".into());
        let mut stamp = Vec::new();
        i.stamp(&tagged, &mut stamp);
        let stamp = String::from_utf8(stamp).unwrap();
        assert!(stamp.contains("X-Spam-Flag: YES\r\n"), "{stamp}");
        assert!(
            stamp.contains("X-Bulwark-Policy-Rule: tag-all\r\n"),
            "{stamp}"
        );
    }

    #[test]
    fn approved_senders_skip_spam_and_authentication_verdicts_but_not_phishing() {
        use crate::native::{AuthResult, AuthSummary, DmarcPolicy};
        let settings = Settings {
            url_blocklist: crate::phishing::Blocklist::parse("evil.example/").unwrap(),
            ..Default::default()
        };
        let i = Inspector::load(&[], None, None, settings).unwrap();
        let mut s = i.scanner().unwrap();
        let gtube = b"From: a@client.example\r\nSubject: x\r\n\r\nXJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n";
        let auth = AuthSummary {
            dmarc: AuthResult::Fail,
            dmarc_policy: Some(DmarcPolicy::Reject),
            ..Default::default()
        };
        let approved = Envelope {
            approved: true,
            verdicts: None,
            auth: Some(&auth),
            ..env()
        };
        let r = i.inspect(&mut s, gtube, &approved);
        assert_eq!((r.verdict, r.action), (Verdict::Clean, Action::Deliver));
        assert!(r.score >= 1000.0, "the score is still computed");
        let phish =
            b"From: a@client.example\r\nSubject: x\r\n\r\nsee http://evil.example/login\r\n";
        let r = i.inspect(&mut s, phish, &approved);
        assert_eq!((r.verdict, r.action), (Verdict::Phishing, Action::Reject));
        let r = i.inspect(&mut s, gtube, &env());
        assert_eq!(r.verdict, Verdict::Spam);
    }

    #[test]
    fn dmarc_failures_take_the_policy_action_and_the_strongest_action_wins() {
        use crate::native::{AuthResult, AuthSummary, DmarcPolicy};
        let i = inspector();
        let mut s = i.scanner().unwrap();
        let clean = b"From: a@client.example\r\nTo: b@x.example\r\nSubject: hi\r\nDate: Mon, 1 Dec 2026 10:00:00 +0000\r\nMessage-ID: <1@client.example>\r\n\r\nhello\r\n";
        let mut auth = AuthSummary {
            spf: AuthResult::Fail,
            dmarc: AuthResult::Fail,
            dmarc_policy: Some(DmarcPolicy::Reject),
            ..Default::default()
        };
        let r = i.inspect(
            &mut s,
            clean,
            &Envelope {
                auth: Some(&auth),
                ..env()
            },
        );
        assert_eq!((r.verdict, r.action), (Verdict::AuthFail, Action::Reject));
        assert!(
            r.hits.iter().any(|h| h.name == "DMARC_REJECT"),
            "{:?}",
            r.hits
        );
        assert!(r.hits.iter().any(|h| h.name == "SPF_FAIL"), "{:?}", r.hits);
        auth.dmarc_policy = Some(DmarcPolicy::Quarantine);
        let r = i.inspect(
            &mut s,
            clean,
            &Envelope {
                auth: Some(&auth),
                ..env()
            },
        );
        assert_eq!(
            (r.verdict, r.action),
            (Verdict::AuthFail, Action::Quarantine)
        );
        // GTUBE is refused as spam: reject is stronger than quarantine.
        let gtube = format!(
            "From: a@client.example\r\nSubject: x\r\n\r\n{}\r\n",
            "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
        );
        let r = i.inspect(
            &mut s,
            gtube.as_bytes(),
            &Envelope {
                auth: Some(&auth),
                ..env()
            },
        );
        assert_eq!((r.verdict, r.action), (Verdict::Spam, Action::Reject));
        // p=none: scored, no verdict of its own; a pass is no finding at all.
        auth.dmarc_policy = Some(DmarcPolicy::None);
        let r = i.inspect(
            &mut s,
            clean,
            &Envelope {
                auth: Some(&auth),
                ..env()
            },
        );
        assert_eq!(r.verdict, Verdict::Clean);
        assert!(r.hits.iter().any(|h| h.name == "DMARC_NONE"));
        auth.dmarc = AuthResult::Pass;
        let r = i.inspect(
            &mut s,
            clean,
            &Envelope {
                auth: Some(&auth),
                ..env()
            },
        );
        assert!(r.hits.iter().any(|h| h.name == "DMARC_PASS"));
        assert!(!r.hits.iter().any(|h| h.name.starts_with("DMARC_N")));
    }

    #[test]
    fn gtube_is_rejected_and_clean_mail_delivered() {
        let i = inspector();
        let mut s = i.scanner().expect("scanner");
        let gtube = b"From: a@b.example\r\nTo: c@d.example\r\nSubject: t\r\nDate: Mon, 30 Nov 2026 00:00:00 +0000\r\nMessage-ID: <1@b>\r\n\r\nXJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n";
        let r = i.inspect(&mut s, gtube, &env());
        assert_eq!(r.action, Action::Reject);
        assert_eq!(r.verdict, Verdict::Spam);
        assert!(r.hits.iter().any(|h| h.name == "GTUBE"));
        let clean = b"From: a@b.example\r\nTo: c@d.example\r\nSubject: lunch\r\nDate: Mon, 30 Nov 2026 00:00:00 +0000\r\nMessage-ID: <2@b>\r\n\r\nSee you at noon.\r\n";
        let r = i.inspect(&mut s, clean, &env());
        assert_eq!(r.action, Action::Deliver, "{:?}", r.hits);
        let mut out = Vec::new();
        i.stamp(&r, &mut out);
        let text = String::from_utf8(out).expect("ascii");
        assert!(text.contains("X-Spam-Flag: NO\r\n"), "{text}");
        assert!(text.starts_with("X-Bulwark-Result: clean--"), "{text}");
        assert!(text.lines().all(|l| l.len() <= 998));
    }

    #[test]
    fn stamped_copies_and_subject_are_found() {
        let raw = b"X-Spam-Flag: NO\r\nSubject: hello\r\n\tworld\r\nX-Bulwark-Result: clean\r\nAuthentication-Results: MX.Bulwark.test;\r\n\tspf=pass\r\nAuthentication-Results: mx.bulwark.test.evil; spf=pass\r\nAuthentication-Results: mx.bulwark.test 1 (c); dkim=pass\r\nFrom: a\r\n\r\nX-Spam-Flag: body\r\n";
        let r = field_ranges(raw, false, "mx.bulwark.test");
        assert_eq!(r.len(), 4);
        assert_eq!(&raw[r[0].clone()], b"X-Spam-Flag: NO\r\n");
        assert_eq!(&raw[r[1].clone()], b"X-Bulwark-Result: clean\r\n");
        // Ours (any case, folded, with a version) go; another server's stays.
        assert_eq!(
            &raw[r[2].clone()],
            b"Authentication-Results: MX.Bulwark.test;\r\n\tspf=pass\r\n"
        );
        assert!(raw[r[3].clone()].ends_with(b"dkim=pass\r\n"));
        assert_eq!(raw_subject(raw), Some(&b"hello\r\n\tworld"[..]));
    }

    #[test]
    fn long_detail_headers_are_folded() {
        let mut out = String::new();
        let items: Vec<String> = (0..40).map(|i| format!("RULE_NUMBER_{i}=1.5")).collect();
        fold_into(&mut out, "X-Bulwark-Result-Detail:", &items, ",");
        assert!(out.split("\r\n").all(|l| l.len() <= 78), "{out}");
        assert!(out.ends_with("\r\n"));
    }
}
