//! SpamAssassin `.cf` files read into Bulwark rules: `header`, `body`, `rawbody`, `uri`,
//! `full`, `mimeheader`, `meta`, `score`, `describe`, `tflags`, with `if`/`ifplugin`
//! blocks and the ReplaceTags plugin's `replace_*` directives. `eval:` rules become
//! native checks where Bulwark implements them ([`crate::native::EVALS`]) and are
//! reported as skipped otherwise; so are `lang` rules and rules that need the network.

use std::collections::HashMap;

use crate::expr;
use crate::rules::{Class, HeaderTarget, Origin, Pattern, Rule, RuleSet, Skipped, Test};

/// The SpamAssassin version `if (version >= …)` conditions are evaluated against.
const SA_VERSION: f64 = 4.000001;

/// Parses files in order (later definitions replace earlier ones; scores, descriptions
/// and flags may come from any file).
pub fn parse_files(files: &[(String, Vec<u8>)]) -> RuleSet {
    let mut p = Parser::default();
    for (name, bytes) in files {
        // Rule files are byte strings (patterns carry `\xNN` escapes and Latin-1
        // text): read them as Latin-1 so no line is lost to a decoding error.
        let text: String = bytes.iter().map(|&b| b as char).collect();
        p.file(name, &text);
    }
    p.finish()
}

#[derive(Default)]
struct Parser {
    rules: Vec<Rule>,
    index: HashMap<String, usize>,
    skipped: Vec<Skipped>,
    scores: HashMap<String, ([f64; 4], Origin)>,
    describes: HashMap<String, String>,
    tflags: HashMap<String, Vec<String>>,
    replace_tags: HashMap<String, String>,
    replace_pre: HashMap<String, String>,
    replace_inter: HashMap<String, String>,
    replace_post: HashMap<String, String>,
    replace_rules: Vec<String>,
}

/// One open `if`/`ifplugin` block: whether its lines are in force.
struct Cond {
    active: bool,
    parent_active: bool,
}

impl Parser {
    fn file(&mut self, file: &str, text: &str) {
        let mut conds: Vec<Cond> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let origin = Origin {
                file: file.to_string(),
                line: i + 1,
            };
            let line = strip_comment(line);
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let (directive, rest) = split_word(line);
            let active = conds.last().is_none_or(|c| c.active);
            match directive {
                "ifplugin" => {
                    // Every plugin whose rules this importer understands is taken as
                    // loaded; the eval rules of the others are reported as skipped.
                    conds.push(Cond {
                        active,
                        parent_active: active,
                    });
                    continue;
                }
                "if" => {
                    let v = eval_condition(rest);
                    conds.push(Cond {
                        active: active && v,
                        parent_active: active,
                    });
                    continue;
                }
                "else" => {
                    if let Some(c) = conds.last_mut() {
                        c.active = c.parent_active && !c.active;
                    }
                    continue;
                }
                "endif" => {
                    conds.pop();
                    continue;
                }
                _ => {}
            }
            if !active {
                continue;
            }
            self.directive(directive, rest, origin);
        }
    }

    fn skip(&mut self, name: &str, origin: Origin, reason: impl Into<String>) {
        self.skipped.push(Skipped {
            name: name.to_string(),
            origin,
            reason: reason.into(),
        });
    }

    fn directive(&mut self, directive: &str, rest: &str, origin: Origin) {
        match directive {
            "header" | "body" | "rawbody" | "uri" | "full" | "mimeheader" => {
                let (name, def) = split_word(rest);
                if name.is_empty() {
                    return;
                }
                match self.test(directive, name, def) {
                    Ok(test) => self.define(name, test, origin),
                    Err(reason) => {
                        self.remove(name);
                        self.skip(name, origin, reason);
                    }
                }
            }
            "meta" => {
                let (name, def) = split_word(rest);
                if !name.is_empty() {
                    self.define(name, Test::Meta(def.to_string()), origin);
                }
            }
            "score" => {
                let (name, values) = split_word(rest);
                let nums: Vec<f64> = values
                    .split_whitespace()
                    .filter_map(|v| v.trim_matches(['(', ')']).parse().ok())
                    .collect();
                let scores = match nums.as_slice() {
                    [s] => [*s; 4],
                    [a, b, c, d, ..] => [*a, *b, *c, *d],
                    _ => return,
                };
                self.scores.insert(name.to_string(), (scores, origin));
            }
            "describe" => {
                let (name, text) = split_word(rest);
                self.describes.insert(name.to_string(), text.to_string());
            }
            "tflags" => {
                let (name, flags) = split_word(rest);
                self.tflags.insert(
                    name.to_string(),
                    flags.split_whitespace().map(str::to_string).collect(),
                );
            }
            "replace_tag" | "replace_pre" | "replace_inter" | "replace_post" => {
                let (tag, value) = split_word(rest);
                let map = match directive {
                    "replace_tag" => &mut self.replace_tags,
                    "replace_pre" => &mut self.replace_pre,
                    "replace_inter" => &mut self.replace_inter,
                    _ => &mut self.replace_post,
                };
                map.insert(tag.to_string(), value.to_string());
            }
            "replace_rules" => {
                self.replace_rules
                    .extend(rest.split_whitespace().map(str::to_string));
            }
            "lang" => {
                // Localised descriptions and rules for other languages' reports.
                let (_, inner) = split_word(rest);
                let (d, r) = split_word(inner);
                if matches!(d, "header" | "body" | "rawbody" | "uri" | "full" | "meta") {
                    let (name, _) = split_word(r);
                    self.skip(name, origin, "lang: a rule for one report language");
                }
            }
            _ => {}
        }
    }

    fn remove(&mut self, name: &str) {
        if let Some(i) = self.index.remove(name) {
            self.rules.remove(i);
            for v in self.index.values_mut() {
                if *v > i {
                    *v -= 1;
                }
            }
        }
    }

    fn define(&mut self, name: &str, test: Test, origin: Origin) {
        let rule = Rule::new(name, test, origin);
        match self.index.get(name) {
            Some(&i) => self.rules[i] = rule,
            None => {
                self.index.insert(name.to_string(), self.rules.len());
                self.rules.push(rule);
            }
        }
    }

    fn test(&self, kind: &str, name: &str, def: &str) -> Result<Test, String> {
        let class = match kind {
            "header" => Class::Header,
            "mimeheader" => Class::MimeHeader,
            "body" => Class::Body,
            "rawbody" => Class::RawBody,
            "uri" => Class::Uri,
            _ => Class::Full,
        };
        if let Some(eval) = def.strip_prefix("eval:") {
            let func = eval.split('(').next().unwrap_or("").trim();
            let call = native_name(func, eval);
            if crate::native::supported(&call) {
                return Ok(Test::Native(call));
            }
            return Err(format!("eval:{call} is not implemented"));
        }
        match class {
            Class::Header | Class::MimeHeader => {
                if let Some(h) = def.strip_prefix("exists:") {
                    return Ok(Test::Exists(h.trim().to_string()));
                }
                let (target, rest) = split_word(def);
                let rest = rest.trim_start();
                let (negate, re) = if let Some(r) = rest.strip_prefix("=~") {
                    (false, r)
                } else if let Some(r) = rest.strip_prefix("!~") {
                    (true, r)
                } else {
                    return Err("expected =~ or !~ after the header name".into());
                };
                let (source, flags, tail) = split_regex(re.trim_start())?;
                let mut header = HeaderTarget::parse(target)?;
                if let Some(unset) = tail
                    .trim()
                    .strip_prefix("[if-unset:")
                    .and_then(|t| t.strip_suffix(']'))
                {
                    header.if_unset = Some(unset.trim().to_string());
                }
                let source = latin1_escape(&self.replaced(name, &source));
                Ok(Test::Regex {
                    class,
                    header: Some(header),
                    pattern: Pattern::with_flags(&source, &flags)?,
                    negate,
                })
            }
            _ => {
                let (source, flags, _) = split_regex(def)?;
                let source = latin1_escape(&self.replaced(name, &source));
                Ok(Test::Regex {
                    class,
                    header: None,
                    pattern: Pattern::with_flags(&source, &flags)?,
                    negate: false,
                })
            }
        }
    }

    /// Applies ReplaceTags to a rule named in `replace_rules`: `<TAG>` becomes the
    /// tag's value, with `<pre X>`/`<post X>` around each tag and `<inter X>` between
    /// adjacent tags.
    fn replaced(&self, name: &str, source: &str) -> String {
        // replace_rules may come after the rule (it does in the stock files): check
        // both orders by applying at finish time too; here only known names.
        if !self.replace_rules.iter().any(|r| r == name) {
            return source.to_string();
        }
        apply_replace_tags(
            source,
            &self.replace_tags,
            &self.replace_pre,
            &self.replace_inter,
            &self.replace_post,
        )
    }

    fn finish(mut self) -> RuleSet {
        // Rules listed in replace_rules after their definition.
        let listed: std::collections::HashSet<String> =
            self.replace_rules.iter().cloned().collect();
        for rule in &mut self.rules {
            if !listed.contains(&rule.name) {
                continue;
            }
            if let Test::Regex { pattern, .. } = &mut rule.test
                && pattern.source.contains('<')
            {
                pattern.source = latin1_escape(&apply_replace_tags(
                    &pattern.source,
                    &self.replace_tags,
                    &self.replace_pre,
                    &self.replace_inter,
                    &self.replace_post,
                ));
            }
        }
        let mut skipped = std::mem::take(&mut self.skipped);
        let mut rules = Vec::with_capacity(self.rules.len());
        for mut rule in self.rules {
            if let Some((scores, _)) = self.scores.get(&rule.name) {
                rule.scores = *scores;
                rule.scored = true;
            }
            rule.describe = self.describes.remove(&rule.name);
            rule.tflags = self.tflags.remove(&rule.name).unwrap_or_default();
            // Network tests Bulwark answers itself (SPF, DKIM, DMARC, ARC: the engine's
            // sender authentication) are kept; the others need SpamAssassin's plugins.
            if rule.is_net() && !matches!(rule.test, Test::Meta(_) | Test::Native(_)) {
                skipped.push(Skipped {
                    name: rule.name.clone(),
                    origin: rule.origin.clone(),
                    reason: "tflags net: needs a network test".into(),
                });
                continue;
            }
            // A score of zero disables a rule (sub-rules and metas read by others are
            // kept: they score nothing anyway).
            if rule.scored && rule.scores.iter().all(|s| *s == 0.0) && !rule.is_subrule() {
                continue;
            }
            rules.push(rule);
        }
        RuleSet { rules, skipped }
    }
}

/// The native check name for an eval call: the function, or for the family of
/// `check_bayes(0.99, 1.00)`-style calls, the rule decides by its arguments.
fn native_name(func: &str, call: &str) -> String {
    let args = call
        .split_once('(')
        .map(|(_, a)| a.trim_end().trim_end_matches(')'))
        .unwrap_or("");
    let args: String = args
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '\'' && *c != '"')
        .collect();
    if args.is_empty() {
        func.to_string()
    } else {
        format!("{func}({args})")
    }
}

pub fn apply_replace_tags(
    source: &str,
    tags: &HashMap<String, String>,
    pre: &HashMap<String, String>,
    inter: &HashMap<String, String>,
    post: &HashMap<String, String>,
) -> String {
    // Take out the <pre X>, <inter X>, <post X> directives.
    let mut pre_v = String::new();
    let mut inter_v = String::new();
    let mut post_v = String::new();
    let mut s = source.to_string();
    for (kw, map, slot) in [
        ("<pre ", pre, &mut pre_v),
        ("<inter ", inter, &mut inter_v),
        ("<post ", post, &mut post_v),
    ] {
        while let Some(p) = s.find(kw) {
            let Some(e) = s[p..].find('>') else { break };
            let key = s[p + kw.len()..p + e].trim().to_string();
            *slot = map.get(&key).cloned().unwrap_or_default();
            s.replace_range(p..p + e + 1, "");
        }
    }
    // Replace each known <TAG>, inserting inter between adjacent tags.
    let mut out = String::with_capacity(s.len() * 4);
    let mut rest = s.as_str();
    let mut prev_was_tag = false;
    while let Some(p) = rest.find('<') {
        let tag_end = rest[p..].find('>').map(|e| p + e);
        let value = tag_end.and_then(|e| tags.get(&rest[p + 1..e]));
        match (tag_end, value) {
            (Some(e), Some(v)) => {
                out.push_str(&rest[..p]);
                if prev_was_tag && p == 0 {
                    out.push_str(&inter_v);
                }
                out.push_str(&pre_v);
                out.push_str(v);
                out.push_str(&post_v);
                rest = &rest[e + 1..];
                prev_was_tag = true;
            }
            _ => {
                out.push_str(&rest[..=p]);
                rest = &rest[p + 1..];
                prev_was_tag = false;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Evaluates an `if` condition: `can(…)`, `plugin(…)` and `has(…)` are true (the
/// features and plugins whose rules are read here), `!` negates, `version` is 4.0.
fn eval_condition(cond: &str) -> bool {
    let mut s = String::with_capacity(cond.len());
    let mut rest = cond;
    loop {
        let next = ["can(", "plugin(", "has("]
            .iter()
            .filter_map(|f| rest.find(f).map(|i| (i, f.len())))
            .min();
        let Some((start, flen)) = next else { break };
        let Some(close) = rest[start + flen..].find(')') else {
            break;
        };
        s.push_str(&rest[..start]);
        s.push_str(" 1 ");
        rest = &rest[start + flen + close + 1..];
    }
    s.push_str(rest);
    let s = s.replace("perl_version", "5.036");
    match expr::parse(&s, |name| if name == "version" { 0 } else { 1 }) {
        Ok(e) => e.eval(&[SA_VERSION, 0.0], &mut Vec::new()) != 0.0,
        Err(_) => false,
    }
}

/// Rule files are read as Latin-1, one char per octet; a pattern octet of 0x80 or more
/// must match that octet, so it is written as `\xHH` for the byte-level engines.
fn latin1_escape(s: &str) -> String {
    if s.is_ascii() {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if (c as u32) < 0x80 {
            out.push(c);
        } else {
            out.push_str(&format!("\\x{:02x}", (c as u32) & 0xff));
        }
    }
    out
}

/// Removes an unescaped `#` comment and unescapes `\#`, as SpamAssassin reads its files.
fn strip_comment(line: &str) -> String {
    let b = line.as_bytes();
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() && b[i + 1] == b'#' {
            out.push('#');
            i += 2;
            continue;
        }
        if b[i] == b'#' {
            break;
        }
        let c = line[i..].chars().next().unwrap_or(' ');
        out.push(c);
        i += c.len_utf8();
    }
    out
}

fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(p) => (&s[..p], s[p..].trim_start()),
        None => (s, ""),
    }
}

/// Splits a Perl regex literal (`/re/flags`, `m{re}flags`, `m!re!flags`) into source,
/// flags and whatever follows.
fn split_regex(s: &str) -> Result<(String, String, String), String> {
    let s = s.trim();
    let (open, body) = if let Some(r) = s.strip_prefix('m') {
        let mut it = r.chars();
        let d = it.next().ok_or("empty regex")?;
        (d, &r[d.len_utf8()..])
    } else if let Some(r) = s.strip_prefix('/') {
        ('/', r)
    } else {
        return Err("a pattern is /…/ or m{…}".into());
    };
    let close = match open {
        '{' => '}',
        '(' => ')',
        '[' => ']',
        '<' => '>',
        c => c,
    };
    let mut depth = 0usize;
    let mut escaped = false;
    let mut end = None;
    for (i, c) in body.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        if c == '\\' {
            escaped = true;
        } else if c == open && open != close {
            depth += 1;
        } else if c == close {
            if depth == 0 {
                end = Some(i);
                break;
            }
            depth -= 1;
        }
    }
    let end = end.ok_or("the pattern is not closed")?;
    let source = &body[..end];
    let after = &body[end + close.len_utf8()..];
    let flags_len = after
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(after.len());
    let source = if open == '/' {
        source.replace("\\/", "/")
    } else {
        source.to_string()
    };
    Ok((
        source,
        after[..flags_len].to_string(),
        after[flags_len..].to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> RuleSet {
        parse_files(&[("t.cf".to_string(), text.as_bytes().to_vec())])
    }

    #[test]
    fn rule_kinds_scores_and_conditions() {
        let set = parse(
            r#"
# a comment
header   SUBJ_X   Subject =~ /hello \# world/i
header   NO_DATE  Date !~ /./ [if-unset: none]
header   HAS_XM   exists:X-Mailer
body     GTUBE    /XJS\*C4JDBQADN1\.NSBN3\*2IDNEN\*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL\*C\.34X/
uri      URI_X    m{^https?://x\.example/}i
rawbody  RAW_X    m!<blink>!
full     FULL_X   /^Received:/m
mimeheader MIME_X Content-Type =~ /application\/x-msdownload/
meta     META_X   SUBJ_X && !HAS_XM
score    SUBJ_X   1.5
score    META_X   0 1 2 3
describe SUBJ_X   Subject says hello
tflags   HAS_XM   nice
if (version >= 3.004000)
body NEW_RULE /new/
else
body OLD_RULE /old/
endif
if !plugin(Mail::SpamAssassin::Plugin::ReplaceTags)
body NO_TAGS /x/
endif
ifplugin Mail::SpamAssassin::Plugin::Foo
body IN_PLUGIN /y/
endif
header EVAL_X eval:check_for_something_unknown()
lang de body DE_X /ja/
"#,
        );
        let names: Vec<&str> = set.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "SUBJ_X",
                "NO_DATE",
                "HAS_XM",
                "GTUBE",
                "URI_X",
                "RAW_X",
                "FULL_X",
                "MIME_X",
                "META_X",
                "NEW_RULE",
                "IN_PLUGIN"
            ]
        );
        let subj = &set.rules[0];
        assert_eq!(subj.scores, [1.5; 4]);
        assert_eq!(subj.describe.as_deref(), Some("Subject says hello"));
        match &subj.test {
            Test::Regex { pattern, .. } => {
                assert_eq!(pattern.source, "hello # world");
                assert!(pattern.caseless);
            }
            t => panic!("{t:?}"),
        }
        match &set.rules[1].test {
            Test::Regex { header, negate, .. } => {
                assert!(*negate);
                assert_eq!(
                    header.as_ref().and_then(|h| h.if_unset.as_deref()),
                    Some("none")
                );
            }
            t => panic!("{t:?}"),
        }
        match &set.rules[7].test {
            Test::Regex { pattern, class, .. } => {
                assert_eq!(*class, Class::MimeHeader);
                assert_eq!(pattern.source, "application/x-msdownload");
            }
            t => panic!("{t:?}"),
        }
        assert_eq!(set.rules[8].scores, [0.0, 1.0, 2.0, 3.0]);
        assert_eq!(set.rules[2].tflags, vec!["nice"]);
        let skipped: Vec<(&str, usize)> = set
            .skipped
            .iter()
            .map(|s| (s.name.as_str(), s.origin.line))
            .collect();
        assert!(skipped.contains(&("EVAL_X", 27)), "{skipped:?}");
        assert!(skipped.contains(&("DE_X", 28)), "{skipped:?}");
    }

    #[test]
    fn zero_score_disables_and_net_rules_are_skipped() {
        let set =
            parse("body A /a/\nscore A 0\nbody B /b/\ntflags B net\nbody __C /c/\nscore __C 0\n");
        let names: Vec<&str> = set.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, vec!["__C"]);
        assert_eq!(set.skipped[0].name, "B");
    }

    #[test]
    fn replace_tags_expand() {
        let set = parse(
            "replace_tag A [a@]\nreplace_tag B [b8]\nreplace_inter W1 \\W?\nreplace_post P2 {1,2}\n\
             body FUZZY /<inter W1><post P2>\\b<A><B>\\b/i\nreplace_rules FUZZY\n\
             rawbody LITERAL /<br>/\n",
        );
        match &set.rules[0].test {
            Test::Regex { pattern, .. } => {
                assert_eq!(pattern.source, "\\b[a@]{1,2}\\W?[b8]{1,2}\\b")
            }
            t => panic!("{t:?}"),
        }
        match &set.rules[1].test {
            Test::Regex { pattern, .. } => assert_eq!(pattern.source, "<br>"),
            t => panic!("{t:?}"),
        }
    }

    #[test]
    fn malformed_lines_are_skipped_not_fatal() {
        let set = parse("body A /never closed\nheader B Subject ~~ /x/\nbody C /ok/\n");
        assert_eq!(set.rules.len(), 1);
        assert_eq!(set.skipped.len(), 2);
        assert!(set.skipped[0].reason.contains("not closed"));
    }
}
