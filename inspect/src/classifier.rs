//! The statistical classifier: tokens of a message's views counted per class when
//! training, combined with Robinson's per-token estimate and Fisher's chi-square method
//! when scoring (the method SpamAssassin's Bayes uses). A model is a sorted table of
//! token hashes with their counts, small enough to ship in a snapshot and searched by
//! binary search, so scoring costs microseconds.

use std::collections::HashMap;

use crate::mime::Views;

const MAGIC: &[u8; 8] = b"BWMODEL1";
/// Robinson's strength of the prior, and the prior itself (SpamAssassin's values).
const ROBINSON_S: f64 = 0.160;
const ROBINSON_X: f64 = 0.538;
/// Tokens whose estimate is nearer to 0.5 than this carry too little to count.
const MIN_STRENGTH: f64 = 0.346;
/// At most this many of the strongest tokens are combined.
const MAX_TOKENS: usize = 150;
/// Below this many trained messages of either class the model gives no opinion.
pub const MIN_TRAINED: u32 = 50;
/// Words longer than this are hashed by their first octets and length class.
const MAX_WORD: usize = 24;

/// FNV-1a, 64-bit: stable across processes and versions, which a model needs.
fn fnv(prefix: u8, s: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in std::iter::once(&prefix).chain(s) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The distinct tokens of a message (hashes), at most `limit` of them.
pub fn tokens(v: &Views<'_>, limit: usize) -> Vec<u64> {
    let mut out: Vec<u64> = Vec::with_capacity(512);
    let words = |prefix: u8, text: &str, out: &mut Vec<u64>| {
        for w in text
            .split(|c: char| {
                !(c.is_alphanumeric() || c == '$' || c == '!' || c == '\'' || c == '-')
            })
            .map(|w| w.trim_matches(|c: char| c == '\'' || c == '-'))
            .filter(|w| w.len() >= 3)
        {
            let lower = w.to_lowercase();
            let b = lower.as_bytes();
            let h = if b.len() > MAX_WORD {
                fnv(prefix ^ 0x80, &b[..8.min(b.len())]) ^ (b.len() / 8) as u64
            } else {
                fnv(prefix, b)
            };
            out.push(h);
            // Case is evidence too ("FREE" against "free").
            if w.chars().any(char::is_uppercase) && b.len() <= MAX_WORD {
                out.push(fnv(prefix ^ 0x40, w.as_bytes()));
            }
            if out.len() >= limit * 2 {
                return;
            }
        }
    };
    words(b'S', &v.subject, &mut out);
    words(b'B', &v.body, &mut out);
    for h in &v.headers {
        let name = h.name.to_ascii_lowercase();
        match name.as_str() {
            "from" | "reply-to" | "to" | "x-mailer" | "user-agent" | "content-type" => {
                for a in &h.addrs {
                    if let Some((_, d)) = a.rsplit_once('@') {
                        out.push(fnv(b'D', format!("{name}:{}", d.to_lowercase()).as_bytes()));
                    }
                }
                let mut key = name.clone();
                key.push(':');
                let start = key.len();
                for w in h
                    .decoded
                    .split(|c: char| c.is_whitespace() || c == ';' || c == ',')
                {
                    key.truncate(start);
                    key.push_str(&w.to_lowercase());
                    out.push(fnv(b'H', key.as_bytes()));
                }
            }
            _ => {}
        }
    }
    for u in &v.urls {
        if let Some(host) = &u.host {
            out.push(fnv(b'U', host.as_bytes()));
            // The registered part (last two labels) generalises over subdomains.
            let labels: Vec<&str> = host.rsplitn(3, '.').collect();
            if labels.len() >= 2 {
                out.push(fnv(b'R', format!("{}.{}", labels[1], labels[0]).as_bytes()));
            }
        }
    }
    out.push(fnv(
        b'M',
        if v.html_bytes > 0 { b"html" } else { b"nohtml" },
    ));
    out.push(fnv(b'M', format!("parts:{}", v.parts.min(10)).as_bytes()));
    out.push(fnv(
        b'M',
        format!("attach:{}", v.attachments.len().min(5)).as_bytes(),
    ));
    out.sort_unstable();
    out.dedup();
    out.truncate(limit);
    out
}

/// Token counts while training.
#[derive(Debug, Default)]
pub struct Trainer {
    spam: u32,
    ham: u32,
    counts: HashMap<u64, (u32, u32)>,
}

impl Trainer {
    pub fn learn(&mut self, v: &Views<'_>, is_spam: bool) {
        if is_spam {
            self.spam += 1;
        } else {
            self.ham += 1;
        }
        for t in tokens(v, 5000) {
            let e = self.counts.entry(t).or_default();
            if is_spam {
                e.0 += 1;
            } else {
                e.1 += 1;
            }
        }
    }

    pub fn counts(&self) -> (u32, u32) {
        (self.spam, self.ham)
    }

    /// The model, without tokens seen only once (they are most of the table and carry
    /// almost nothing).
    pub fn finish(self) -> Model {
        let mut table: Vec<(u64, u32, u32)> = self
            .counts
            .into_iter()
            .filter(|(_, (s, h))| s + h >= 2)
            .map(|(k, (s, h))| (k, s, h))
            .collect();
        table.sort_unstable_by_key(|e| e.0);
        Model {
            spam: self.spam,
            ham: self.ham,
            table,
        }
    }
}

/// A trained model.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub spam: u32,
    pub ham: u32,
    table: Vec<(u64, u32, u32)>,
}

#[derive(Debug, thiserror::Error)]
#[error("model: {0}")]
pub struct ModelError(String);

impl Model {
    pub fn tokens(&self) -> usize {
        self.table.len()
    }

    /// The probability that the message is spam, or `None` when the model has seen
    /// too few messages of either class to say.
    pub fn probability(&self, v: &Views<'_>) -> Option<f64> {
        if self.spam < MIN_TRAINED || self.ham < MIN_TRAINED {
            return None;
        }
        let (ns, nh) = (self.spam as f64, self.ham as f64);
        let mut probs: Vec<f64> = Vec::with_capacity(256);
        for t in tokens(v, 5000) {
            let Ok(i) = self.table.binary_search_by_key(&t, |e| e.0) else {
                continue;
            };
            let (_, s, h) = self.table[i];
            let (s, h) = (s as f64, h as f64);
            let ratio_s = s / ns;
            let ratio_h = h / nh;
            let p = ratio_s / (ratio_s + ratio_h);
            let n = s + h;
            let f = (ROBINSON_S * ROBINSON_X + n * p) / (ROBINSON_S + n);
            if (f - 0.5).abs() >= MIN_STRENGTH / 2.0 {
                probs.push(f.clamp(1e-6, 1.0 - 1e-6));
            }
        }
        if probs.is_empty() {
            return Some(0.5);
        }
        probs.sort_unstable_by(|a, b| {
            (b - 0.5)
                .abs()
                .partial_cmp(&(a - 0.5).abs())
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        probs.truncate(MAX_TOKENS);
        let n = probs.len();
        let ln_ham: f64 = probs.iter().map(|p| p.ln()).sum();
        let ln_spam: f64 = probs.iter().map(|p| (1.0 - p).ln()).sum();
        let h = chi2q(-2.0 * ln_ham, 2 * n);
        let s = chi2q(-2.0 * ln_spam, 2 * n);
        Some((1.0 + h - s) / 2.0)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + self.table.len() * 16);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.spam.to_le_bytes());
        out.extend_from_slice(&self.ham.to_le_bytes());
        out.extend_from_slice(&(self.table.len() as u64).to_le_bytes());
        for (k, s, h) in &self.table {
            out.extend_from_slice(&k.to_le_bytes());
            out.extend_from_slice(&s.to_le_bytes());
            out.extend_from_slice(&h.to_le_bytes());
        }
        out
    }

    pub fn from_bytes(b: &[u8]) -> Result<Model, ModelError> {
        let err = |m: &str| ModelError(m.to_string());
        let rest = b
            .strip_prefix(MAGIC.as_slice())
            .ok_or_else(|| err("not a Bulwark model"))?;
        let u32_at = |o: usize| -> Result<u32, ModelError> {
            rest.get(o..o + 4)
                .and_then(|x| x.try_into().ok())
                .map(u32::from_le_bytes)
                .ok_or_else(|| err("truncated"))
        };
        let spam = u32_at(0)?;
        let ham = u32_at(4)?;
        let n = rest
            .get(8..16)
            .and_then(|x| x.try_into().ok())
            .map(u64::from_le_bytes)
            .ok_or_else(|| err("truncated"))? as usize;
        let body = &rest[16..];
        if body.len() != n.checked_mul(16).ok_or_else(|| err("bad length"))? {
            return Err(err("length does not match the token count"));
        }
        let mut table = Vec::with_capacity(n);
        let mut prev = None;
        for c in body.chunks_exact(16) {
            let k = u64::from_le_bytes(c[..8].try_into().map_err(|_| err("bad entry"))?);
            let s = u32::from_le_bytes(c[8..12].try_into().map_err(|_| err("bad entry"))?);
            let h = u32::from_le_bytes(c[12..16].try_into().map_err(|_| err("bad entry"))?);
            if prev.is_some_and(|p| p >= k) {
                return Err(err("tokens out of order"));
            }
            prev = Some(k);
            table.push((k, s, h));
        }
        Ok(Model { spam, ham, table })
    }
}

/// The probability that a chi-square variable with `df` (even) degrees of freedom
/// exceeds `x2`.
fn chi2q(x2: f64, df: usize) -> f64 {
    let m = x2 / 2.0;
    let mut term = (-m).exp();
    let mut sum = term;
    for i in 1..df / 2 {
        term *= m / i as f64;
        sum += term;
    }
    sum.min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mime::{Limits, parse};

    fn msg(subject: &str, body: &str) -> Vec<u8> {
        format!("Subject: {subject}\r\nFrom: a@b.example\r\n\r\n{body}\r\n").into_bytes()
    }

    #[test]
    fn learns_to_tell_two_vocabularies_apart() {
        let mut t = Trainer::default();
        for i in 0..60 {
            let s = msg(
                "cheap pills",
                &format!("buy viagra now cheap pharmacy offer {i}"),
            );
            t.learn(&parse(&s, &Limits::default()), true);
            let h = msg(
                "meeting notes",
                &format!("the quarterly report draft is attached {i}"),
            );
            t.learn(&parse(&h, &Limits::default()), false);
        }
        let model = t.finish();
        let spam = msg("cheap offer", "pharmacy viagra");
        let ham = msg("report", "quarterly draft attached");
        let ps = model
            .probability(&parse(&spam, &Limits::default()))
            .expect("trained");
        let ph = model
            .probability(&parse(&ham, &Limits::default()))
            .expect("trained");
        assert!(ps > 0.99, "{ps}");
        assert!(ph < 0.01, "{ph}");
        let unknown = msg("zzz", "qqq www");
        let pu = model
            .probability(&parse(&unknown, &Limits::default()))
            .expect("trained");
        assert!((pu - 0.5).abs() < 0.2, "{pu}");

        let bytes = model.to_bytes();
        assert_eq!(Model::from_bytes(&bytes).expect("loads"), model);
        assert!(Model::from_bytes(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn an_untrained_model_has_no_opinion() {
        let model = Trainer::default().finish();
        let m = msg("x", "y");
        assert_eq!(model.probability(&parse(&m, &Limits::default())), None);
    }
}
