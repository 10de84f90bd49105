//! Zero-copy parsing of one SMTP command line (RFC 5321 §4.1, with the ESMTP parameters
//! of RFC 1870, 6152, 6531 and 3030). Every parsed value borrows from the line.

/// A command, borrowing from the line it was parsed from (CRLF already stripped).
#[derive(Debug, PartialEq, Eq)]
pub enum Command<'a> {
    Ehlo(&'a str),
    Helo(&'a str),
    Mail { path: &'a str, params: MailParams },
    Rcpt { path: &'a str },
    Data,
    Bdat { size: u64, last: bool },
    Rset,
    Noop,
    Quit,
    Vrfy,
    Expn,
    Help,
    StartTls,
}

/// ESMTP parameters of MAIL FROM.
#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
pub struct MailParams {
    pub size: Option<u64>,
    pub body: Body,
    pub smtputf8: bool,
}

#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
pub enum Body {
    #[default]
    SevenBit,
    EightBitMime,
}

/// Why a line is not a command we take; each maps to one reply.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum SyntaxError {
    /// Verb not recognized: 500 5.5.2.
    Unknown,
    /// Recognized verb with bad arguments: 501 5.5.4 with this text.
    Arguments(&'static str),
    /// A MAIL or RCPT parameter we do not support: 555 5.5.4.
    Parameter,
    /// Address with non-ASCII characters but no SMTPUTF8: 553 5.6.7.
    NeedsUtf8,
    /// Not UTF-8 at all: 500 5.5.2.
    Encoding,
}

/// Parses one command line, without its CRLF.
pub fn parse(line: &[u8]) -> Result<Command<'_>, SyntaxError> {
    let line = std::str::from_utf8(line).map_err(|_| SyntaxError::Encoding)?;
    let (verb, rest) = match line.find(' ') {
        Some(i) => (&line[..i], line[i + 1..].trim_matches(' ')),
        None => (line, ""),
    };
    if verb.len() > 8 {
        return Err(SyntaxError::Unknown);
    }
    let mut upper = [0u8; 8];
    upper[..verb.len()].copy_from_slice(verb.as_bytes());
    upper.make_ascii_uppercase();
    let no_args = |c: Command<'static>| {
        if rest.is_empty() {
            Ok(c)
        } else {
            Err(SyntaxError::Arguments("Syntax: command takes no arguments"))
        }
    };
    match &upper[..verb.len()] {
        b"EHLO" => domain_arg(rest).map(Command::Ehlo),
        b"HELO" => domain_arg(rest).map(Command::Helo),
        b"MAIL" => parse_mail(rest),
        b"RCPT" => parse_rcpt(rest),
        b"DATA" => no_args(Command::Data),
        b"BDAT" => parse_bdat(rest),
        b"RSET" => no_args(Command::Rset),
        // NOOP, VRFY, EXPN and HELP may carry an argument; it is ignored.
        b"NOOP" => Ok(Command::Noop),
        b"QUIT" => no_args(Command::Quit),
        b"VRFY" => Ok(Command::Vrfy),
        b"EXPN" => Ok(Command::Expn),
        b"HELP" => Ok(Command::Help),
        b"STARTTLS" => no_args(Command::StartTls),
        _ => Err(SyntaxError::Unknown),
    }
}

fn domain_arg(rest: &str) -> Result<&str, SyntaxError> {
    let name = rest.split(' ').next().unwrap_or("");
    if name.is_empty() {
        return Err(SyntaxError::Arguments("Syntax: EHLO hostname"));
    }
    if name.len() > 255 || name.bytes().any(|b| b.is_ascii_control()) {
        return Err(SyntaxError::Arguments("Invalid host name"));
    }
    Ok(name)
}

/// `keyword` followed by `:`, case-insensitive, with optional spaces after the colon
/// (tolerated in the manner of most MTAs).
fn strip_keyword<'a>(rest: &'a str, keyword: &str) -> Option<&'a str> {
    if rest.len() < keyword.len() || !rest.is_char_boundary(keyword.len()) {
        return None;
    }
    let (head, tail) = rest.split_at(keyword.len());
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    Some(tail.trim_start_matches(' '))
}

/// Splits `<path> params...` into the path inside the brackets and the rest.
fn split_path(s: &str) -> Result<(&str, &str), SyntaxError> {
    let s = s.strip_prefix('<').ok_or(SyntaxError::Arguments(
        "Syntax: address must be in angle brackets",
    ))?;
    let end = s.find('>').ok_or(SyntaxError::Arguments(
        "Syntax: address must be in angle brackets",
    ))?;
    let path = &s[..end];
    let rest = &s[end + 1..];
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Err(SyntaxError::Arguments("Syntax: junk after address"));
    }
    // A source route (@a,@b:user@d) is accepted and ignored (RFC 5321 §4.1.2, C.).
    let path = match path.starts_with('@') {
        true => path
            .split_once(':')
            .map(|(_, p)| p)
            .ok_or(SyntaxError::Arguments("Syntax: bad source route"))?,
        false => path,
    };
    Ok((path, rest.trim_matches(' ')))
}

/// Checks a mailbox `local@domain` (or the empty path when `allow_empty`).
fn check_mailbox(path: &str, allow_empty: bool, utf8: bool) -> Result<(), SyntaxError> {
    if path.is_empty() {
        return if allow_empty {
            Ok(())
        } else {
            Err(SyntaxError::Arguments("Syntax: empty address"))
        };
    }
    if path.len() > 254 {
        return Err(SyntaxError::Arguments("Address too long"));
    }
    let Some((local, domain)) = path.rsplit_once('@') else {
        return Err(SyntaxError::Arguments(
            "Syntax: address must be user@domain",
        ));
    };
    if local.is_empty() || local.len() > 64 || domain.is_empty() {
        return Err(SyntaxError::Arguments(
            "Syntax: address must be user@domain",
        ));
    }
    if path
        .bytes()
        .any(|b| b.is_ascii_control() || b == b' ' || b == b'<' || b == b'>')
    {
        return Err(SyntaxError::Arguments(
            "Syntax: invalid character in address",
        ));
    }
    if !path.is_ascii() && !utf8 {
        return Err(SyntaxError::NeedsUtf8);
    }
    let domain_ok = if let Some(lit) = domain.strip_prefix('[') {
        lit.ends_with(']')
    } else {
        domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_alphanumeric() || c == '-')
        })
    };
    if !domain_ok {
        return Err(SyntaxError::Arguments("Syntax: invalid domain in address"));
    }
    Ok(())
}

fn parse_mail(rest: &str) -> Result<Command<'_>, SyntaxError> {
    let s = strip_keyword(rest, "FROM:")
        .ok_or(SyntaxError::Arguments("Syntax: MAIL FROM:<address>"))?;
    let (path, params_str) = split_path(s)?;
    let mut params = MailParams::default();
    for p in params_str.split(' ').filter(|p| !p.is_empty()) {
        let (key, value) = p.split_once('=').unwrap_or((p, ""));
        if key.eq_ignore_ascii_case("SIZE") {
            let n = value
                .parse::<u64>()
                .map_err(|_| SyntaxError::Arguments("Syntax: SIZE=number"))?;
            params.size = Some(n);
        } else if key.eq_ignore_ascii_case("BODY") {
            params.body = if value.eq_ignore_ascii_case("7BIT") {
                Body::SevenBit
            } else if value.eq_ignore_ascii_case("8BITMIME") {
                Body::EightBitMime
            } else {
                return Err(SyntaxError::Parameter);
            };
        } else if key.eq_ignore_ascii_case("SMTPUTF8") && value.is_empty() {
            params.smtputf8 = true;
        } else {
            return Err(SyntaxError::Parameter);
        }
    }
    check_mailbox(path, true, params.smtputf8)?;
    Ok(Command::Mail { path, params })
}

fn parse_rcpt(rest: &str) -> Result<Command<'_>, SyntaxError> {
    let s =
        strip_keyword(rest, "TO:").ok_or(SyntaxError::Arguments("Syntax: RCPT TO:<address>"))?;
    let (path, params) = split_path(s)?;
    if !params.is_empty() {
        return Err(SyntaxError::Parameter);
    }
    // <Postmaster> without a domain is valid (RFC 5321 §4.5.1); the session qualifies it.
    if !path.eq_ignore_ascii_case("postmaster") {
        // UTF-8 is checked against the transaction's SMTPUTF8 flag by the session.
        check_mailbox(path, false, true)?;
    }
    Ok(Command::Rcpt { path })
}

fn parse_bdat(rest: &str) -> Result<Command<'_>, SyntaxError> {
    let mut it = rest.split(' ').filter(|s| !s.is_empty());
    let size = it
        .next()
        .and_then(|s| {
            if s.bytes().all(|b| b.is_ascii_digit()) && s.len() <= 19 {
                s.parse::<u64>().ok()
            } else {
                None
            }
        })
        .ok_or(SyntaxError::Arguments("Syntax: BDAT size [LAST]"))?;
    let last = match it.next() {
        None => false,
        Some(s) if s.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(SyntaxError::Arguments("Syntax: BDAT size [LAST]")),
    };
    if it.next().is_some() {
        return Err(SyntaxError::Arguments("Syntax: BDAT size [LAST]"));
    }
    Ok(Command::Bdat { size, last })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(parse(b"ehlo client.test"), Ok(Command::Ehlo("client.test")));
        assert_eq!(parse(b"HeLo x"), Ok(Command::Helo("x")));
        assert_eq!(parse(b"data"), Ok(Command::Data));
        assert_eq!(parse(b"StartTLS"), Ok(Command::StartTls));
        assert_eq!(parse(b"NOOP anything"), Ok(Command::Noop));
    }

    #[test]
    fn mail_with_parameters() {
        let c = parse(b"MAIL FROM:<a@b.test> SIZE=1000 BODY=8BITMIME SMTPUTF8").unwrap();
        assert_eq!(
            c,
            Command::Mail {
                path: "a@b.test",
                params: MailParams {
                    size: Some(1000),
                    body: Body::EightBitMime,
                    smtputf8: true
                }
            }
        );
        assert_eq!(
            parse(b"mail from: <>"),
            Ok(Command::Mail {
                path: "",
                params: MailParams::default()
            })
        );
        assert_eq!(
            parse(b"MAIL FROM:<a@b.test> FOO=1"),
            Err(SyntaxError::Parameter)
        );
        assert_eq!(
            parse(b"MAIL FROM:<a@b.test> BODY=BINARYMIME"),
            Err(SyntaxError::Parameter)
        );
        assert!(matches!(
            parse(b"MAIL FROM:a@b.test"),
            Err(SyntaxError::Arguments(_))
        ));
        assert!(matches!(
            parse(b"MAIL TO:<a@b.test>"),
            Err(SyntaxError::Arguments(_))
        ));
        assert!(matches!(
            parse(b"MAIL FROM:<a@b.test> SIZE=x"),
            Err(SyntaxError::Arguments(_))
        ));
        assert!(matches!(
            parse(b"MAIL FROM:<a@b.test>junk"),
            Err(SyntaxError::Arguments(_))
        ));
    }

    #[test]
    fn addresses_are_checked() {
        assert!(matches!(
            parse(b"RCPT TO:<nobody>"),
            Err(SyntaxError::Arguments(_))
        ));
        assert!(matches!(
            parse(b"RCPT TO:<@x.test>"),
            Err(SyntaxError::Arguments(_))
        ));
        assert!(matches!(
            parse(b"RCPT TO:<a@-bad.test>"),
            Err(SyntaxError::Arguments(_))
        ));
        assert!(matches!(
            parse(b"RCPT TO:<a b@x.test>"),
            Err(SyntaxError::Arguments(_))
        ));
        assert_eq!(
            parse(b"RCPT TO:<Postmaster>"),
            Ok(Command::Rcpt { path: "Postmaster" })
        );
        assert_eq!(
            parse(b"RCPT TO:<@r1.test,@r2.test:u@x.test>"),
            Ok(Command::Rcpt { path: "u@x.test" })
        );
        assert_eq!(
            parse(b"RCPT TO:<u@[127.0.0.1]>"),
            Ok(Command::Rcpt {
                path: "u@[127.0.0.1]"
            })
        );
        assert_eq!(
            parse(b"RCPT TO:<u@x.test> NOTIFY=NEVER"),
            Err(SyntaxError::Parameter)
        );
        assert_eq!(
            parse("MAIL FROM:<jö@x.test>".as_bytes()),
            Err(SyntaxError::NeedsUtf8)
        );
        assert!(parse("MAIL FROM:<jö@x.test> SMTPUTF8".as_bytes()).is_ok());
        assert_eq!(
            parse(b"MAIL FROM:<\xff@x.test>"),
            Err(SyntaxError::Encoding)
        );
    }

    #[test]
    fn bdat_forms() {
        assert_eq!(
            parse(b"BDAT 100"),
            Ok(Command::Bdat {
                size: 100,
                last: false
            })
        );
        assert_eq!(
            parse(b"BDAT 0 LAST"),
            Ok(Command::Bdat {
                size: 0,
                last: true
            })
        );
        assert!(parse(b"BDAT").is_err());
        assert!(parse(b"BDAT -1").is_err());
        assert!(parse(b"BDAT 10 FIRST").is_err());
        assert!(parse(b"BDAT 99999999999999999999999").is_err());
    }

    #[test]
    fn unknown_and_missing_arguments() {
        assert_eq!(parse(b"FROB"), Err(SyntaxError::Unknown));
        assert_eq!(parse(b"AVERYLONGVERB x"), Err(SyntaxError::Unknown));
        assert!(matches!(parse(b"EHLO"), Err(SyntaxError::Arguments(_))));
        assert!(matches!(parse(b"DATA now"), Err(SyntaxError::Arguments(_))));
        assert!(matches!(parse(b"QUIT x"), Err(SyntaxError::Arguments(_))));
    }
}
