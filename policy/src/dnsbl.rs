//! DNS lists as the policy holds them: zones with weights, classes and answer filters,
//! and the thresholds. Shared by the engine (which asks the lists) and the control service
//! (which validates what it stores with the same rules).

use std::net::Ipv4Addr;

/// One octet of an answer filter.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Octet {
    Any,
    Range(u8, u8),
    List(Vec<u8>),
    /// The last octet has one of these bits.
    Mask(u8),
}

/// An answer filter: `127.0.0.2`, `127.0.0.[2..11]`, `127.0.0.[2;4;8]`, `127.0.0.*`, or
/// `127.0.0.&4` (the last octet has bit 4 set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerFilter([Octet; 4]);

impl AnswerFilter {
    pub fn parse(text: &str) -> Result<AnswerFilter, String> {
        let bad = || {
            format!(
                "{text:?} is not an answer filter (e.g. 127.0.0.2, 127.0.0.[2..11], 127.0.0.[2;4], 127.0.0.&4)"
            )
        };
        // Octets are separated by dots outside brackets (`[2..11]` holds two).
        let text = text.trim();
        let mut parts: Vec<&str> = Vec::with_capacity(4);
        let (mut depth, mut from) = (0i32, 0usize);
        for (i, c) in text.char_indices() {
            match c {
                '[' => depth += 1,
                ']' => depth -= 1,
                '.' if depth == 0 => {
                    parts.push(&text[from..i]);
                    from = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&text[from..]);
        if parts.len() != 4 {
            return Err(bad());
        }
        let mut out = [Octet::Any, Octet::Any, Octet::Any, Octet::Any];
        for (i, p) in parts.iter().enumerate() {
            out[i] = if *p == "*" {
                Octet::Any
            } else if let Some(m) = p.strip_prefix('&') {
                if i != 3 {
                    return Err(bad());
                }
                Octet::Mask(m.parse().map_err(|_| bad())?)
            } else if let Some(inner) = p.strip_prefix('[').and_then(|x| x.strip_suffix(']')) {
                if let Some((a, b)) = inner.split_once("..") {
                    let (a, b): (u8, u8) = (
                        a.trim().parse().map_err(|_| bad())?,
                        b.trim().parse().map_err(|_| bad())?,
                    );
                    if a > b {
                        return Err(bad());
                    }
                    Octet::Range(a, b)
                } else {
                    let list = inner
                        .split(';')
                        .map(|x| x.trim().parse::<u8>())
                        .collect::<Result<Vec<u8>, _>>()
                        .map_err(|_| bad())?;
                    Octet::List(list)
                }
            } else {
                let n: u8 = p.parse().map_err(|_| bad())?;
                Octet::Range(n, n)
            };
        }
        Ok(AnswerFilter(out))
    }

    /// The filter written back as it parses (`127.0.0.[2..11]`).
    pub fn text(&self) -> String {
        let part = |o: &Octet| match o {
            Octet::Any => "*".to_string(),
            Octet::Range(a, b) if a == b => a.to_string(),
            Octet::Range(a, b) => format!("[{a}..{b}]"),
            Octet::List(l) => format!(
                "[{}]",
                l.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(";")
            ),
            Octet::Mask(m) => format!("&{m}"),
        };
        self.0.iter().map(part).collect::<Vec<_>>().join(".")
    }

    pub fn matches(&self, ip: Ipv4Addr) -> bool {
        self.0.iter().zip(ip.octets()).all(|(f, o)| match f {
            Octet::Any => true,
            Octet::Range(a, b) => (*a..=*b).contains(&o),
            Octet::List(l) => l.contains(&o),
            Octet::Mask(m) => o & m != 0,
        })
    }
}

/// Checks one zone of a DNS list policy; the error names the field.
pub fn validate_zone(z: &crate::DnsblZone) -> Result<(), (&'static str, String)> {
    let name = &z.zone;
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) || !name.contains('.')
    {
        return Err(("zone", format!("{name:?} is not a DNS zone")));
    }
    if z.weight == 0 || !(-1000..=1000).contains(&z.weight) {
        return Err((
            "weight",
            format!("{} must be from -1000 to 1000 and not 0", z.weight),
        ));
    }
    for a in &z.answers {
        AnswerFilter::parse(a).map_err(|e| ("answers", e))?;
    }
    Ok(())
}

/// Checks a whole DNS list policy: every zone, no zone twice, at most 32, the thresholds.
pub fn validate(p: &crate::DnsblPolicy) -> Result<(), (String, String)> {
    if p.zones.len() > 32 {
        return Err(("zones".into(), "at most 32 zones".into()));
    }
    for (i, z) in p.zones.iter().enumerate() {
        validate_zone(z).map_err(|(f, e)| (format!("zones[{i}].{f}"), e))?;
        if p.zones[..i].iter().any(|o| o.zone == z.zone) {
            return Err((
                format!("zones[{i}].zone"),
                format!("{:?} is listed twice", z.zone),
            ));
        }
    }
    if !(1..=1000).contains(&p.threshold) {
        return Err((
            "threshold".into(),
            format!("{} must be from 1 to 1000", p.threshold),
        ));
    }
    if !(-1000..=0).contains(&p.allow_threshold) {
        return Err((
            "allow_threshold".into(),
            format!("{} must be from -1000 to 0", p.allow_threshold),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DnsblPolicy, DnsblZone};

    #[test]
    fn filters_write_back_as_they_parse() {
        for t in [
            "127.0.0.2",
            "127.0.0.[2..11]",
            "127.0.0.[2;4;8]",
            "127.0.*.&4",
        ] {
            assert_eq!(AnswerFilter::parse(t).unwrap().text(), t);
        }
    }

    #[test]
    fn a_policy_names_its_first_bad_field() {
        let zone = |z: &str, w: i32, a: &[&str]| DnsblZone {
            zone: z.into(),
            weight: w,
            dynamic: false,
            answers: a.iter().map(|s| s.to_string()).collect(),
        };
        let mut p = DnsblPolicy {
            zones: vec![zone("bl.example.test", 2, &["127.0.0.[2..11]"])],
            threshold: 2,
            allow_threshold: 0,
        };
        assert!(validate(&p).is_ok());
        p.zones.push(zone("bl.example.test", 1, &[]));
        assert_eq!(validate(&p).unwrap_err().0, "zones[1].zone");
        p.zones[1] = zone("wl.example.test", 0, &[]);
        assert_eq!(validate(&p).unwrap_err().0, "zones[1].weight");
        p.zones[1] = zone("wl.example.test", -5, &["127.0.0.[9..2]"]);
        assert_eq!(validate(&p).unwrap_err().0, "zones[1].answers");
        p.zones[1] = zone("no_dots", -5, &[]);
        assert_eq!(validate(&p).unwrap_err().0, "zones[1].zone");
        p.zones.pop();
        p.threshold = 0;
        assert_eq!(validate(&p).unwrap_err().0, "threshold");
        p.threshold = 1;
        p.allow_threshold = 3;
        assert_eq!(validate(&p).unwrap_err().0, "allow_threshold");
    }
}
