//! Rules compiled for scanning: one Hyperscan database per rule class (header and
//! mimeheader rules have one per header they read), patterns Hyperscan refuses compiled
//! in prefilter mode and confirmed by PCRE2, the rest PCRE2-only with a match limit.
//! A compiled set serializes to bytes ([`Compiled::to_bytes`]) so that engines load it
//! without compiling; a [`Scanner`] holds the per-thread scratch space.

use std::collections::{BTreeMap, HashMap};

use hyperscan::prelude::{BlockDatabase, Builder, Matching, Patterns, Scratch};
use hyperscan::{CompileFlags, Serialized};
use serde::{Deserialize, Serialize};

use crate::expr::{self, Expr};
use crate::mime::Views;
use crate::rules::{Class, HeaderPart, HeaderTarget, Pattern, Rule, RuleSet, Skipped, Test};

/// PCRE2 gives up on a subject after this many backtracking steps (SpamAssassin's
/// rules include a few with catastrophic cases).
const PCRE2_MATCH_LIMIT: u32 = 200_000;
const MAGIC: &[u8; 8] = b"BWRULES2";
/// Patterns whose [`pattern_cost`] passes this go to PCRE2 alone.
const MAX_HYPERSCAN_COST: u64 = 600;

/// How a regex rule is matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    Hyperscan,
    /// Hyperscan in prefilter mode finds candidates; PCRE2 confirms them.
    Prefilter,
    /// PCRE2 alone, with a match limit.
    Pcre,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Hyperscan => "hyperscan",
            Mode::Prefilter => "prefilter+pcre2",
            Mode::Pcre => "pcre2",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("Hyperscan: {0}")]
    Hyperscan(String),
    #[error("meta rule {rule} ({origin}): {message}")]
    Meta {
        rule: String,
        origin: String,
        message: String,
    },
    #[error("compiled rules: {0}")]
    Format(String),
}

/// The key of one database: a class, and for header classes the header and form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DbKey {
    pub class: Class,
    pub header: Option<(String, HeaderPart)>,
    /// Prefilter patterns get databases of their own: compiled together with exact
    /// patterns they make Hyperscan's compile several times slower.
    pub prefilter: bool,
}

/// What the engine keeps of one rule.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuleInfo {
    pub name: String,
    pub kind: RuleKind,
    pub scores: [f64; 4],
    pub describe: Option<String>,
    pub verdict: Option<String>,
    pub origin: String,
    pub subrule: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RuleKind {
    Regex {
        db: usize,
        mode: Mode,
        source: String,
        caseless: bool,
        dotall: bool,
        multiline: bool,
        negate: bool,
        if_unset: Option<String>,
    },
    Exists(String),
    Meta(String),
    Native(String),
}

/// The serializable description of a compiled set (everything but the databases).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Manifest {
    hyperscan: String,
    rules: Vec<RuleInfo>,
    dbs: Vec<DbKey>,
    skipped: Vec<(String, String, String)>,
}

/// One database and the rules its pattern ids stand for.
pub struct Db {
    pub key: DbKey,
    /// `None` when every rule of the key is PCRE2-only.
    hs: Option<BlockDatabase>,
    /// Pattern id → rule index (Hyperscan and prefilter rules).
    ids: Vec<u32>,
    /// Rules matched by PCRE2 alone.
    pcre_only: Vec<u32>,
    /// Rules with `negate` (they hit when their pattern does not match).
    negated: Vec<u32>,
    /// Every regex rule of this database.
    members: Vec<u32>,
}

/// A compiled rule set, shared (read-only) by every scanning thread.
pub struct Compiled {
    pub rules: Vec<RuleInfo>,
    pub dbs: Vec<Db>,
    /// PCRE2 programs for prefilter and PCRE2-only rules, by rule index.
    pcre: HashMap<u32, pcre2::bytes::Regex>,
    /// Rules with an `if-unset` value: the program that matches it.
    unset: HashMap<u32, (pcre2::bytes::Regex, String)>,
    /// Meta rules in evaluation order (every meta after the metas it reads).
    metas: Vec<(u32, Expr)>,
    /// Exists rules.
    exists: Vec<(u32, String)>,
    /// Native checks: rule index and check name.
    pub natives: Vec<(u32, String)>,
    pub skipped: Vec<Skipped>,
    serialized: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field("rules", &self.rules.len())
            .field("dbs", &self.dbs.len())
            .finish()
    }
}

/// Counts of rules by mode, for the import report.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ModeCounts {
    pub hyperscan: usize,
    pub prefilter: usize,
    pub pcre: usize,
    pub meta: usize,
    pub exists: usize,
    pub native: usize,
}

fn hs_flags(p: &Pattern, class: Class, prefilter: bool) -> CompileFlags {
    let mut f = CompileFlags::SINGLEMATCH | CompileFlags::ALLOWEMPTY;
    if p.caseless {
        f |= CompileFlags::CASELESS;
    }
    if p.dotall {
        f |= CompileFlags::DOTALL;
    }
    if p.multiline || matches!(class, Class::Body | Class::RawBody | Class::Uri) {
        f |= CompileFlags::MULTILINE;
    }
    if prefilter {
        f |= CompileFlags::PREFILTER;
    }
    f
}

fn multiline(p: &Pattern, class: Class) -> bool {
    p.multiline || matches!(class, Class::Body | Class::RawBody | Class::Uri)
}

fn build_pcre(
    source: &str,
    caseless: bool,
    dotall: bool,
    multiline: bool,
) -> Result<pcre2::bytes::Regex, String> {
    let limited = format!("(*LIMIT_MATCH={PCRE2_MATCH_LIMIT}){source}");
    pcre2::bytes::RegexBuilder::new()
        .caseless(caseless)
        .dotall(dotall)
        .multi_line(multiline)
        .jit_if_available(true)
        .build(&limited)
        .map_err(|e| e.to_string())
}

fn hs_accepts(source: &str, flags: CompileFlags) -> bool {
    match hyperscan::Pattern::with_flags(source, flags) {
        Ok(p) => p.info().is_ok(),
        Err(_) => false,
    }
}

/// The Hyperscan library version compiled databases depend on.
pub fn hyperscan_version() -> String {
    hyperscan::version_str().to_string_lossy().into_owned()
}

impl Compiled {
    /// Compiles `set`. Rules that no engine can take are added to `skipped` with the
    /// reason; a meta rule that does not parse is an error naming it.
    pub fn compile(set: &RuleSet) -> Result<Compiled, CompileError> {
        let mut rules: Vec<RuleInfo> = Vec::with_capacity(set.rules.len());
        let mut skipped = set.skipped.clone();
        let mut groups: BTreeMap<DbKey, Vec<u32>> = BTreeMap::new();
        let mut pcre = HashMap::new();
        let mut tests: Vec<&Rule> = Vec::with_capacity(set.rules.len());
        for rule in &set.rules {
            let kind = match &rule.test {
                Test::Regex {
                    class,
                    header,
                    pattern,
                    negate,
                } => {
                    let ml = multiline(pattern, *class);
                    let mode = if pattern_cost(&pattern.source) > MAX_HYPERSCAN_COST {
                        Mode::Pcre
                    } else if hs_accepts(&pattern.source, hs_flags(pattern, *class, false)) {
                        Mode::Hyperscan
                    } else if hs_accepts(&pattern.source, hs_flags(pattern, *class, true)) {
                        Mode::Prefilter
                    } else {
                        Mode::Pcre
                    };
                    let idx = rules.len() as u32;
                    if mode != Mode::Hyperscan {
                        match build_pcre(&pattern.source, pattern.caseless, pattern.dotall, ml) {
                            Ok(re) => {
                                pcre.insert(idx, re);
                            }
                            Err(e) => {
                                skipped.push(Skipped {
                                    name: rule.name.clone(),
                                    origin: rule.origin.clone(),
                                    reason: format!("pattern refused by Hyperscan and PCRE2: {e}"),
                                });
                                continue;
                            }
                        }
                    }
                    let key = db_key(*class, header.as_ref(), mode == Mode::Prefilter);
                    let entry = groups.entry(key.clone()).or_default();
                    entry.push(idx);
                    RuleKind::Regex {
                        db: 0,
                        mode,
                        source: pattern.source.clone(),
                        caseless: pattern.caseless,
                        dotall: pattern.dotall,
                        multiline: ml,
                        negate: *negate,
                        if_unset: header.as_ref().and_then(|h| h.if_unset.clone()),
                    }
                }
                Test::Exists(h) => RuleKind::Exists(h.clone()),
                Test::Meta(e) => RuleKind::Meta(e.clone()),
                Test::Native(n) => RuleKind::Native(n.clone()),
            };
            tests.push(rule);
            rules.push(RuleInfo {
                name: rule.name.clone(),
                kind,
                scores: if rule.is_subrule() {
                    [0.0; 4]
                } else if !rule.scored && rule.name.starts_with("T_") {
                    [0.01; 4]
                } else {
                    rule.scores
                },
                describe: rule.describe.clone(),
                verdict: rule.verdict.map(|v| v.as_str().to_string()),
                origin: rule.origin.to_string(),
                subrule: rule.is_subrule(),
            });
        }
        // Each group: compile, demoting any pattern the whole-database compile refuses.
        let mut dbs = Vec::with_capacity(groups.len());
        let mut serialized = Vec::with_capacity(groups.len());
        // Every rule knows its database before any database's lists are taken.
        for (db_index, members) in groups.values().enumerate() {
            for &m in members {
                if let RuleKind::Regex { db, .. } = &mut rules[m as usize].kind {
                    *db = db_index;
                }
            }
        }
        for (db_index, (key, members)) in groups.into_iter().enumerate() {
            let (hs, bytes) = loop {
                let mut patterns = Vec::new();
                let mut ids = Vec::new();
                for &m in &members {
                    let r = &rules[m as usize];
                    if let RuleKind::Regex {
                        mode,
                        source,
                        caseless,
                        dotall,
                        multiline,
                        ..
                    } = &r.kind
                    {
                        if *mode == Mode::Pcre {
                            continue;
                        }
                        let p = Pattern {
                            source: source.clone(),
                            caseless: *caseless,
                            dotall: *dotall,
                            multiline: *multiline,
                        };
                        let class = key.class;
                        let mut hp = hyperscan::Pattern::with_flags(
                            source.as_str(),
                            hs_flags(&p, class, *mode == Mode::Prefilter),
                        )
                        .map_err(|e| CompileError::Hyperscan(e.to_string()))?;
                        hp.id = Some(ids.len());
                        ids.push(m);
                        patterns.push(hp);
                    }
                }
                if patterns.is_empty() {
                    break (None, Vec::new());
                }
                match Patterns(patterns).build::<hyperscan::BlockMode>() {
                    Ok(db) => {
                        let bytes = db
                            .serialize()
                            .map_err(|e| CompileError::Hyperscan(e.to_string()))?
                            .to_vec();
                        break (Some((db, ids)), bytes);
                    }
                    Err(e) => {
                        let Some(bad) = failing_expression(&e) else {
                            return Err(CompileError::Hyperscan(e.to_string()));
                        };
                        let m = ids[bad];
                        demote(
                            &mut rules,
                            &mut pcre,
                            &mut skipped,
                            &tests,
                            m,
                            &e.to_string(),
                        );
                    }
                }
            };
            let hs = hs.map(|(db, _)| db);
            let (ids, pcre_only, negated, members) = db_lists(&rules, db_index);
            dbs.push(Db {
                key,
                hs,
                ids,
                pcre_only,
                negated,
                members,
            });
            serialized.push(bytes);
        }
        let (metas, exists, natives) = link(&rules)?;
        let unset = unset_programs(&rules);
        Ok(Compiled {
            rules,
            dbs,
            pcre,
            unset,
            metas,
            exists,
            natives,
            skipped,
            serialized,
        })
    }

    /// Counts rules by how they are matched.
    pub fn modes(&self) -> ModeCounts {
        let mut c = ModeCounts::default();
        for r in &self.rules {
            match &r.kind {
                RuleKind::Regex { mode, .. } => match mode {
                    Mode::Hyperscan => c.hyperscan += 1,
                    Mode::Prefilter => c.prefilter += 1,
                    Mode::Pcre => c.pcre += 1,
                },
                RuleKind::Meta(_) => c.meta += 1,
                RuleKind::Exists(_) => c.exists += 1,
                RuleKind::Native(_) => c.native += 1,
            }
        }
        c
    }

    /// Each rule with how it runs (`hyperscan`, `prefilter+pcre2`, `pcre2`, `meta`,
    /// `exists`, `native`) and where it was defined.
    pub fn rule_modes(&self) -> Vec<(&str, &'static str, &str)> {
        self.rules
            .iter()
            .map(|r| {
                let mode = match &r.kind {
                    RuleKind::Regex { mode, .. } => match mode {
                        Mode::Hyperscan => "hyperscan",
                        Mode::Prefilter => "prefilter+pcre2",
                        Mode::Pcre => "pcre2",
                    },
                    RuleKind::Meta(_) => "meta",
                    RuleKind::Exists(_) => "exists",
                    RuleKind::Native(_) => "native",
                };
                (r.name.as_str(), mode, r.origin.as_str())
            })
            .collect()
    }

    /// The compiled set as bytes: a manifest and each serialized database.
    pub fn to_bytes(&self) -> Vec<u8> {
        let manifest = Manifest {
            hyperscan: hyperscan_version(),
            rules: self.rules.clone(),
            dbs: self.dbs.iter().map(|d| d.key.clone()).collect(),
            skipped: self
                .skipped
                .iter()
                .map(|s| (s.name.clone(), s.origin.to_string(), s.reason.clone()))
                .collect(),
        };
        let json = serde_json::to_vec(&manifest).unwrap_or_default();
        let mut out = Vec::with_capacity(
            json.len() + self.serialized.iter().map(Vec::len).sum::<usize>() + 64,
        );
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(json.len() as u64).to_le_bytes());
        out.extend_from_slice(&json);
        for s in &self.serialized {
            out.extend_from_slice(&(s.len() as u64).to_le_bytes());
            out.extend_from_slice(s);
        }
        out
    }

    /// Loads a set from [`Compiled::to_bytes`]. Fails (so the caller recompiles) when
    /// the bytes are damaged or were made by another Hyperscan version.
    pub fn from_bytes(bytes: &[u8]) -> Result<Compiled, CompileError> {
        let bad = |m: &str| CompileError::Format(m.to_string());
        let rest = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or_else(|| bad("not a compiled rule set"))?;
        let (json, mut rest) = take_chunk(rest).ok_or_else(|| bad("truncated manifest"))?;
        let manifest: Manifest =
            serde_json::from_slice(json).map_err(|e| CompileError::Format(e.to_string()))?;
        if manifest.hyperscan != hyperscan_version() {
            return Err(CompileError::Format(format!(
                "compiled by Hyperscan {}, this is {}",
                manifest.hyperscan,
                hyperscan_version()
            )));
        }
        let mut pcre = HashMap::new();
        for (i, r) in manifest.rules.iter().enumerate() {
            if let RuleKind::Regex {
                mode,
                source,
                caseless,
                dotall,
                multiline,
                ..
            } = &r.kind
                && *mode != Mode::Hyperscan
            {
                // A pattern PCRE2 refused was reported when the set was compiled; its
                // rule never hits.
                if let Ok(re) = build_pcre(source, *caseless, *dotall, *multiline) {
                    pcre.insert(i as u32, re);
                }
            }
        }
        let mut dbs = Vec::with_capacity(manifest.dbs.len());
        let mut serialized = Vec::with_capacity(manifest.dbs.len());
        for (db_index, key) in manifest.dbs.iter().enumerate() {
            let (chunk, next) = take_chunk(rest).ok_or_else(|| bad("truncated database"))?;
            rest = next;
            let (ids, pcre_only, negated, members) = db_lists(&manifest.rules, db_index);
            let hs = if chunk.is_empty() {
                None
            } else {
                Some(
                    chunk
                        .deserialize::<hyperscan::BlockMode>()
                        .map_err(|e| CompileError::Format(e.to_string()))?,
                )
            };
            dbs.push(Db {
                key: key.clone(),
                hs,
                ids,
                pcre_only,
                negated,
                members,
            });
            serialized.push(chunk.to_vec());
        }
        let (metas, exists, natives) = link(&manifest.rules)?;
        let unset = unset_programs(&manifest.rules);
        let skipped = manifest
            .skipped
            .into_iter()
            .map(|(name, origin, reason)| {
                let (file, line) = origin.rsplit_once(':').unwrap_or((&origin, "0"));
                Skipped {
                    name,
                    origin: crate::rules::Origin {
                        file: file.to_string(),
                        line: line.parse().unwrap_or(0),
                    },
                    reason,
                }
            })
            .collect();
        Ok(Compiled {
            rules: manifest.rules,
            dbs,
            pcre,
            unset,
            metas,
            exists,
            natives,
            skipped,
            serialized,
        })
    }

    /// Index of the rule named `name`.
    pub fn rule_index(&self, name: &str) -> Option<usize> {
        self.rules.iter().position(|r| r.name == name)
    }
}

type DbLists = (Vec<u32>, Vec<u32>, Vec<u32>, Vec<u32>);

/// For database `db`: its Hyperscan pattern ids' rules (in id order), its PCRE2-only
/// rules, its negated rules, and all its rules.
fn db_lists(rules: &[RuleInfo], db: usize) -> DbLists {
    let (mut ids, mut pcre_only, mut negated, mut members) = DbLists::default();
    for (i, r) in rules.iter().enumerate() {
        if let RuleKind::Regex {
            db: d,
            mode,
            negate,
            ..
        } = &r.kind
            && *d == db
        {
            let i = i as u32;
            members.push(i);
            match mode {
                Mode::Pcre => pcre_only.push(i),
                _ => ids.push(i),
            }
            if *negate {
                negated.push(i);
            }
        }
    }
    (ids, pcre_only, negated, members)
}

fn unset_programs(rules: &[RuleInfo]) -> HashMap<u32, (pcre2::bytes::Regex, String)> {
    let mut out = HashMap::new();
    for (i, r) in rules.iter().enumerate() {
        if let RuleKind::Regex {
            source,
            caseless,
            dotall,
            multiline,
            if_unset: Some(v),
            ..
        } = &r.kind
            && let Ok(re) = build_pcre(source, *caseless, *dotall, *multiline)
        {
            out.insert(i as u32, (re, v.clone()));
        }
    }
    out
}

fn take_chunk(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u64::from_le_bytes(b.get(..8)?.try_into().ok()?) as usize;
    let rest = &b[8..];
    if rest.len() < len {
        return None;
    }
    Some((&rest[..len], &rest[len..]))
}

pub(crate) fn failing_expression(e: &hyperscan::Error) -> Option<usize> {
    match e {
        hyperscan::Error::Hyperscan(hyperscan::HsError::CompileError(c)) => c.expression(),
        _ => None,
    }
}

/// Moves rule `m` one mode down after the database compile refused it.
fn demote(
    rules: &mut [RuleInfo],
    pcre: &mut HashMap<u32, pcre2::bytes::Regex>,
    skipped: &mut Vec<Skipped>,
    tests: &[&Rule],
    m: u32,
    why: &str,
) {
    let r = &mut rules[m as usize];
    if let RuleKind::Regex {
        mode,
        source,
        caseless,
        dotall,
        multiline,
        ..
    } = &mut r.kind
    {
        // The rule stays in its database's group, matched by PCRE2 alone.
        *mode = Mode::Pcre;
        if let std::collections::hash_map::Entry::Vacant(slot) = pcre.entry(m) {
            match build_pcre(source, *caseless, *dotall, *multiline) {
                Ok(re) => {
                    slot.insert(re);
                }
                Err(e) => {
                    *mode = Mode::Pcre;
                    let origin = tests
                        .get(m as usize)
                        .map(|t| t.origin.clone())
                        .unwrap_or_default();
                    skipped.push(Skipped {
                        name: r.name.clone(),
                        origin,
                        reason: format!("pattern refused by Hyperscan ({why}) and PCRE2 ({e})"),
                    });
                }
            }
        }
    }
}

fn db_key(class: Class, header: Option<&HeaderTarget>, prefilter: bool) -> DbKey {
    DbKey {
        class,
        header: header.map(|h| (header_key(&h.name), h.part)),
        prefilter,
    }
}

/// A header name as a database key: lower case, except SpamAssassin's composite names,
/// which it recognizes only as written (`ALL`, `ToCc`, `MESSAGEID`; `MessageID` is an
/// ordinary header that mail does not have) and which become `:all`, `:tocc`,
/// `:messageid` (a rule's header name never has a colon).
fn header_key(name: &str) -> String {
    match name {
        "ALL" => ":all".into(),
        "ToCc" => ":tocc".into(),
        "MESSAGEID" => ":messageid".into(),
        other => other.to_ascii_lowercase(),
    }
}

type Linked = (Vec<(u32, Expr)>, Vec<(u32, String)>, Vec<(u32, String)>);

/// Resolves meta rules' names and orders them so each comes after the metas it reads;
/// a cycle is an error naming a rule in it.
fn link(rules: &[RuleInfo]) -> Result<Linked, CompileError> {
    let index: HashMap<&str, u32> = rules
        .iter()
        .enumerate()
        .map(|(i, r)| (r.name.as_str(), i as u32))
        .collect();
    // Names no rule defines read as zero: a variable past the end of the values.
    let missing = rules.len() as u32;
    let mut metas: Vec<(u32, Expr)> = Vec::new();
    let mut exists = Vec::new();
    let mut natives = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        match &r.kind {
            RuleKind::Meta(e) => {
                let parsed = expr::parse(e, |n| index.get(n).copied().unwrap_or(missing)).map_err(
                    |err| CompileError::Meta {
                        rule: r.name.clone(),
                        origin: r.origin.clone(),
                        message: err.to_string(),
                    },
                )?;
                metas.push((i as u32, parsed));
            }
            RuleKind::Exists(h) => exists.push((i as u32, h.clone())),
            RuleKind::Native(n) => natives.push((i as u32, n.clone())),
            RuleKind::Regex { .. } => {}
        }
    }
    // Topological order over meta → meta edges (depth-first, iterative).
    let is_meta: HashMap<u32, usize> = metas
        .iter()
        .enumerate()
        .map(|(k, (i, _))| (*i, k))
        .collect();
    let mut state = vec![0u8; metas.len()]; // 0 new, 1 on stack, 2 done
    let mut order = Vec::with_capacity(metas.len());
    for start in 0..metas.len() {
        if state[start] != 0 {
            continue;
        }
        let mut stack: Vec<(usize, Vec<usize>)> = vec![(start, deps(&metas[start].1, &is_meta))];
        state[start] = 1;
        while let Some((node, pending)) = stack.last_mut() {
            if let Some(next) = pending.pop() {
                match state[next] {
                    0 => {
                        state[next] = 1;
                        let d = deps(&metas[next].1, &is_meta);
                        stack.push((next, d));
                    }
                    1 => {
                        let r = &rules[metas[next].0 as usize];
                        return Err(CompileError::Meta {
                            rule: r.name.clone(),
                            origin: r.origin.clone(),
                            message: "meta rules depend on each other in a cycle".into(),
                        });
                    }
                    _ => {}
                }
            } else {
                let node = *node;
                state[node] = 2;
                order.push(node);
                stack.pop();
            }
        }
    }
    let mut slots: Vec<Option<(u32, Expr)>> = metas.into_iter().map(Some).collect();
    let ordered = order.into_iter().filter_map(|k| slots[k].take()).collect();
    Ok((ordered, exists, natives))
}

fn deps(e: &Expr, is_meta: &HashMap<u32, usize>) -> Vec<usize> {
    e.vars().filter_map(|v| is_meta.get(&v).copied()).collect()
}

/// The result of matching one message.
#[derive(Debug, Default, Clone)]
pub struct Hits {
    /// Per rule: its value (1.0 for a regex hit; a meta's value).
    pub values: Vec<f64>,
    /// PCRE2 runs that hit the match limit.
    pub pcre_limit: usize,
}

impl Hits {
    pub fn hit(&self, i: usize) -> bool {
        self.values.get(i).is_some_and(|v| *v != 0.0)
    }
}

/// Per-thread scanning state: Hyperscan scratch space big enough for every database,
/// and buffers reused across messages.
pub struct Scanner {
    scratch: Scratch,
    text: Vec<u8>,
    stack: Vec<f64>,
}

impl Scanner {
    pub fn new(compiled: &Compiled) -> Result<Scanner, CompileError> {
        let mut scratch: Option<Scratch> = None;
        for db in &compiled.dbs {
            if let Some(hs) = &db.hs {
                match scratch.as_mut() {
                    None => {
                        scratch = Some(
                            hs.alloc_scratch()
                                .map_err(|e| CompileError::Hyperscan(e.to_string()))?,
                        )
                    }
                    Some(s) => {
                        hs.realloc_scratch(s)
                            .map_err(|e| CompileError::Hyperscan(e.to_string()))?;
                    }
                }
            }
        }
        let scratch = match scratch {
            Some(s) => s,
            None => {
                // A set without Hyperscan databases still needs a scratch value.
                let db: BlockDatabase = hyperscan::Pattern::new("x")
                    .and_then(|p| p.build())
                    .map_err(|e| CompileError::Hyperscan(e.to_string()))?;
                db.alloc_scratch()
                    .map_err(|e| CompileError::Hyperscan(e.to_string()))?
            }
        };
        Ok(Scanner {
            scratch,
            text: Vec::new(),
            stack: Vec::new(),
        })
    }

    /// Matches every regex and exists rule against `views`, then `natives` (the
    /// caller's checks, by rule index), then the meta rules.
    pub fn scan(
        &mut self,
        compiled: &Compiled,
        views: &Views<'_>,
        pseudo: &PseudoHeaders<'_>,
        natives: impl Fn(&str) -> bool,
    ) -> Hits {
        let mut hits = Hits {
            values: vec![0.0; compiled.rules.len() + 1],
            pcre_limit: 0,
        };
        for db in &compiled.dbs {
            if let Some(subject) = subject_of(&db.key, views, pseudo, &mut self.text) {
                scan_db(&self.scratch, compiled, db, subject, &mut hits);
                for &r in &db.negated {
                    let v = &mut hits.values[r as usize];
                    *v = if *v == 0.0 { 1.0 } else { 0.0 };
                }
            } else {
                // The header is absent: rules with `if-unset` match their stand-in
                // value; negated rules hit (nothing matched).
                for &r in &db.members {
                    let negate = matches!(
                        compiled.rules[r as usize].kind,
                        RuleKind::Regex { negate: true, .. }
                    );
                    let matched = compiled
                        .unset
                        .get(&r)
                        .is_some_and(|(re, v)| re.is_match(v.as_bytes()).unwrap_or(false));
                    hits.values[r as usize] = if matched != negate { 1.0 } else { 0.0 };
                }
            }
        }
        for (i, h) in &compiled.exists {
            // SpamAssassin's composite names exist when one of their parts does.
            let parts = composite_parts(&header_key(h));
            let present = |n: &str| views.headers.iter().any(|x| x.name.eq_ignore_ascii_case(n));
            let found = if parts.is_empty() {
                present(h) || pseudo.get(h).is_some()
            } else {
                parts.iter().any(|p| present(p))
            };
            if found {
                hits.values[*i as usize] = 1.0;
            }
        }
        for (i, n) in &compiled.natives {
            if natives(n) {
                hits.values[*i as usize] = 1.0;
            }
        }
        for (i, e) in &compiled.metas {
            let v = e.eval(&hits.values, &mut self.stack);
            hits.values[*i as usize] = v;
        }
        hits.values.truncate(compiled.rules.len());
        // A very large subject (a whole scan of a big message) is not kept between scans.
        if self.text.capacity() > MAX_KEPT_TEXT {
            self.text = Vec::new();
        }
        hits
    }
}

impl Compiled {
    /// Diagnostics: how long each rule that PCRE2 runs (prefilter confirmations and
    /// PCRE2-only rules) takes on its subject in `views`, slowest first.
    pub fn pcre_costs(
        &self,
        views: &Views<'_>,
        pseudo: &PseudoHeaders<'_>,
    ) -> Vec<(String, std::time::Duration)> {
        let mut out = Vec::new();
        let mut text = Vec::new();
        for db in &self.dbs {
            let Some(subject) = subject_of(&db.key, views, pseudo, &mut text) else {
                continue;
            };
            for &r in &db.members {
                if let Some(re) = self.pcre.get(&r) {
                    let t = std::time::Instant::now();
                    let _ = re.is_match(subject);
                    out.push((self.rules[r as usize].name.clone(), t.elapsed()));
                }
            }
        }
        out.sort_by_key(|c| std::cmp::Reverse(c.1));
        out
    }
}

fn scan_db(scratch: &Scratch, compiled: &Compiled, db: &Db, subject: &[u8], hits: &mut Hits) {
    {
        if let Some(hs) = &db.hs {
            let mut candidates: Vec<u32> = Vec::new();
            let values = &mut hits.values;
            let _ = hs.scan(subject, scratch, |id: u32, _from, _to, _flags| {
                if let Some(&r) = db.ids.get(id as usize) {
                    if compiled.pcre.contains_key(&r) {
                        candidates.push(r);
                    } else {
                        values[r as usize] = 1.0;
                    }
                }
                Matching::Continue
            });
            for r in candidates {
                if let Some(re) = compiled.pcre.get(&r) {
                    match re.is_match(subject) {
                        Ok(true) => hits.values[r as usize] = 1.0,
                        Ok(false) => {}
                        Err(_) => hits.pcre_limit += 1,
                    }
                }
            }
        }
        for &r in &db.pcre_only {
            if let Some(re) = compiled.pcre.get(&r) {
                match re.is_match(subject) {
                    Ok(true) => hits.values[r as usize] = 1.0,
                    Ok(false) => {}
                    Err(_) => hits.pcre_limit += 1,
                }
            }
        }
    }
}

/// The largest subject buffer a scanner keeps between messages.
const MAX_KEPT_TEXT: usize = 1 << 20;

/// Header-like values computed by the caller: SpamAssassin's `EnvelopeFrom` and
/// `X-Spam-Relays-*`, and any other pseudo-header rules may name.
#[derive(Debug, Default)]
pub struct PseudoHeaders<'a> {
    pub values: Vec<(&'static str, std::borrow::Cow<'a, str>)>,
}

impl PseudoHeaders<'_> {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_ref())
    }
}

/// The text the rules of `key` read: a view itself (body, raw body, the whole message),
/// or one assembled in `text` (URLs, header values); `None` when a header class's header
/// is absent from the message.
fn subject_of<'s>(
    key: &DbKey,
    v: &'s Views<'_>,
    pseudo: &PseudoHeaders<'_>,
    text: &'s mut Vec<u8>,
) -> Option<&'s [u8]> {
    match key.class {
        Class::Body => Some(v.body.as_bytes()),
        Class::RawBody => Some(v.rawbody.as_bytes()),
        Class::Full => Some(v.full),
        _ => {
            text.clear();
            subject(key, v, pseudo, text).then_some(&text[..])
        }
    }
}

/// Writes the subject text of `key` (URLs, header values) into `out`; false when a header
/// class's header is absent from the message.
fn subject(key: &DbKey, v: &Views<'_>, pseudo: &PseudoHeaders<'_>, out: &mut Vec<u8>) -> bool {
    match key.class {
        Class::Body | Class::RawBody | Class::Full => false,
        Class::Uri => {
            for u in &v.urls {
                out.extend_from_slice(u.url.as_bytes());
                out.push(b'\n');
            }
            true
        }
        Class::Header | Class::MimeHeader => {
            let Some((name, part)) = &key.header else {
                return false;
            };
            let headers = if key.class == Class::Header {
                &v.headers
            } else {
                &v.mime_headers
            };
            header_subject(name, *part, headers, pseudo, out)
        }
    }
}

fn header_subject(
    name: &str,
    part: HeaderPart,
    headers: &[crate::mime::HeaderView],
    pseudo: &PseudoHeaders<'_>,
    out: &mut Vec<u8>,
) -> bool {
    let mut any = false;
    let mut push = |h: &crate::mime::HeaderView, out: &mut Vec<u8>, with_name: bool| {
        if any {
            out.push(b'\n');
        }
        any = true;
        if with_name {
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
        }
        match part {
            HeaderPart::Decoded => out.extend_from_slice(h.decoded.as_bytes()),
            HeaderPart::Raw => out.extend_from_slice(h.raw.as_bytes()),
            HeaderPart::Addr => out.extend_from_slice(h.addrs.join("\n").as_bytes()),
            HeaderPart::Name => out.extend_from_slice(h.names.join("\n").as_bytes()),
        }
    };
    let names: &[&str] = match name {
        ":all" => {
            for h in headers {
                push(h, out, true);
            }
            if any {
                out.push(b'\n');
            }
            return any;
        }
        other => composite_parts(other),
    };
    if names.is_empty() {
        if let Some(p) = pseudo.get(name) {
            out.extend_from_slice(p.as_bytes());
            return true;
        }
        for h in headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)) {
            push(h, out, false);
        }
    } else {
        for n in names {
            for h in headers.iter().filter(|h| h.name.eq_ignore_ascii_case(n)) {
                push(h, out, false);
            }
        }
    }
    any
}

/// A rough size of the automaton a pattern asks for: a literal counts one, a group its
/// widest alternative, and a bounded repeat multiplies what it
/// repeats by its upper bound. Hyperscan spends minutes on a few SpamAssassin rules
/// with nested bounded repeats (and then often refuses them); past a budget such a
/// rule goes to PCRE2 without being offered to Hyperscan.
pub fn pattern_cost(source: &str) -> u64 {
    let b = source.as_bytes();
    // Stack of (cost of the current group so far, cost of its widest alternative).
    let mut stack: Vec<(u64, u64)> = vec![(0, 0)];
    let mut last: u64 = 0;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'\\' => {
                i += 1;
                if i < b.len() && b[i] == b'x' {
                    i += 2;
                }
                last = 1;
                add(&mut stack, last);
            }
            b'[' => {
                i += 1;
                if i < b.len() && b[i] == b'^' {
                    i += 1;
                }
                if i < b.len() && b[i] == b']' {
                    i += 1;
                }
                while i < b.len() && b[i] != b']' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                last = 1;
                add(&mut stack, last);
            }
            b'(' => stack.push((0, 0)),
            b'|' => {
                if let Some(top) = stack.last_mut() {
                    top.1 = top.1.max(top.0);
                    top.0 = 0;
                }
            }
            b')' => {
                if stack.len() > 1
                    && let Some((cur, widest)) = stack.pop()
                {
                    last = widest.max(cur).max(1);
                    add(&mut stack, last);
                }
            }
            b'{' => {
                let close = b[i..].iter().position(|&x| x == b'}').map(|p| i + p);
                if let Some(close) = close {
                    let inner = &source[i + 1..close];
                    let mut parts = inner.split(',');
                    let lo: u64 = parts
                        .next()
                        .and_then(|x| x.trim().parse().ok())
                        .unwrap_or(1);
                    let hi: u64 = match parts.next() {
                        Some(h) if h.trim().is_empty() => lo + 1,
                        Some(h) => h.trim().parse().unwrap_or(lo),
                        None => lo,
                    };
                    let extra = last.saturating_mul(hi.max(1).saturating_sub(1));
                    add(&mut stack, extra);
                    i = close;
                } else {
                    last = 1;
                    add(&mut stack, 1);
                }
            }
            b'*' | b'+' | b'?' => {}
            _ => {
                last = 1;
                add(&mut stack, 1);
            }
        }
        i += 1;
    }
    stack
        .iter()
        .map(|(c, w)| (*c).max(*w))
        .fold(0u64, u64::saturating_add)
}

fn add(stack: &mut [(u64, u64)], v: u64) {
    if let Some(top) = stack.last_mut() {
        top.0 = top.0.saturating_add(v);
    }
}

/// The headers a SpamAssassin composite name stands for (`ToCc`, `MESSAGEID`), by its
/// [`header_key`]; empty for an ordinary header.
fn composite_parts(key: &str) -> &'static [&'static str] {
    match key {
        ":tocc" => &["to", "cc"],
        ":messageid" => &["message-id", "resent-message-id", "x-message-id"],
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mime::{Limits, parse};
    use crate::sa::parse_files;

    fn compile(cf: &str) -> Compiled {
        let set = parse_files(&[("t.cf".into(), cf.as_bytes().to_vec())]);
        Compiled::compile(&set).expect("compiles")
    }

    fn names_hit(c: &Compiled, msg: &[u8]) -> Vec<String> {
        let v = parse(msg, &Limits::default());
        let mut s = Scanner::new(c).expect("scanner");
        let pseudo = PseudoHeaders {
            values: vec![("EnvelopeFrom", "bounce@sender.example".into())],
        };
        let hits = s.scan(c, &v, &pseudo, |n| n == "check_for_missing_to_header");
        c.rules
            .iter()
            .enumerate()
            .filter(|(i, _)| hits.hit(*i))
            .map(|(_, r)| r.name.clone())
            .collect()
    }

    const RULES: &str = r#"
header SUBJ_FREE   Subject =~ /\bfree\b/i
header FROM_BANK   From:addr =~ /\@bank\.example$/
header FROM_NAME   From:name =~ /^Big/
header NO_XM       X-Mailer !~ /./
header ENV_SENDER  EnvelopeFrom =~ /^bounce\@/
header UNSET       X-Nothing =~ /^none$/ [if-unset: none]
header HAS_DATE    exists:Date
body   BODY_WIN    /you (?:have )?won/i
body   LOOKBEHIND  /(?<!not )guaranteed/i
body   BACKREF     /(\w)\1\1\1/
rawbody RAW_HREF   /<a href=/i
uri    URI_BANK    /^https?:\/\/login\.bank\.example/
full   FULL_RCVD   /^Received: from/m
mimeheader MIME_PDF Content-Type =~ /application\/pdf/
header ALWAYS_NATIVE eval:check_for_missing_to_header()
meta   COMBO       SUBJ_FREE && BODY_WIN && !NO_SUCH_RULE
meta   COMBO2      COMBO + LOOKBEHIND + BACKREF >= 3
"#;

    const MSG: &[u8] = b"Received: from x\r\nFrom: Big Bank <alerts@bank.example>\r\n\
Subject: FREE prize\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\
Content-Type: text/html\r\n\r\n<p>You have WON, guaranteed. zzzz \
<a href=\"https://login.bank.example/x\">here</a></p>\r\n--b\r\n\
Content-Type: application/pdf\r\n\r\n%PDF\r\n--b--\r\n";

    #[test]
    fn every_rule_class_matches() {
        let c = compile(RULES);
        let modes = c.modes();
        assert_eq!(modes.prefilter + modes.pcre, 2, "{modes:?}");
        let hits = names_hit(&c, MSG);
        for want in [
            "SUBJ_FREE",
            "FROM_BANK",
            "FROM_NAME",
            "NO_XM",
            "ENV_SENDER",
            "UNSET",
            "BODY_WIN",
            "LOOKBEHIND",
            "BACKREF",
            "RAW_HREF",
            "URI_BANK",
            "FULL_RCVD",
            "MIME_PDF",
            "ALWAYS_NATIVE",
            "COMBO",
            "COMBO2",
        ] {
            assert!(hits.iter().any(|h| h == want), "{want} not hit: {hits:?}");
        }
        assert!(!hits.iter().any(|h| h == "HAS_DATE"), "{hits:?}");
    }

    #[test]
    fn message_id_and_tocc_read_as_spamassassin_reads_them() {
        // Regression: a Message-ID lost its angle brackets (mail-parser's structured
        // reading) and exists:ToCc never held, so INVALID_MSGID and
        // REPLYTO_WITHOUT_TO_CC hit nearly all ham.
        let c = compile(
            r#"
header __SANE_MSGID MESSAGEID =~ /^<[^<>\\ \t\n\r\x0b\x80-\xff]+\@[^<>\\ \t\n\r\x0b\x80-\xff]+>\s*$/m
header __HAS_MSGID MESSAGEID =~ /\S/
meta INVALID_MSGID __HAS_MSGID && !__SANE_MSGID
score INVALID_MSGID 1
header __HAS_REPLY_TO exists:Reply-To
header __TOCC_EXISTS exists:ToCc
meta REPLYTO_WITHOUT_TO_CC __HAS_REPLY_TO && !__TOCC_EXISTS
score REPLYTO_WITHOUT_TO_CC 1
header __HAS_MESSAGEID exists:MessageID
meta MSGID_HDR_MALF __HAS_MESSAGEID
score MSGID_HDR_MALF 1
"#,
        );
        let msg = b"From: a@b.example\r\nTo: c@d.example\r\nReply-To: e@f.example\r\nMessage-ID: <123@b.example>\r\n\r\nhi\r\n";
        let hits = names_hit(&c, msg);
        assert!(hits.iter().any(|h| h == "__SANE_MSGID"), "{hits:?}");
        assert!(!hits.iter().any(|h| h == "INVALID_MSGID"), "{hits:?}");
        assert!(
            !hits.iter().any(|h| h == "REPLYTO_WITHOUT_TO_CC"),
            "{hits:?}"
        );
        let no_to = b"From: a@b.example\r\nReply-To: e@f.example\r\nMessage-ID: 123\r\n\r\nhi\r\n";
        let hits = names_hit(&c, no_to);
        assert!(hits.iter().any(|h| h == "INVALID_MSGID"), "{hits:?}");
        assert!(
            hits.iter().any(|h| h == "REPLYTO_WITHOUT_TO_CC"),
            "{hits:?}"
        );
    }

    #[test]
    fn confirmation_rejects_prefilter_candidates() {
        let c = compile(RULES);
        let msg = b"Subject: x\r\n\r\nnot guaranteed, abab\r\n";
        let hits = names_hit(&c, msg);
        assert!(!hits.iter().any(|h| h == "LOOKBEHIND"), "{hits:?}");
        assert!(!hits.iter().any(|h| h == "BACKREF"), "{hits:?}");
    }

    #[test]
    fn serialized_sets_scan_the_same() {
        let c = compile(RULES);
        let bytes = c.to_bytes();
        let loaded = Compiled::from_bytes(&bytes).expect("loads");
        assert_eq!(names_hit(&c, MSG), names_hit(&loaded, MSG));
        assert!(Compiled::from_bytes(&bytes[..bytes.len() - 10]).is_err());
        assert!(Compiled::from_bytes(b"garbage").is_err());
    }

    #[test]
    fn meta_cycles_and_bad_expressions_are_errors() {
        let set = parse_files(&[("c.cf".into(), b"meta A B\nmeta B A\n".to_vec())]);
        let e = Compiled::compile(&set).expect_err("cycle");
        assert!(e.to_string().contains("cycle"), "{e}");
        let set = parse_files(&[("c.cf".into(), b"meta A (B &&\n".to_vec())]);
        let e = Compiled::compile(&set).expect_err("syntax");
        assert!(e.to_string().contains("c.cf:1"), "{e}");
    }
}
