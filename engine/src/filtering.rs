//! The filtering policy of a transaction: the verdict classes' thresholds and actions for
//! its recipients' domain, and the policy rules that apply to it.
//!
//! A transaction has one filtering policy: a recipient whose policy differs from the
//! first recipient's (another domain with its own thresholds and actions, or a policy
//! rule naming some recipients and not others) is deferred with `452 4.5.3`, and the
//! client sends it in a transaction of its own (RFC 5321 §3.3), so a `550` after DATA
//! only ever refuses mail for recipients whose policy says so.

use bulwark_inspect::inspector::{Action, Classes, Report, Verdicts};
use bulwark_inspect::malware;
use bulwark_policy::ArchivedPolicy;
use bulwark_policy::filtering::{
    ArchivedVerdictPolicy, AttachmentFacts, FilterAction, ScanFailure, VerdictClass,
    header_contains,
};

use crate::policy::domain_of;

/// Which filtering policy applies to a recipient, as a number: two recipients may share
/// a transaction when theirs are equal. Allocation-free.
pub fn class_of(policy: &ArchivedPolicy, rcpt: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut mix = |x: &[u8]| {
        for b in x {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    if let Some(d) = policy.domain(domain_of(rcpt))
        && !d.verdicts.is_empty()
    {
        mix(d.name.as_bytes());
    }
    for (i, r) in policy.rules.iter().enumerate() {
        if r.has_recipients() && r.recipient_matches(rcpt) {
            mix(&(i as u64).to_le_bytes());
        }
    }
    h
}

pub fn to_action(a: FilterAction) -> Action {
    match a {
        FilterAction::Deliver => Action::Deliver,
        FilterAction::Tag => Action::Tag,
        FilterAction::Strip => Action::Strip,
        FilterAction::Quarantine => Action::Quarantine,
        FilterAction::Reject => Action::Reject,
    }
}

fn apply(v: &mut Verdicts, o: &ArchivedVerdictPolicy) {
    let o = o.to_native();
    let score = |x: i64| x as f64 / 1000.0;
    if let Some(x) = o.tag_threshold {
        v.tag_threshold = score(x);
    }
    if let Some(x) = o.spam_threshold {
        v.spam_threshold = score(x);
    }
    for (slot, a) in [
        (&mut v.spam_action, o.spam_action),
        (&mut v.phishing_action, o.phishing_action),
        (&mut v.malformed_action, o.malformed_action),
        (&mut v.dmarc_reject_action, o.dmarc_reject_action),
        (&mut v.dmarc_quarantine_action, o.dmarc_quarantine_action),
        (&mut v.virus_action, o.virus_action),
        (&mut v.limit_action, o.limit_action),
    ] {
        if let Some(a) = a {
            *slot = to_action(a);
        }
    }
    if let Some(t) = o.subject_tag {
        v.subject_tag = t;
    }
}

/// The thresholds and actions for mail to `rcpt`: the engine's own, then the snapshot's
/// global ones, then the recipient's domain's. `None` when neither changes anything.
pub fn verdicts_for(base: &Verdicts, policy: &ArchivedPolicy, rcpt: &str) -> Option<Verdicts> {
    let domain = policy
        .domain(domain_of(rcpt))
        .filter(|d| !d.verdicts.is_empty());
    if policy.verdicts.is_empty() && domain.is_none() {
        return None;
    }
    let mut v = base.clone();
    apply(&mut v, &policy.verdicts);
    if let Some(d) = domain {
        apply(&mut v, &d.verdicts);
    }
    // A domain may raise the tag threshold past an inherited spam threshold; keep the
    // order (the spam threshold wins).
    if v.tag_threshold > v.spam_threshold {
        v.tag_threshold = v.spam_threshold;
    }
    Some(v)
}

/// Whether a clamd that cannot answer defers mail to `rcpt` (`451 4.7.0`) rather than
/// tagging it: the recipient's domain's choice, else the snapshot's global one, else
/// `default` (`[antivirus] on_failure`).
pub fn clamd_tempfail(default: bool, policy: &ArchivedPolicy, rcpt: &str) -> bool {
    let choice = policy
        .domain(domain_of(rcpt))
        .and_then(|d| d.verdicts.antivirus_on_failure.as_ref())
        .or(policy.verdicts.antivirus_on_failure.as_ref());
    match choice.map(|c| c.to_native()) {
        Some(ScanFailure::Tempfail) => true,
        Some(ScanFailure::Tag) => false,
        None => default,
    }
}

/// The set of verdict classes (as [`VerdictClass::bit`]s) a report found.
pub fn class_bits(c: &Classes) -> u8 {
    let mut bits = 0;
    for (on, class) in [
        (c.suspect, VerdictClass::Suspect),
        (c.spam, VerdictClass::Spam),
        (c.phishing, VerdictClass::Phishing),
        (c.authfail, VerdictClass::AuthFail),
        (c.malformed, VerdictClass::Malformed),
        (c.virus, VerdictClass::Virus),
        (c.limit, VerdictClass::Limit),
    ] {
        if on {
            bits |= class.bit();
        }
    }
    if bits == 0 {
        bits = VerdictClass::Clean.bit();
    }
    bits
}

/// A policy rule that holds for a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleMatch {
    /// Its index in the snapshot's rules.
    pub index: usize,
    pub action: Action,
    /// The leaf parts holding the attachments its attachment conditions matched (what
    /// `strip` removes); empty for a rule without them.
    pub parts: Vec<usize>,
}

/// The first policy rule whose conditions hold for this message. `content` is the
/// message (or its first piece: header conditions only need the header section); `size`
/// the bounds known of its full size (equal once whole). Attachment conditions see the
/// attachments in `report.malware` (found by the built-in scan).
pub fn first_rule(
    policy: &ArchivedPolicy,
    sender: &str,
    rcpt: &str,
    content: &[u8],
    size: (u64, u64),
    report: &Report,
) -> Option<RuleMatch> {
    let classes = class_bits(&report.classes);
    let m = &report.malware;
    policy.rules.iter().enumerate().find_map(|(i, r)| {
        let holds = r.sender_matches(sender)
            && r.recipient_matches(rcpt)
            && r.result_matches(size, report.score, classes)
            && (!r.unscannable || !m.unscannable.is_empty())
            && (r.header.is_empty() || header_contains(content, r.header.as_str(), &r.contains));
        if !holds {
            return None;
        }
        let mut parts = Vec::new();
        if !r.attachment.is_empty() {
            for a in &m.attachments {
                let name = a.name.as_deref();
                let extension = name.and_then(malware::extension);
                let facts = AttachmentFacts {
                    name,
                    kinds: a.true_type.kinds(),
                    extension: extension.as_deref(),
                    double_extension: name.is_some_and(malware::double_extension),
                    size: a.size,
                    encrypted: a.encrypted,
                };
                if r.attachment.matches(&facts) && !parts.contains(&a.part) {
                    parts.push(a.part);
                }
            }
            if parts.is_empty() {
                return None;
            }
        }
        Some(RuleMatch {
            index: i,
            action: to_action(r.action.to_native()),
            parts,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulwark_policy::filtering::{RuleSpec, VerdictSpec, compile_rules};
    use bulwark_policy::{Domain, Policy, Snapshot};

    fn first(
        policy: &ArchivedPolicy,
        sender: &str,
        rcpt: &str,
        content: &[u8],
        size: (u64, u64),
        report: &Report,
    ) -> Option<(usize, Action)> {
        first_rule(policy, sender, rcpt, content, size, report).map(|m| (m.index, m.action))
    }

    fn snapshot() -> Snapshot {
        let strict = VerdictSpec {
            spam_threshold: Some(6.0),
            spam_action: Some("quarantine".into()),
            subject_tag: Some("[S] ".into()),
            ..Default::default()
        };
        let rules = compile_rules(&[
            RuleSpec {
                name: "ceo".into(),
                recipients: vec!["boss@strict.test".into()],
                header: Some("Subject".into()),
                contains: vec!["wire transfer".into()],
                action: "quarantine".into(),
                ..Default::default()
            },
            RuleSpec {
                name: "big-spam".into(),
                min_size: Some(100),
                verdicts: vec!["spam".into(), "suspect".into()],
                action: "reject".into(),
                ..Default::default()
            },
        ])
        .unwrap();
        let p = Policy {
            domains: vec![
                Domain {
                    name: "strict.test".into(),
                    verdicts: strict.compile().unwrap(),
                    ..Default::default()
                },
                Domain {
                    name: "plain.test".into(),
                    ..Default::default()
                },
                Domain {
                    name: "other.test".into(),
                    ..Default::default()
                },
            ],
            rules,
            ..Default::default()
        };
        Snapshot::from_policy(&p).unwrap()
    }

    #[test]
    fn every_true_type_and_group_can_be_named_by_a_rule() {
        use bulwark_inspect::attach::TrueType;
        use bulwark_policy::filtering::ATTACHMENT_TYPES;
        for t in TrueType::ALL {
            assert_eq!(t.kinds()[0], t.label());
            for k in t.kinds() {
                assert!(ATTACHMENT_TYPES.contains(k), "{k}");
            }
        }
        for name in ATTACHMENT_TYPES {
            assert!(
                TrueType::ALL.iter().any(|t| t.kinds().contains(name)),
                "{name} names nothing"
            );
        }
    }

    #[test]
    fn recipients_share_a_transaction_only_with_the_same_policy() {
        let s = snapshot();
        let p = s.policy();
        assert_eq!(class_of(p, "a@plain.test"), class_of(p, "b@other.test"));
        assert_ne!(class_of(p, "a@plain.test"), class_of(p, "a@strict.test"));
        assert_ne!(
            class_of(p, "boss@strict.test"),
            class_of(p, "a@strict.test")
        );
        assert_eq!(class_of(p, "x@strict.test"), class_of(p, "Y@STRICT.test"));
    }

    #[test]
    fn domain_verdicts_override_the_engines() {
        let s = snapshot();
        let base = Verdicts::default();
        assert!(verdicts_for(&base, s.policy(), "a@plain.test").is_none());
        let v = verdicts_for(&base, s.policy(), "a@strict.test").unwrap();
        assert_eq!(v.spam_threshold, 6.0);
        assert_eq!(v.spam_action, Action::Quarantine);
        assert_eq!(v.tag_threshold, base.tag_threshold);
        assert_eq!(v.subject_tag, "[S] ");
        assert_eq!(v.phishing_action, base.phishing_action);
    }

    #[test]
    fn rules_are_tried_in_order() {
        let s = snapshot();
        let p = s.policy();
        let mut report = Report {
            score: 0.0,
            hits: Vec::new(),
            verdict: bulwark_inspect::inspector::Verdict::Clean,
            classes: Classes::default(),
            tag_threshold: 5.0,
            spam_threshold: 15.0,
            subject: String::new(),
            action: Action::Deliver,
            policy_rule: None,
            probability: None,
            truncated: false,
            parse_time: Default::default(),
            rules_time: Default::default(),
            pcre_limit: 0,
            malware: Default::default(),
        };
        let msg = b"Subject: Urgent WIRE\r\n transfer today\r\n\r\nbody\r\n";
        assert_eq!(
            first(p, "x@y.test", "boss@strict.test", msg, (10, 10), &report),
            Some((0, Action::Quarantine))
        );
        assert_eq!(
            first(p, "x@y.test", "clerk@strict.test", msg, (10, 10), &report),
            None
        );
        report.classes.suspect = true;
        assert_eq!(
            first(p, "x@y.test", "clerk@strict.test", msg, (10, 10), &report),
            None,
            "below min_size"
        );
        assert_eq!(
            first(p, "x@y.test", "clerk@strict.test", msg, (100, 100), &report),
            Some((1, Action::Reject))
        );
        // A message still arriving: 50 octets so far, size unknown. `min_size = 100` is
        // not known to hold yet.
        assert_eq!(
            first(
                p,
                "x@y.test",
                "clerk@strict.test",
                msg,
                (50, u64::MAX),
                &report
            ),
            None
        );
    }
}
