//! Validation of the addresses and patterns that go into a policy.

/// Characters allowed in the local part of a directory address.
fn local_ok(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'+-/=?^_`{|}~.".contains(c)
}

/// Characters allowed in the domain part.
fn domain_ok(c: char) -> bool {
    c.is_ascii_alphanumeric() || ".-*".contains(c)
}

/// Checks a recipient-directory address: local part only `a-z A-Z 0-9` and
/// ``!#$%&'+-/=?^_`{|}~.``, domain part only `a-z A-Z 0-9 . - *`. Several addresses in
/// one entry (separated by `:` or `;`) are an error of their own.
pub fn check_directory_address(addr: &str) -> Result<(), String> {
    if addr.contains([':', ';']) {
        return Err(format!(
            "{addr:?} holds several addresses; give one per entry"
        ));
    }
    let Some((local, domain)) = addr.rsplit_once('@') else {
        return Err(format!("{addr:?} is not an address (no @)"));
    };
    if local.is_empty() || domain.is_empty() {
        return Err(format!("{addr:?} needs a local part and a domain"));
    }
    if let Some(c) = local.chars().find(|c| !local_ok(*c)) {
        return Err(format!("{addr:?}: {c:?} is not allowed in the local part"));
    }
    if let Some(c) = domain.chars().find(|c| !domain_ok(*c)) {
        return Err(format!("{addr:?}: {c:?} is not allowed in the domain part"));
    }
    Ok(())
}

/// Checks a sender pattern: `user@domain`, `domain`, or `*.domain`.
pub fn check_sender_pattern(p: &str) -> Result<(), String> {
    if p.contains('@') {
        return check_directory_address(p);
    }
    let domain = p.strip_prefix("*.").unwrap_or(p);
    if domain.is_empty()
        || domain.contains('*')
        || !domain.chars().all(domain_ok)
        || domain.starts_with('.')
        || domain.ends_with('.')
    {
        return Err(format!("{p:?} is not an address, a domain or *.domain"));
    }
    Ok(())
}

use std::net::{IpAddr, SocketAddr};

/// `host:port`, `[v6]:port`, or a bare host (port 25).
pub fn parse_route(route: &str) -> Result<(String, u16), String> {
    if let Ok(sa) = route.parse::<SocketAddr>() {
        return Ok((sa.ip().to_string(), sa.port()));
    }
    if let Ok(ip) = route.parse::<IpAddr>() {
        return Ok((ip.to_string(), 25));
    }
    let (host, port) = match route.rsplit_once(':') {
        Some((h, p)) => match p.parse::<u16>() {
            Ok(p) if p > 0 => (h, p),
            _ => return Err(format!("{route:?}: port must be 1..=65535")),
        },
        None => (route, 25),
    };
    if !is_hostname(host) {
        return Err(format!(
            "{route:?}: host must be an IP address or a host name"
        ));
    }
    Ok((host.to_ascii_lowercase(), port))
}

/// A DNS host name: dot-separated labels of letters, digits and inner hyphens.
pub fn is_hostname(h: &str) -> bool {
    let h = h.strip_suffix('.').unwrap_or(h);
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_addresses() {
        assert!(check_directory_address("alice@example.test").is_ok());
        assert!(check_directory_address("o'brien+tag@mail-1.example.test").is_ok());
        assert!(check_directory_address("{a}|b~@*.example.test").is_ok());
        assert!(
            check_directory_address("a@b.test;c@d.test")
                .unwrap_err()
                .contains("several")
        );
        assert!(
            check_directory_address("a@b.test:c@d.test")
                .unwrap_err()
                .contains("several")
        );
        assert!(check_directory_address("no-at-sign").is_err());
        assert!(
            check_directory_address("a b@x.test")
                .unwrap_err()
                .contains("' '")
        );
        assert!(check_directory_address("a\"b@x.test").is_err());
        assert!(
            check_directory_address("a@x_y.test")
                .unwrap_err()
                .contains("'_'")
        );
        assert!(check_directory_address("jö@x.test").is_err());
    }

    #[test]
    fn sender_patterns() {
        for ok in ["a@b.test", "b.test", "*.b.test"] {
            assert!(check_sender_pattern(ok).is_ok(), "{ok}");
        }
        for bad in ["", "*.", "a*.b.test", ".b.test", "b.test.", "b test"] {
            assert!(check_sender_pattern(bad).is_err(), "{bad}");
        }
    }
}
