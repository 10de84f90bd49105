//! HTML rendered to text for the body rules and the classifier, and its links with their
//! visible text for the uri rules and the phishing checks. A forgiving single pass over
//! the markup: no tree is built, malformed markup degrades to text, and the cost is
//! linear in the input.

/// A link found in HTML: where it points and the text a reader sees for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub href: String,
    pub text: String,
}

/// Text and links of one HTML document.
#[derive(Debug, Default)]
pub struct Rendered {
    pub text: String,
    pub links: Vec<Link>,
}

/// Elements whose content is never shown.
const HIDDEN: [&str; 5] = ["script", "style", "head", "template", "title"];
/// Elements that start a new line of text.
const BLOCK: [&str; 16] = [
    "br",
    "p",
    "div",
    "tr",
    "li",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "table",
    "ul",
    "ol",
    "blockquote",
    "hr",
];

/// Renders `html` to text, collecting `<a href>` links (with their text) and image
/// sources (without). At most `max_links` links are kept.
pub fn render(html: &str, max_links: usize) -> Rendered {
    let b = html.as_bytes();
    let mut out = Rendered {
        text: String::with_capacity(html.len() / 2),
        links: Vec::new(),
    };
    let mut hidden: Option<&'static str> = None;
    let mut link: Option<(String, String)> = None;
    let mut i = 0;
    let mut last_space = true;
    while i < b.len() {
        if b[i] == b'<' {
            if b[i..].starts_with(b"<!--") {
                i = match memchr::memmem::find(&b[i + 4..], b"-->") {
                    Some(p) => i + 4 + p + 3,
                    None => b.len(),
                };
                continue;
            }
            let end = match memchr::memchr(b'>', &b[i + 1..]) {
                Some(p) => i + 1 + p,
                None => b.len(),
            };
            let tag = &html[i + 1..end.min(b.len())];
            i = end + 1;
            let (closing, name, attrs) = split_tag(tag);
            if let Some(h) = hidden {
                if closing && name.eq_ignore_ascii_case(h) {
                    hidden = None;
                }
                continue;
            }
            if !closing && let Some(h) = HIDDEN.iter().find(|h| name.eq_ignore_ascii_case(h)) {
                if !tag.ends_with('/') {
                    hidden = Some(h);
                }
                continue;
            }
            if name.eq_ignore_ascii_case("a") {
                if closing {
                    if let Some((href, text)) = link.take()
                        && out.links.len() < max_links
                    {
                        out.links.push(Link {
                            href,
                            text: text.trim().to_string(),
                        });
                    }
                } else if let Some(href) = attribute(attrs, "href") {
                    if let Some((href, text)) = link.take()
                        && out.links.len() < max_links
                    {
                        out.links.push(Link {
                            href,
                            text: text.trim().to_string(),
                        });
                    }
                    link = Some((decode_entities(href.trim()), String::new()));
                }
            } else if !closing
                && (name.eq_ignore_ascii_case("img") || name.eq_ignore_ascii_case("area"))
            {
                let attr = if name.eq_ignore_ascii_case("img") {
                    "src"
                } else {
                    "href"
                };
                if let Some(src) = attribute(attrs, attr)
                    && out.links.len() < max_links
                {
                    out.links.push(Link {
                        href: decode_entities(src.trim()),
                        text: String::new(),
                    });
                }
            }
            if BLOCK.iter().any(|t| name.eq_ignore_ascii_case(t)) {
                if !out.text.ends_with('\n') && !out.text.is_empty() {
                    // Trailing spaces before a line break carry nothing.
                    while out.text.ends_with(' ') {
                        out.text.pop();
                    }
                    out.text.push('\n');
                }
                last_space = true;
            } else if !last_space {
                // An inline tag between two words still separates them in most cases
                // that matter to rules (`<b>free</b>money` is rare; `cell</td><td>` is
                // not).
                if name.eq_ignore_ascii_case("td") || name.eq_ignore_ascii_case("th") {
                    out.text.push(' ');
                    last_space = true;
                }
            }
            continue;
        }
        let next = memchr::memchr(b'<', &b[i..]).map_or(b.len(), |p| i + p);
        if hidden.is_none() {
            let chunk = &html[i..next];
            let decoded = decode_entities(chunk);
            for c in decoded.chars() {
                let c = if c == '\u{a0}' { ' ' } else { c };
                if c.is_whitespace() {
                    if !last_space {
                        out.text.push(' ');
                        last_space = true;
                    }
                } else {
                    out.text.push(c);
                    last_space = false;
                }
            }
            if let Some((_, text)) = link.as_mut() {
                text.push_str(&decoded);
            }
        }
        i = next;
    }
    if let Some((href, text)) = link.take()
        && out.links.len() < max_links
    {
        out.links.push(Link {
            href,
            text: text.trim().to_string(),
        });
    }
    out
}

/// Splits the inside of a tag into (is closing, element name, attribute text).
fn split_tag(tag: &str) -> (bool, &str, &str) {
    let t = tag.trim_start();
    let (closing, t) = match t.strip_prefix('/') {
        Some(rest) => (true, rest.trim_start()),
        None => (false, t),
    };
    let end = t
        .find(|c: char| c.is_ascii_whitespace() || c == '/' || c == '>')
        .unwrap_or(t.len());
    (closing, &t[..end], &t[end..])
}

/// The value of attribute `name` (quoted or not) in a tag's attribute text.
fn attribute<'a>(attrs: &'a str, name: &str) -> Option<&'a str> {
    let b = attrs.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b'/') {
            i += 1;
        }
        let start = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'=' && b[i] != b'/' {
            i += 1;
        }
        let key = &attrs[start..i];
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < b.len() && b[i] == b'=' {
            i += 1;
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            let value = if i < b.len() && (b[i] == b'"' || b[i] == b'\'') {
                let q = b[i];
                let vstart = i + 1;
                let vend = memchr::memchr(q, &b[vstart..]).map_or(b.len(), |p| vstart + p);
                i = (vend + 1).min(b.len());
                &attrs[vstart..vend]
            } else {
                let vstart = i;
                while i < b.len() && !b[i].is_ascii_whitespace() {
                    i += 1;
                }
                &attrs[vstart..i]
            };
            if key.eq_ignore_ascii_case(name) {
                return Some(value);
            }
        } else if start == i {
            i += 1;
        }
    }
    None
}

/// Decodes the character references that matter for reading text and URLs.
pub fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(p) = rest.find('&') {
        out.push_str(&rest[..p]);
        rest = &rest[p..];
        let end = rest[1..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '#'))
            .map_or(rest.len(), |e| e + 1);
        let name = &rest[1..end];
        let decoded = if let Some(num) = name.strip_prefix('#') {
            let v = match num.strip_prefix(['x', 'X']) {
                Some(hex) => u32::from_str_radix(hex, 16).ok(),
                None => num.parse::<u32>().ok(),
            };
            v.and_then(char::from_u32)
        } else {
            match name.to_ascii_lowercase().as_str() {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "nbsp" => Some(' '),
                "copy" => Some('©'),
                "reg" => Some('®'),
                "euro" => Some('€'),
                "pound" => Some('£'),
                "shy" | "zwnj" | "zwj" => Some('\u{ad}'),
                _ => None,
            }
        };
        match decoded {
            Some(c) => {
                if c != '\u{ad}' {
                    out.push(c);
                }
                rest = &rest[end..];
                if rest.starts_with(';') {
                    rest = &rest[1..];
                }
            }
            None => {
                out.push_str(&rest[..end]);
                rest = &rest[end..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_text_and_skips_scripts_and_styles() {
        let r = render(
            "<html><head><title>t</title><style>p{x:1}</style></head><body><p>Hello&nbsp;\
             <b>big</b> world</p><script>var a='<p>';</script><div>next &amp; last</div></body>",
            10,
        );
        assert_eq!(r.text.trim(), "Hello big world\nnext & last");
    }

    #[test]
    fn links_keep_their_visible_text() {
        let r = render(
            r#"<a href="https://evil.example/login">https://www.bank.example</a> and
               <A HREF=http://x.example/a?b=1&amp;c=2>here</A><img src='http://img.example/p.gif'>"#,
            10,
        );
        assert_eq!(r.links.len(), 3);
        assert_eq!(r.links[0].href, "https://evil.example/login");
        assert_eq!(r.links[0].text, "https://www.bank.example");
        assert_eq!(r.links[1].href, "http://x.example/a?b=1&c=2");
        assert_eq!(r.links[1].text, "here");
        assert_eq!(r.links[2].href, "http://img.example/p.gif");
    }

    #[test]
    fn broken_markup_degrades_to_text() {
        let r = render("a <b unterminated", 10);
        assert_eq!(r.text, "a ");
        let r = render("<!-- never closed", 10);
        assert_eq!(r.text, "");
        let r = render("x &#x41;&#66;&bogus; &", 10);
        assert_eq!(r.text, "x AB&bogus; &");
    }
}
