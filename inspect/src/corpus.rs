//! Reading training mail: a directory of message files (one message per file, as
//! `.eml` files or a maildir's `cur/` and `new/`, searched recursively), or an mbox file
//! (messages split at `From ` lines).

use std::path::{Path, PathBuf};

/// Calls `f` with each message under `path`; returns how many were read.
pub fn for_each_message(path: &Path, mut f: impl FnMut(&[u8])) -> std::io::Result<usize> {
    for_each_named(path, |_, _, m| f(m))
}

/// Calls `f` with each message under `path`, with the file it came from and its index in
/// that file (0 unless the file is an mbox); returns how many were read.
pub fn for_each_named(
    path: &Path,
    mut f: impl FnMut(&Path, usize, &[u8]),
) -> std::io::Result<usize> {
    let mut n = 0;
    if path.is_file() {
        let bytes = std::fs::read(path)?;
        if bytes.starts_with(b"From ") {
            for (i, m) in split_mbox(&bytes).into_iter().enumerate() {
                f(path, i, m);
                n += 1;
            }
        } else {
            f(path, 0, &bytes);
            n += 1;
        }
        return Ok(n);
    }
    let mut stack = vec![path.to_path_buf()];
    let mut files: Vec<PathBuf> = Vec::new();
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if !p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.') || n == "cmds")
            {
                files.push(p);
            }
        }
    }
    files.sort();
    for p in files {
        let bytes = std::fs::read(&p)?;
        // An mbox, or one message with its mbox `From ` line (as archives keep them): the
        // line is not part of the message.
        if bytes.starts_with(b"From ") {
            for (i, m) in split_mbox(&bytes).into_iter().enumerate() {
                f(&p, i, m);
                n += 1;
            }
        } else {
            f(&p, 0, &bytes);
            n += 1;
        }
    }
    Ok(n)
}

/// Trains a classifier on labelled mail (each path a directory of messages, a maildir or
/// an mbox file); returns the model and how many spam and ham messages it learned.
pub fn train(
    spam: &[PathBuf],
    ham: &[PathBuf],
) -> Result<(crate::classifier::Model, u32, u32), (PathBuf, std::io::Error)> {
    let limits = crate::mime::Limits::default();
    let mut trainer = crate::classifier::Trainer::default();
    for (paths, is_spam) in [(spam, true), (ham, false)] {
        for p in paths {
            for_each_message(p, |m| {
                trainer.learn(&crate::mime::parse(m, &limits), is_spam)
            })
            .map_err(|e| (p.clone(), e))?;
        }
    }
    let (s, h) = trainer.counts();
    Ok((trainer.finish(), s, h))
}

/// The messages of an mbox, without their `From ` separator lines.
pub fn split_mbox(b: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut starts: Vec<usize> = Vec::new();
    if b.starts_with(b"From ") {
        starts.push(0);
    }
    for p in memchr::memmem::find_iter(b, b"\nFrom ") {
        starts.push(p + 1);
    }
    for (i, &s) in starts.iter().enumerate() {
        let end = starts.get(i + 1).copied().unwrap_or(b.len());
        let body_start = memchr::memchr(b'\n', &b[s..end]).map_or(end, |p| s + p + 1);
        out.push(&b[body_start..end]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_message_file_loses_its_mbox_from_line() {
        // Regression: archived messages start with an mbox `From ` line, which was read
        // as part of the header section.
        let dir = std::env::temp_dir().join(format!("bulwark-corpus-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("1.eml"),
            b"From someone@example.org  Thu Aug 22 12:36:23 2002\nSubject: s\n\nbody\n",
        )
        .unwrap();
        let mut got = Vec::new();
        for_each_message(&dir, |m| got.push(m.to_vec())).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(got, vec![b"Subject: s\n\nbody\n".to_vec()]);
    }

    #[test]
    fn mbox_splits_at_from_lines() {
        let m = b"From a@b Mon Jan 1 00:00:00 2024\nSubject: 1\n\nx\nFrom c@d Mon Jan 1 00:00:00 2024\nSubject: 2\n\ny\n";
        let parts = split_mbox(m);
        assert_eq!(parts.len(), 2);
        assert!(parts[0].starts_with(b"Subject: 1"));
        assert!(parts[1].starts_with(b"Subject: 2"));
    }
}
