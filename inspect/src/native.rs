//! Checks implemented in code, for rules that SpamAssassin writes as `eval:` calls and
//! for Bulwark's own. A call is named with its arguments (`check_bayes(0.99,1.00)`);
//! only calls [`supported`] accepts are imported, the others are reported as skipped.

use crate::mime::Views;

/// What native checks read besides the views.
#[derive(Debug, Default, Clone, Copy)]
pub struct Context<'a> {
    /// The classifier's spam probability, when a model is loaded.
    pub spam_probability: Option<f64>,
    /// When the message arrived (Unix seconds).
    pub arrival: u64,
    /// Sender authentication, when it ran and finished in time.
    pub auth: Option<&'a AuthSummary>,
    /// What the phishing checks found.
    pub phish: Option<&'a crate::phishing::Findings>,
}

/// One authentication method's result (RFC 8601 result names).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum AuthResult {
    #[default]
    None,
    Pass,
    Fail,
    SoftFail,
    Neutral,
    TempError,
    PermError,
}

impl AuthResult {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthResult::None => "none",
            AuthResult::Pass => "pass",
            AuthResult::Fail => "fail",
            AuthResult::SoftFail => "softfail",
            AuthResult::Neutral => "neutral",
            AuthResult::TempError => "temperror",
            AuthResult::PermError => "permerror",
        }
    }
}

/// A DMARC policy as published (`p=`, or `sp=` for a subdomain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmarcPolicy {
    None,
    Quarantine,
    Reject,
}

/// What sender authentication found, as the rules read it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AuthSummary {
    /// SPF of the MAIL FROM identity (of the HELO identity for the null sender).
    pub spf: AuthResult,
    pub spf_helo: AuthResult,
    /// At least one DKIM signature is present.
    pub dkim_signed: bool,
    /// `d=` of every signature that verified (lower case).
    pub dkim_valid: Vec<String>,
    /// A verified signature's `d=` is the From domain (or a parent of it).
    pub dkim_author: bool,
    /// A verified signature's `d=` is the MAIL FROM domain.
    pub dkim_envelope: bool,
    pub arc_signed: bool,
    pub arc: AuthResult,
    pub dmarc: AuthResult,
    /// The From domain DMARC was evaluated for.
    pub dmarc_domain: String,
    /// The policy of the From domain, when it publishes one.
    pub dmarc_policy: Option<DmarcPolicy>,
    pub iprev: AuthResult,
    /// The client's name when iprev verified it (empty otherwise).
    pub rdns: String,
}

/// Whether `call` (function and arguments, as [`crate::sa`] names it) is implemented.
pub fn supported(call: &str) -> bool {
    let (func, args) = split_call(call);
    match func {
        "check_bayes" | "check_for_shifted_date" | "check_for_uppercase" => args.len() == 2,
        "check_body_length" => args.len() == 1,
        "check_illegal_chars" => args.len() == 3,
        "check_for_missing_to_header" | "check_messageid_not_usable" => args.is_empty(),
        "html_test" => args == ["html_message"],
        "check_msg_parse_flags" => matches!(
            args.as_slice(),
            ["missing_head_body_separator"] | ["truncated_header"]
        ),
        "check_dkim_signed" | "check_dkim_valid" => true,
        "check_dkim_valid_author_sig"
        | "check_dkim_valid_envelopefrom"
        | "check_arc_signed"
        | "check_arc_valid"
        | "check_dmarc_pass"
        | "check_dmarc_reject"
        | "check_dmarc_quarantine"
        | "check_dmarc_none"
        | "check_dmarc_missing" => args.is_empty(),
        "check_iprev" => args.len() == 1,
        "check_phish_link_mismatch"
        | "check_phish_lookalike_link"
        | "check_phish_lookalike_from"
        | "check_phish_brand_subdomain"
        | "check_uri_shortener"
        | "check_url_blocklist" => args.is_empty(),
        f => args.is_empty() && spf_check(f).is_some(),
    }
}

/// `check_for_spf_RESULT` and `check_for_spf_helo_RESULT`: (helo, result name).
fn spf_check(func: &str) -> Option<(bool, &str)> {
    let rest = func.strip_prefix("check_for_spf_")?;
    let (helo, name) = match rest.strip_prefix("helo_") {
        Some(n) => (true, n),
        None => (false, rest),
    };
    matches!(
        name,
        "pass" | "neutral" | "fail" | "softfail" | "none" | "permerror" | "temperror"
    )
    .then_some((helo, name))
}

fn evaluate_auth(func: &str, args: &[&str], a: &AuthSummary) -> bool {
    let unquote = |s: &str| {
        s.trim_matches(|c| c == '\'' || c == '"')
            .to_ascii_lowercase()
    };
    let failed = matches!(a.dmarc, AuthResult::Fail);
    match func {
        "check_dkim_signed" => a.dkim_signed,
        "check_dkim_valid" => {
            if args.is_empty() {
                !a.dkim_valid.is_empty()
            } else {
                args.iter()
                    .map(|d| unquote(d))
                    .any(|d| a.dkim_valid.contains(&d))
            }
        }
        "check_dkim_valid_author_sig" => a.dkim_author,
        "check_dkim_valid_envelopefrom" => a.dkim_envelope,
        "check_arc_signed" => a.arc_signed,
        "check_arc_valid" => a.arc == AuthResult::Pass,
        "check_dmarc_pass" => a.dmarc == AuthResult::Pass,
        "check_dmarc_reject" => failed && a.dmarc_policy == Some(DmarcPolicy::Reject),
        "check_dmarc_quarantine" => failed && a.dmarc_policy == Some(DmarcPolicy::Quarantine),
        "check_dmarc_none" => failed && a.dmarc_policy == Some(DmarcPolicy::None),
        "check_dmarc_missing" => a.dmarc_policy.is_none(),
        "check_iprev" => args.first().is_some_and(|r| a.iprev.as_str() == unquote(r)),
        f => match spf_check(f) {
            Some((false, name)) => a.spf.as_str() == name,
            Some((true, name)) => a.spf_helo.as_str() == name,
            None => false,
        },
    }
}

/// Evaluates a supported call; unsupported ones are false.
pub fn evaluate(call: &str, views: &Views<'_>, ctx: &Context) -> bool {
    let (func, args) = split_call(call);
    let num = |i: usize| args.get(i).and_then(|a| a.parse::<f64>().ok());
    match func {
        "check_bayes" => match (ctx.spam_probability, num(0), num(1)) {
            (Some(p), Some(lo), Some(hi)) => p >= lo && (p < hi || hi >= 1.0 && p <= hi),
            _ => false,
        },
        "check_for_shifted_date" => {
            let Some(date) = views.header("Date").and_then(|h| parse_date(&h.raw)) else {
                return false;
            };
            let shift = (date - ctx.arrival as i64) as f64 / 3600.0;
            let lo = args.first().and_then(|a| a.parse::<f64>().ok());
            let hi = args.get(1).and_then(|a| a.parse::<f64>().ok());
            lo.is_none_or(|l| shift >= l) && hi.is_none_or(|h| shift < h)
        }
        "check_body_length" => {
            let len = views.body_text().len();
            num(0).is_some_and(|n| (len as f64) < n)
        }
        "check_for_uppercase" => {
            // As SpamAssassin: only bodies of 200 characters or more, letters only.
            let body = views.body_text();
            if body.len() < 200 {
                return false;
            }
            let (mut upper, mut letters) = (0usize, 0usize);
            for c in body.chars().filter(|c| c.is_alphabetic()) {
                letters += 1;
                if c.is_uppercase() {
                    upper += 1;
                }
            }
            if letters == 0 {
                return false;
            }
            let pct = upper as f64 * 100.0 / letters as f64;
            matches!((num(0), num(1)), (Some(lo), Some(hi)) if pct >= lo && pct < hi)
        }
        "check_illegal_chars" => {
            let (Some(name), Some(ratio), Some(count)) = (args.first(), num(1), num(2)) else {
                return false;
            };
            let mut high = 0usize;
            let mut total = 0usize;
            for h in views
                .headers
                .iter()
                .filter(|h| name.eq_ignore_ascii_case("ALL") || h.name.eq_ignore_ascii_case(name))
            {
                // Encoded words are legal; raw 8-bit octets in a header are not.
                total += h.raw.len();
                high += h.raw.chars().filter(|c| !c.is_ascii()).count();
            }
            total > 0 && high as f64 >= count && high as f64 / total as f64 > ratio
        }
        "check_for_missing_to_header" => {
            views.header("To").is_none() && views.header("Apparently-To").is_none()
        }
        "check_messageid_not_usable" => views.header("Message-ID").is_none(),
        "html_test" => views.html_bytes > 0,
        "check_msg_parse_flags" => match args.first().copied() {
            Some("missing_head_body_separator") => {
                views.header_bytes == views.full.len() && !views.full.ends_with(b"\n\n")
            }
            Some("truncated_header") => views.limit == Some(crate::mime::LimitHit::HeaderBytes),
            _ => false,
        },
        "check_phish_link_mismatch" => ctx.phish.is_some_and(|p| !p.mismatched.is_empty()),
        "check_phish_lookalike_link" => ctx.phish.is_some_and(|p| !p.lookalike_links.is_empty()),
        "check_phish_lookalike_from" => ctx.phish.is_some_and(|p| p.lookalike_from.is_some()),
        "check_phish_brand_subdomain" => {
            ctx.phish.is_some_and(|p| !p.brand_in_subdomain.is_empty())
        }
        "check_uri_shortener" => ctx.phish.is_some_and(|p| p.shortened > 0),
        "check_url_blocklist" => ctx.phish.is_some_and(|p| !p.blocklisted.is_empty()),
        f => ctx.auth.is_some_and(|a| evaluate_auth(f, &args, a)),
    }
}

fn split_call(call: &str) -> (&str, Vec<&str>) {
    match call.split_once('(') {
        Some((f, rest)) => {
            let inner = rest.trim_end_matches(')');
            let args = if inner.is_empty() {
                Vec::new()
            } else {
                inner.split(',').map(str::trim).collect()
            };
            (f, args)
        }
        None => (call, Vec::new()),
    }
}

/// Parses an RFC 5322 date (`[Day, ]DD Mon YYYY HH:MM[:SS] zone`) to Unix seconds.
pub fn parse_date(s: &str) -> Option<i64> {
    let s = s.trim();
    let s = match s.find(',') {
        Some(p) => &s[p + 1..],
        None => s,
    };
    let mut it = s.split_whitespace();
    let day: i64 = it.next()?.parse().ok()?;
    let mon = it.next()?.to_ascii_lowercase();
    let month = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ]
    .iter()
    .position(|m| mon.starts_with(m))? as i64
        + 1;
    let mut year: i64 = it.next()?.parse().ok()?;
    if year < 50 {
        year += 2000;
    } else if year < 1000 {
        year += 1900;
    }
    let time = it.next()?;
    let mut t = time.split(':');
    let h: i64 = t.next()?.parse().ok()?;
    let m: i64 = t.next()?.parse().ok()?;
    let sec: i64 = t.next().and_then(|x| x.parse().ok()).unwrap_or(0);
    let zone = it.next().unwrap_or("+0000");
    let offset = if let Some(z) = zone.strip_prefix(['+', '-']) {
        let v: i64 = z.get(..4)?.parse().ok()?;
        let secs = (v / 100) * 3600 + (v % 100) * 60;
        if zone.starts_with('-') { -secs } else { secs }
    } else {
        match zone.to_ascii_uppercase().as_str() {
            "EST" => -5 * 3600,
            "EDT" => -4 * 3600,
            "CST" => -6 * 3600,
            "CDT" => -5 * 3600,
            "MST" => -7 * 3600,
            "MDT" => -6 * 3600,
            "PST" => -8 * 3600,
            "PDT" => -7 * 3600,
            _ => 0,
        }
    };
    if !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86400 + h * 3600 + m * 60 + sec - offset)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mime::{Limits, parse};

    #[test]
    fn dates_parse() {
        assert_eq!(parse_date("Thu, 01 Jan 1970 00:00:00 +0000"), Some(0));
        assert_eq!(parse_date("1 Jan 1970 01:00 +0100"), Some(0));
        assert_eq!(
            parse_date("Mon, 30 Nov 2026 12:00:00 -0500 (EST)"),
            Some(1_796_058_000)
        );
        assert_eq!(parse_date("garbage"), None);
    }

    #[test]
    fn calls_evaluate() {
        let m = b"Date: Mon, 30 Nov 2026 00:00:00 +0000\r\nSubject: hi\r\n\r\nbody\r\n";
        let v = parse(m, &Limits::default());
        let arrival = parse_date("Mon, 30 Nov 2026 12:00:00 +0000").unwrap_or(0) as u64;
        let ctx = Context {
            auth: None,
            phish: None,
            spam_probability: Some(0.995),
            arrival,
        };
        assert!(supported("check_bayes(0.99,1.00)"));
        assert!(evaluate("check_bayes(0.99,1.00)", &v, &ctx));
        assert!(!evaluate("check_bayes(0.00,0.01)", &v, &ctx));
        assert!(evaluate("check_for_shifted_date(-24,-6)", &v, &ctx));
        assert!(!evaluate("check_for_shifted_date(-6,-3)", &v, &ctx));
        assert!(evaluate("check_body_length(128)", &v, &ctx));
        assert!(evaluate("check_for_missing_to_header()", &v, &ctx));
        assert!(!evaluate("html_test(html_message)", &v, &ctx));
        assert!(!supported("html_test(html_font_face_bad)"));
        assert!(!supported("check_rbl(zen,zen.spamhaus.org)"));
    }

    #[test]
    fn uppercase_check_on_an_unparseable_message_does_not_panic() {
        // Found by fuzzing: no Subject, and a body starting with a multi-octet letter.
        let raw = b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xbf\xff\xff\xff\xffw\xb0.pqypal.de/mro\r\n<p>Dygccounk</a></p>\r\n";
        let v = crate::mime::parse(raw, &crate::mime::Limits::default());
        let ctx = Context::default();
        let _ = evaluate("check_for_uppercase(75,100)", &v, &ctx);
        let _ = evaluate("check_body_length(250)", &v, &ctx);
        assert!(v.body_text().len() <= v.body.len());
    }
}
