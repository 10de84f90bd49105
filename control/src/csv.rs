//! Recipient-directory import from CSV: column A the address, column B the full name.

use bulwark_policy::address::check_directory_address;

/// One address to import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub address: String,
    pub name: String,
}

/// A line that cannot be imported.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LineError {
    pub line: usize,
    pub error: String,
}

/// Splits one CSV record: commas separate fields, double quotes protect commas and
/// quote themselves by doubling.
fn fields(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', true) => quoted = false,
            ('"', false) if cur.trim().is_empty() && !was_quoted => {
                cur.clear();
                quoted = true;
                was_quoted = true;
            }
            (',', false) => {
                out.push(std::mem::take(&mut cur));
                was_quoted = false;
            }
            (c, _) => cur.push(c),
        }
    }
    if quoted {
        return Err("unterminated quoted field".into());
    }
    out.push(cur);
    Ok(out.into_iter().map(|f| f.trim().to_string()).collect())
}

/// Reads a whole file. Blank lines are skipped, and so is a first line whose column A
/// is a heading (it holds no `@`). The domain of every address must be `domain`.
pub fn parse(text: &str, domain: &str) -> (Vec<Entry>, Vec<LineError>) {
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let f = match fields(line) {
            Ok(f) => f,
            Err(e) => {
                errors.push(LineError { line: n, error: e });
                continue;
            }
        };
        let address = f.first().cloned().unwrap_or_default();
        if n == 1 && !address.contains('@') && !address.contains([':', ';']) {
            continue;
        }
        if let Err(e) = check_directory_address(&address) {
            errors.push(LineError { line: n, error: e });
            continue;
        }
        let in_domain = address
            .rsplit_once('@')
            .is_some_and(|(_, d)| d.eq_ignore_ascii_case(domain));
        if !in_domain {
            errors.push(LineError {
                line: n,
                error: format!("{address:?} is not in the domain {domain}"),
            });
            continue;
        }
        entries.push(Entry {
            address: address.to_ascii_lowercase(),
            name: f.get(1).cloned().unwrap_or_default(),
        });
    }
    (entries, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_file_with_heading_and_quotes() {
        let text = "Email Address,Full Name\r\nalice@example.test,Alice Liddell\r\n\"bob@example.test\",\"Smith, Bob \"\"B\"\"\"\r\n\r\ncarol@example.test\r\n";
        let (e, errs) = parse(text, "example.test");
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(e.len(), 3);
        assert_eq!(
            e[1],
            Entry {
                address: "bob@example.test".into(),
                name: "Smith, Bob \"B\"".into()
            }
        );
        assert_eq!(e[2].name, "");
    }

    #[test]
    fn every_bad_line_is_reported_with_its_number() {
        let text = "alice@example.test,Alice\na@example.test;b@example.test,Two\nno-at-sign,X\nsp ace@example.test,Y\nz@other.test,Z\n\"open,quote\nok@example.test,Ok\na@example.test:b@example.test\n";
        let (e, errs) = parse(text, "example.test");
        assert_eq!(e.len(), 2);
        let lines: Vec<usize> = errs.iter().map(|x| x.line).collect();
        assert_eq!(lines, [2, 3, 4, 5, 6, 8]);
        assert!(errs[0].error.contains("several addresses"));
        assert!(errs[3].error.contains("not in the domain"));
        assert!(errs[4].error.contains("unterminated"));
    }
}
