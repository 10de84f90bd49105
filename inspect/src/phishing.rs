//! Phishing checks over a message's links and sender: a link whose visible text names
//! one site while it goes to another; names that imitate a protected domain (the
//! managed domains and a brand list) by homoglyphs, IDN look-alike letters, one edit, or
//! by carrying the brand as a subdomain of someone else's site; URL shorteners; and a URL
//! blocklist kept as SHA-256 hashes of host/path expressions, looked up the way Safe
//! Browsing does (host suffixes × path prefixes).
//!
//! The findings feed native rules (`check_phish_*`), so they are scored and named in the
//! result headers like any rule; the blocklist rule decides the `phishing` verdict.

use std::collections::{HashMap, HashSet};

use sha2::{Digest, Sha256};

use crate::mime::Views;

/// Brands imitated most often, protected when no list is configured.
pub const DEFAULT_BRANDS: &[&str] = &[
    "paypal.com",
    "apple.com",
    "icloud.com",
    "microsoft.com",
    "office.com",
    "outlook.com",
    "live.com",
    "google.com",
    "gmail.com",
    "amazon.com",
    "netflix.com",
    "facebook.com",
    "instagram.com",
    "linkedin.com",
    "dhl.com",
    "fedex.com",
    "ups.com",
    "usps.com",
    "docusign.com",
    "dropbox.com",
    "adobe.com",
    "wellsfargo.com",
    "chase.com",
    "bankofamerica.com",
    "americanexpress.com",
    "citibank.com",
    "hsbc.com",
    "coinbase.com",
    "binance.com",
    "steampowered.com",
    "irs.gov",
];

/// URL shorteners, when no list is configured.
pub const DEFAULT_SHORTENERS: &[&str] = &[
    "bit.ly",
    "bitly.com",
    "tinyurl.com",
    "t.co",
    "goo.gl",
    "ow.ly",
    "is.gd",
    "buff.ly",
    "rebrand.ly",
    "cutt.ly",
    "shorturl.at",
    "tiny.cc",
    "rb.gy",
    "t.ly",
    "s.id",
    "v.gd",
    "bl.ink",
    "short.io",
    "lnkd.in",
    "soo.gd",
    "clck.ru",
    "qrco.de",
];

/// Second-level labels under which ccTLDs register names (`example.co.uk`).
const SECOND_LEVEL: &[&str] = &[
    "co", "com", "net", "org", "gov", "edu", "ac", "ne", "or", "go", "gob", "mil", "nic",
];

/// The registrable part of a host name (its "organizational domain"): the last two
/// labels, or three under a ccTLD's common second level (`co.uk`, `com.au`). An
/// approximation of the Public Suffix List that needs no data file.
pub fn registrable(host: &str) -> &str {
    let host = host.trim_end_matches('.');
    if host.parse::<std::net::IpAddr>().is_ok() {
        return host;
    }
    let labels: Vec<&str> = host.rsplitn(4, '.').collect();
    let keep = if labels.len() >= 3 && labels[0].len() == 2 && SECOND_LEVEL.contains(&labels[1]) {
        3
    } else {
        2
    };
    if labels.len() <= keep {
        return host;
    }
    let cut: usize = labels[..keep].iter().map(|l| l.len() + 1).sum();
    &host[host.len() + 1 - cut..]
}

/// The registrable domain's own label (`paypal` of `www.paypal.co.uk`).
fn name_label(reg: &str) -> &str {
    reg.split('.').next().unwrap_or(reg)
}

/// A name in Unicode (IDN labels decoded), lower case.
fn unicode(host: &str) -> String {
    if host.split('.').any(|l| l.starts_with("xn--")) {
        let (u, r) = idna::domain_to_unicode(host);
        if r.is_ok() {
            return u.to_lowercase();
        }
    }
    host.to_lowercase()
}

/// What a name looks like: letters and digits that pass for others mapped to them
/// (Cyrillic and Greek look-alikes, `0`→`o`, `1`→`l`, `rn`→`m`, `vv`→`w`), hyphens gone.
pub fn skeleton(label: &str) -> String {
    let mut out = String::with_capacity(label.len());
    for c in label.chars() {
        let m = match c {
            'а' | 'α' => 'a',
            'с' | 'ϲ' => 'c',
            'ԁ' => 'd',
            'е' | 'ε' | '3' => 'e',
            'һ' => 'h',
            'і' | 'ı' | 'ɩ' | '!' => 'i',
            'ј' => 'j',
            'к' | 'κ' => 'k',
            '1' | 'ӏ' | '|' | 'ℓ' | 'I' => 'l',
            'м' => 'm',
            'п' | 'η' => 'n',
            'о' | 'ο' | '0' | 'ө' => 'o',
            'р' | 'ρ' => 'p',
            'ԛ' => 'q',
            'ѕ' | '5' | '$' => 's',
            'т' | 'τ' => 't',
            'υ' | 'ս' => 'u',
            'ν' | 'ѵ' => 'v',
            'ԝ' | 'ω' => 'w',
            'х' | 'χ' => 'x',
            'у' | 'γ' => 'y',
            'ᴢ' => 'z',
            '-' | '_' => continue,
            c => c,
        };
        out.push(m);
    }
    out.replace("rn", "m").replace("vv", "w")
}

/// Optimal string alignment distance (3 when the lengths alone differ by more than 2).
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    if a.len().abs_diff(b.len()) > 2 {
        return 3;
    }
    let w = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * w];
    for i in 0..=a.len() {
        d[i * w] = i;
    }
    for (j, v) in d.iter_mut().enumerate().take(w) {
        *v = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[(i - 1) * w + j] + 1)
                .min(d[i * w + j - 1] + 1)
                .min(d[(i - 1) * w + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[(i - 2) * w + j - 2] + 1);
            }
            d[i * w + j] = v;
        }
    }
    d[a.len() * w + b.len()]
}

/// The strings one deletion away, and the string itself.
fn deletes(s: &str) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::with_capacity(chars.len() + 1);
    out.push(s.to_string());
    for i in 0..chars.len() {
        let mut v = String::with_capacity(s.len());
        v.extend(chars[..i].iter().chain(&chars[i + 1..]));
        out.push(v);
    }
    out
}

/// The shortest protected label for which one edit counts as imitation (shorter names
/// are one edit from too many real ones).
const MIN_TYPO_LABEL: usize = 5;

/// URL blocklist: full SHA-256 hashes of canonical `host/path` expressions, sorted.
#[derive(Debug, Clone, Default)]
pub struct Blocklist {
    hashes: Vec<[u8; 32]>,
}

/// One blocklist line that could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct BlocklistError {
    pub line: usize,
    pub message: String,
}

impl Blocklist {
    /// Entries from text: one URL or `host/path` expression per line (`#` comments).
    pub fn parse(text: &str) -> Result<Blocklist, BlocklistError> {
        let mut hashes = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((host, path)) = canonical(line) else {
                return Err(BlocklistError {
                    line: i + 1,
                    message: format!("{line:?} is not a URL or host/path"),
                });
            };
            hashes.push(hash(&format!("{host}{path}")));
        }
        hashes.sort_unstable();
        hashes.dedup();
        Ok(Blocklist { hashes })
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Whether `url` or one of its expressions (host suffixes × path prefixes) is listed.
    pub fn contains(&self, url: &str) -> bool {
        if self.hashes.is_empty() {
            return false;
        }
        let Some((host, path)) = canonical(url) else {
            return false;
        };
        expressions(&host, &path).any(|e| self.hashes.binary_search(&hash(&e)).is_ok())
    }

    /// The serialized form: the hashes, concatenated.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.hashes.concat()
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Blocklist> {
        if !bytes.len().is_multiple_of(32) {
            return None;
        }
        let mut hashes: Vec<[u8; 32]> = bytes
            .chunks_exact(32)
            .filter_map(|c| c.try_into().ok())
            .collect();
        hashes.sort_unstable();
        Some(Blocklist { hashes })
    }
}

fn hash(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// `(host, path)` of a URL or `host/path`, canonical: lower-case host without port, user
/// or trailing dot; path from its first `/` (`/` when none), without the fragment, with
/// `%XX` escapes of unreserved characters decoded.
fn canonical(url: &str) -> Option<(String, String)> {
    let url = url.trim();
    let rest = match url.find("://") {
        Some(p) => &url[p + 3..],
        None => url,
    };
    let rest = rest.split('#').next().unwrap_or("");
    let (authority, path) = match rest.find(['/', '?']) {
        Some(p) => (&rest[..p], &rest[p..]),
        None => (rest, "/"),
    };
    let host = authority.rsplit('@').next().unwrap_or("");
    let host = host.split(':').next().unwrap_or("");
    let host = host.trim_matches('.').to_ascii_lowercase();
    if host.is_empty() || host.contains(char::is_whitespace) {
        return None;
    }
    let mut path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    if path.contains('%') {
        path = unescape(&path);
    }
    Some((host, path))
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            && (v.is_ascii_alphanumeric() || b"-._~".contains(&v))
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Safe Browsing's lookup expressions: the exact host and up to four suffixes of its
/// last five labels, each with the exact path (with and without query) and up to four
/// path prefixes.
fn expressions<'a>(host: &'a str, path: &'a str) -> impl Iterator<Item = String> + 'a {
    let mut hosts = vec![host.to_string()];
    if host.parse::<std::net::IpAddr>().is_err() {
        let labels: Vec<&str> = host.split('.').collect();
        let start = labels.len().saturating_sub(5);
        for i in start.max(1)..labels.len().saturating_sub(1) {
            hosts.push(labels[i..].join("."));
            if hosts.len() == 5 {
                break;
            }
        }
    }
    let mut paths = vec![path.to_string()];
    let no_query = path.split('?').next().unwrap_or("/");
    if no_query != path {
        paths.push(no_query.to_string());
    }
    paths.push("/".to_string());
    let mut at = 0;
    let mut prefixes = 0;
    while let Some(p) = no_query[at + 1..].find('/') {
        at += p + 1;
        if prefixes == 3 {
            break;
        }
        paths.push(no_query[..=at].to_string());
        prefixes += 1;
    }
    paths.dedup();
    hosts
        .into_iter()
        .flat_map(move |h| paths.clone().into_iter().map(move |p| format!("{h}{p}")))
}

/// A domain under protection.
#[derive(Debug, Clone)]
struct Protected {
    domain: String,
    label: String,
}

/// The checks' settings, prepared for lookups.
#[derive(Debug, Clone, Default)]
pub struct Phishing {
    protected: Vec<Protected>,
    /// Registrable domains under protection.
    domains: HashSet<String>,
    /// Skeleton of a protected label → protected entries.
    skeletons: HashMap<String, Vec<usize>>,
    /// Every single-deletion variant of a protected label → protected entries.
    deletes: HashMap<String, Vec<usize>>,
    /// Protected labels, for "brand in a subdomain".
    labels: HashMap<String, usize>,
    shorteners: HashSet<String>,
    pub blocklist: Blocklist,
}

/// What the checks found in one message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings {
    /// (the domain the link text names, the domain it goes to).
    pub mismatched: Vec<(String, String)>,
    /// (a host in a link, the protected domain it imitates).
    pub lookalike_links: Vec<(String, String)>,
    /// The From domain imitates this protected domain.
    pub lookalike_from: Option<String>,
    /// A link's host carries a protected name as a label of another site
    /// (`paypal.com.account-verify.example`).
    pub brand_in_subdomain: Vec<(String, String)>,
    pub shortened: usize,
    pub blocklisted: Vec<String>,
}

impl Phishing {
    /// `managed`: the gateway's own domains; `brands` and `shorteners`: `None` for the
    /// built-in lists.
    pub fn new(
        managed: &[String],
        brands: Option<&[String]>,
        shorteners: Option<&[String]>,
        blocklist: Blocklist,
    ) -> Phishing {
        let mut p = Phishing {
            blocklist,
            ..Default::default()
        };
        let brands: Vec<String> = match brands {
            Some(b) => b.to_vec(),
            None => DEFAULT_BRANDS.iter().map(|s| s.to_string()).collect(),
        };
        for d in managed.iter().chain(&brands) {
            let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
            let reg = registrable(&d).to_string();
            if reg.is_empty() || !p.domains.insert(reg.clone()) {
                continue;
            }
            let label = name_label(&reg).to_string();
            let i = p.protected.len();
            p.skeletons.entry(skeleton(&label)).or_default().push(i);
            if label.chars().count() >= MIN_TYPO_LABEL {
                for v in deletes(&label) {
                    p.deletes.entry(v).or_default().push(i);
                }
                p.labels.entry(label.clone()).or_insert(i);
            }
            p.protected.push(Protected { domain: reg, label });
        }
        p.shorteners = match shorteners {
            Some(s) => s.iter().map(|x| x.trim().to_ascii_lowercase()).collect(),
            None => DEFAULT_SHORTENERS.iter().map(|s| s.to_string()).collect(),
        };
        p
    }

    /// The protected domain `host` imitates, if it does (never one it belongs to).
    pub fn imitates(&self, host: &str) -> Option<&str> {
        let host = unicode(host);
        let reg = registrable(&host);
        if self.domains.contains(reg) || host.parse::<std::net::IpAddr>().is_ok() {
            return None;
        }
        let label = name_label(reg);
        // The same name under another suffix (paypal.de) is often the brand's own site:
        // only a name written differently that looks the same counts.
        if let Some(v) = self.skeletons.get(&skeleton(label))
            && let Some(&i) = v.iter().find(|&&i| self.protected[i].label != label)
        {
            return Some(self.protected[i].domain.as_str());
        }
        if label.chars().count() + 1 < MIN_TYPO_LABEL {
            return None;
        }
        for d in deletes(label) {
            if let Some(v) = self.deletes.get(&d) {
                for &i in v {
                    let p = &self.protected[i];
                    if distance(label, &p.label) == 1 {
                        return Some(p.domain.as_str());
                    }
                }
            }
        }
        None
    }

    /// The protected name used as a label of someone else's host.
    fn brand_label(&self, host: &str) -> Option<&str> {
        let reg = registrable(host);
        if self.domains.contains(reg) {
            return None;
        }
        let sub = host.strip_suffix(reg)?.trim_end_matches('.');
        sub.split(['.', '-'])
            .find_map(|l| self.labels.get(l))
            .map(|&i| self.protected[i].domain.as_str())
    }

    pub fn check(&self, views: &Views<'_>) -> Findings {
        let mut f = Findings::default();
        for u in &views.urls {
            let Some(host) = u.host.as_deref() else {
                continue;
            };
            if let Some(text) = u.text.as_deref()
                && let Some(named) = named_domain(text)
            {
                let (a, b) = (registrable(&named), registrable(host));
                if a != b && !f.mismatched.iter().any(|(x, y)| x == a && y == b) {
                    f.mismatched.push((a.to_string(), b.to_string()));
                }
            }
            if let Some(p) = self.imitates(host)
                && !f.lookalike_links.iter().any(|(h, _)| h == host)
            {
                f.lookalike_links.push((host.to_string(), p.to_string()));
            }
            if let Some(p) = self.brand_label(host)
                && !f.brand_in_subdomain.iter().any(|(h, _)| h == host)
            {
                f.brand_in_subdomain.push((host.to_string(), p.to_string()));
            }
            if self.shorteners.contains(host) {
                f.shortened += 1;
            }
            if self.blocklist.contains(&u.url) && !f.blocklisted.contains(&u.url) {
                f.blocklisted.push(u.url.clone());
            }
        }
        if let Some(from) = views.header("From")
            && let Some(addr) = from.addrs.first()
            && let Some((_, domain)) = addr.rsplit_once('@')
        {
            f.lookalike_from = self
                .imitates(&domain.to_ascii_lowercase())
                .map(str::to_string);
        }
        f
    }
}

/// The domain a link's visible text names, when the text is (or starts with) a URL or a
/// host name: `https://bank.example/login`, `www.bank.example`, `bank.example`.
fn named_domain(text: &str) -> Option<String> {
    let t = text
        .trim()
        .trim_matches(|c| c == '<' || c == '>' || c == '"');
    let first = t.split_whitespace().next()?;
    if t.split_whitespace().count() > 1 {
        return None;
    }
    let host = crate::mime::host_of(first).or_else(|| {
        let h = first.split(['/', '?', '#']).next()?.to_ascii_lowercase();
        let labels: Vec<&str> = h.split('.').collect();
        let tld = labels.last()?;
        (labels.len() >= 2
            && tld.len() >= 2
            && tld.chars().all(|c| c.is_ascii_alphabetic())
            && labels
                .iter()
                .all(|l| !l.is_empty() && l.chars().all(|c| c.is_alphanumeric() || c == '-')))
        .then_some(h)
    })?;
    Some(unicode(&host))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checker() -> Phishing {
        Phishing::new(
            &["bulwark-customer.example".to_string()],
            None,
            None,
            Blocklist::parse("# feed\nhttp://evil.example/login/\nbad.example/\n").unwrap(),
        )
    }

    #[test]
    fn registrable_domains() {
        assert_eq!(registrable("www.paypal.com"), "paypal.com");
        assert_eq!(registrable("a.b.paypal.co.uk"), "paypal.co.uk");
        assert_eq!(registrable("paypal.com"), "paypal.com");
        assert_eq!(registrable("localhost"), "localhost");
    }

    #[test]
    fn lookalikes_are_found_and_the_real_ones_are_not() {
        let p = checker();
        assert_eq!(p.imitates("paypa1.com"), Some("paypal.com"));
        assert_eq!(p.imitates("www.rnicrosoft.com"), Some("microsoft.com"));
        assert_eq!(p.imitates("paypall.com"), Some("paypal.com"));
        assert_eq!(p.imitates("payapl.net"), Some("paypal.com"));
        // Cyrillic "а" in an IDN, as mail carries it (punycode).
        let idn = idna::domain_to_ascii("pаypal.com").unwrap();
        assert!(idn.starts_with("xn--"), "{idn}");
        assert_eq!(p.imitates(&idn), Some("paypal.com"));
        assert_eq!(
            p.imitates("bulwark-custorner.example"),
            Some("bulwark-customer.example")
        );
        assert_eq!(p.imitates("www.paypal.com"), None);
        assert_eq!(p.imitates("mail.bulwark-customer.example"), None);
        assert_eq!(p.imitates("example.org"), None);
        // Short names are not compared by edit distance; the same name elsewhere is not
        // an imitation.
        assert_eq!(p.imitates("upx.com"), None);
        assert_eq!(p.imitates("paypal.de"), None);
    }

    #[test]
    fn blocklist_matches_host_suffixes_and_path_prefixes() {
        let p = checker();
        assert_eq!(p.blocklist.len(), 2);
        assert!(
            p.blocklist
                .contains("https://evil.example/login/form.php?x=1")
        );
        assert!(p.blocklist.contains("http://a.b.evil.example/login/"));
        assert!(!p.blocklist.contains("http://evil.example/other"));
        assert!(p.blocklist.contains("http://BAD.example/anything/at/all"));
        assert!(p.blocklist.contains("http://x.bad.example:8080/%61"));
        assert!(!p.blocklist.contains("http://notbad.example/"));
        let round = Blocklist::from_bytes(&p.blocklist.to_bytes()).unwrap();
        assert!(round.contains("http://bad.example/"));
        assert_eq!(
            Blocklist::parse("ok.example/\nnot a url\n")
                .unwrap_err()
                .line,
            2
        );
    }

    #[test]
    fn link_text_naming_another_site_is_found() {
        let html = b"From: PayPal <service@paypa1.com>\r\nContent-Type: text/html\r\n\r\n<a href=\"http://203.0.113.9/x\">https://www.paypal.com/signin</a> <a href=\"https://paypal.com.verify-account.example/\">here</a> <a href=\"https://bit.ly/abc\">bit.ly/abc</a> <a href=\"https://www.example.org/a\">example.org</a> <a href=\"http://evil.example/login/x\">click</a>\r\n";
        let views = crate::mime::parse(html, &crate::mime::Limits::default());
        let f = checker().check(&views);
        assert_eq!(
            f.mismatched,
            vec![("paypal.com".to_string(), "203.0.113.9".to_string())]
        );
        assert_eq!(
            f.brand_in_subdomain,
            vec![(
                "paypal.com.verify-account.example".to_string(),
                "paypal.com".to_string()
            )]
        );
        assert_eq!(f.shortened, 1);
        assert_eq!(f.lookalike_from.as_deref(), Some("paypal.com"));
        assert_eq!(
            f.blocklisted,
            vec!["http://evil.example/login/x".to_string()]
        );
        assert!(f.lookalike_links.is_empty(), "{:?}", f.lookalike_links);
    }

    #[test]
    fn skeletons_fold_lookalike_letters() {
        assert_eq!(skeleton("rnicr0soft"), "microsoft");
        assert_eq!(skeleton("аpple"), "apple");
        assert_eq!(distance("paypal", "paypall"), 1);
        assert_eq!(distance("paypal", "payapl"), 1);
        assert!(distance("paypal", "google") >= 3);
        assert_eq!(distance("paypal", "paypalpaypal"), 3);
        assert_eq!(registrable("203.0.113.9"), "203.0.113.9");
    }
}
