//! Recipient-directory import from CSV (the control service's `directory import`):
//! column A the address, column B the full name.

use crate::address::check_directory_address;

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

/// The field delimiter, from the first line: a comma, else a tab, else a semicolon (as
/// spreadsheets write CSV in locales where the comma is the decimal mark).
fn delimiter(text: &str) -> u8 {
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    if first.contains(',') {
        b','
    } else if first.contains('\t') {
        b'\t'
    } else if first.contains(';') {
        b';'
    } else {
        b','
    }
}

/// Reads a whole file (UTF-8, with or without a byte-order mark; quoted fields may hold
/// delimiters, doubled quotes and line breaks). Blank lines are skipped, and so is a
/// first record whose column A is a heading (it holds no `@`). The domain of every
/// address must be `domain`. Errors carry the line where their record starts.
pub fn parse(text: &str, domain: &str) -> (Vec<Entry>, Vec<LineError>) {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .delimiter(delimiter(text))
        .from_reader(text.as_bytes());
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    let mut record = csv::StringRecord::new();
    let mut first = true;
    // Line numbers from the byte offsets, counting LFs: the reader's own count is one
    // short per CRLF line end (as spreadsheets write them).
    let (mut counted_to, mut lines) = (0usize, 1usize);
    let mut n = |p: Option<&csv::Position>| {
        let Some(p) = p else { return 0 };
        // A record's position can be that of the blank lines before it.
        let mut at = (p.byte() as usize).min(text.len());
        while matches!(text.as_bytes().get(at), Some(b'\r' | b'\n')) {
            at += 1;
        }
        if at < counted_to {
            (counted_to, lines) = (0, 1);
        }
        lines += text.as_bytes()[counted_to..at]
            .iter()
            .filter(|b| **b == b'\n')
            .count();
        counted_to = at;
        lines
    };
    loop {
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                let line = n(e.position());
                errors.push(LineError {
                    line,
                    error: format!("not readable as CSV: {e}"),
                });
                if matches!(e.kind(), csv::ErrorKind::Io(_)) {
                    break;
                }
                continue;
            }
        }
        let line = n(record.position());
        let address = record.get(0).unwrap_or("").to_string();
        if record.iter().all(str::is_empty) {
            continue;
        }
        let heading = first && !address.contains('@') && !address.contains([':', ';']);
        first = false;
        if heading {
            continue;
        }
        if address.contains(['\n', '\r']) {
            errors.push(LineError {
                line,
                error: "unterminated quoted field (it runs over the following lines)".into(),
            });
            continue;
        }
        if let Err(e) = check_directory_address(&address) {
            errors.push(LineError { line, error: e });
            continue;
        }
        let in_domain = address
            .rsplit_once('@')
            .is_some_and(|(_, d)| d.eq_ignore_ascii_case(domain));
        if !in_domain {
            errors.push(LineError {
                line,
                error: format!("{address:?} is not in the domain {domain}"),
            });
            continue;
        }
        entries.push(Entry {
            address: address.to_ascii_lowercase(),
            name: record.get(1).unwrap_or("").to_string(),
        });
    }
    (entries, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_numbers_are_right_with_crlf_line_ends() {
        for eol in ["\n", "\r\n"] {
            let text = [
                "Email,Name",
                "bob@example.test,Bob",
                "not-an-address,X",
                "",
                "x@other.test,Y",
            ]
            .join(eol);
            let (entries, errors) = parse(&text, "example.test");
            assert_eq!(entries.len(), 1, "{eol:?}");
            let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
            assert_eq!(lines, [3, 5], "{eol:?}: {errors:?}");
        }
    }

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
        let text = "alice@example.test,Alice\na@example.test;b@example.test,Two\nno-at-sign,X\nsp ace@example.test,Y\nz@other.test,Z\nok@example.test,Ok\na@example.test:b@example.test\n\"open,quote\nlast@example.test,L\n";
        let (e, errs) = parse(text, "example.test");
        assert_eq!(e.len(), 2);
        let lines: Vec<usize> = errs.iter().map(|x| x.line).collect();
        assert_eq!(lines, [2, 3, 4, 5, 7, 8]);
        assert!(errs[0].error.contains("several addresses"));
        assert!(errs[3].error.contains("not in the domain"));
        assert!(errs[5].error.contains("unterminated"), "{errs:?}");
    }

    #[test]
    fn byte_order_mark_multi_line_names_and_other_delimiters() {
        // A spreadsheet's export: BOM, CRLF, a name with a line break inside quotes.
        let text = "\u{feff}Email;Name\r\nalice@example.test;\"Liddell;\r\nAlice\"\r\nbob@example.test;Bob\r\n";
        let (e, errs) = parse(text, "example.test");
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].name, "Liddell;\r\nAlice");
        assert_eq!(e[1].address, "bob@example.test");
        // Tab-separated, no heading; a BOM before a first address is not part of it.
        let (e, errs) = parse(
            "\u{feff}carol@example.test\tCarol\ndave@example.test\tDave\n",
            "example.test",
        );
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(e[0].address, "carol@example.test");
        assert_eq!(e[1].name, "Dave");
        // The line of an error after a multi-line record is the file's line.
        let (_, errs) = parse("a@example.test,\"two\nlines\"\nbad\n", "example.test");
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].line, 3);
    }
}
