//! Turning a raw log line into the text the message regexes read: lossy UTF-8, no ANSI colour
//! codes, HTML entities decoded (`&gt;&gt;` in issue text), the last carriage-return segment only
//! (progress bars redraw a line with `\r`), and line prefixes (ranks, timestamps) recognised.
use std::borrow::Cow;
use std::sync::LazyLock;

use regex::Regex;

/// Cleans one line (without its `\n`).
pub fn clean_line(raw: &[u8]) -> String {
    let raw = strip_cr(raw);
    let text = String::from_utf8_lossy(raw);
    let text = strip_ansi(&text);
    let text = unescape_html(&text);
    text.into_owned()
}

/// A line redrawn with `\r` (progress bars) shows its last segment; keep the last segment that
/// holds a trigger word, else the last one (a trailing `\r` of CRLF is dropped first).
fn strip_cr(raw: &[u8]) -> &[u8] {
    let mut s = raw;
    while let Some((&(b'\r' | b'\n'), rest)) = s.split_last() {
        s = rest;
    }
    if memchr::memchr(b'\r', s).is_none() {
        return s;
    }
    let mut segments = s.split(|&b| b == b'\r');
    let last = segments.next_back().unwrap_or(s);
    if super::scan::is_candidate(last) {
        return last;
    }
    segments
        .rev()
        .find(|seg| super::scan::is_candidate(seg))
        .unwrap_or(last)
}

/// Removes ANSI escape sequences: CSI (`ESC [ ... final`), OSC (`ESC ] ... BEL|ESC \`) and
/// two-byte escapes.
pub fn strip_ansi(s: &str) -> Cow<'_, str> {
    if !s.contains('\x1b') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('[') => {
                // parameters and intermediates, then one final byte in @..~
                for d in chars.by_ref() {
                    if ('@'..='~').contains(&d) {
                        break;
                    }
                }
            }
            Some(']') => {
                while let Some(d) = chars.next() {
                    if d == '\x07' {
                        break;
                    }
                    if d == '\x1b' {
                        if chars.peek() == Some(&'\\') {
                            chars.next();
                        }
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    Cow::Owned(out)
}

/// Decodes the HTML entities that appear in pasted issue text.
pub fn unescape_html(s: &str) -> Cow<'_, str> {
    if !s.contains('&') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        // an entity is short: look for its ';' in the next few bytes (ASCII, so a char boundary)
        let end = rest.as_bytes()[..rest.len().min(10)]
            .iter()
            .position(|&c| c == b';');
        let decoded = end.and_then(|e| {
            let ent = &rest[1..e];
            let c = match ent {
                "gt" => Some('>'),
                "lt" => Some('<'),
                "amp" => Some('&'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "nbsp" => Some(' '),
                _ => {
                    if let Some(hex) = ent.strip_prefix("#x").or_else(|| ent.strip_prefix("#X")) {
                        u32::from_str_radix(hex, 16).ok().and_then(char::from_u32)
                    } else if let Some(dec) = ent.strip_prefix('#') {
                        dec.parse::<u32>().ok().and_then(char::from_u32)
                    } else {
                        None
                    }
                }
            };
            c.map(|c| (c, e))
        });
        match decoded {
            Some((c, e)) => {
                out.push(c);
                rest = &rest[e + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Line prefixes that launchers, loggers and CI add (stripped from continuation lines of a
/// wrapped message): `[rank3]: `, `[default0]:`, `(VllmWorker rank=3 pid=1090) ERROR 06-05
/// 06:18:13 [file.py:470] `, `(Worker_TP0 pid=548) `, CI `2025-11-14T08:52:38.3746210Z `,
/// `# ` comment markers, `**` bold markers.
static PREFIX: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^(?:\s*(?:\[rank\d+\]:|\[default\d+\]:|\([A-Za-z_][\w]*(?: [a-z_]+=[^ )]*)*\)(?: [A-Z]+ \d\d-\d\d \d\d:\d\d:\d\d \[[^\]]*\])?|\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?Z?:?|\[\s*\d+\.\d+\]|#|\*\*))+\s?",
    )
    .expect("prefix regex")
});

static RANK: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^\s*(?:\[rank(\d+)\]:|\[default(\d+)\]:|\([A-Za-z_]\w*[^)]* rank=(\d+)[ )])")
        .expect("rank regex")
});

/// The line without launcher/logger prefixes.
pub fn strip_prefix(s: &str) -> &str {
    match PREFIX.find(s) {
        Some(m) => &s[m.end()..],
        None => s,
    }
}

/// The distributed rank named by a line prefix, if any.
pub fn rank_of(s: &str) -> Option<u64> {
    let c = RANK.captures(s)?;
    (1..=3)
        .find_map(|i| c.get(i))
        .and_then(|m| m.as_str().parse().ok())
}

/// Collapses runs of ASCII whitespace into one space (messages re-flowed by Markdown or wrapping).
pub fn collapse_ws(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut space = false;
    for c in s.chars() {
        if c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\x0b' || c == '\x0c' {
            space = true;
        } else {
            if space && !out.is_empty() {
                out.push(' ');
            }
            space = false;
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_noise() {
        assert_eq!(clean_line(b"\x1b[31mCUDA out\x1b[0m of\r\n"), "CUDA out of");
        assert_eq!(clean_line(b"10%|#  \r50%|### \rdone\r\n"), "done");
        assert_eq!(
            clean_line(b"10%\rCUDA out of memory. Tried\r 50%|###"),
            "CUDA out of memory. Tried"
        );
        assert_eq!(
            clean_line(b"memory is &gt;&gt; allocated &amp;"),
            "memory is >> allocated &"
        );
        assert_eq!(clean_line(b"a &bogus; b & c"), "a &bogus; b & c");
        assert_eq!(clean_line(b"bad \xff utf8"), "bad \u{fffd} utf8");
        assert_eq!(strip_ansi("\x1b]0;title\x07x"), "x");
    }

    #[test]
    fn prefixes_and_ranks() {
        assert_eq!(strip_prefix("[rank3]: GiB is free"), "GiB is free");
        assert_eq!(
            strip_prefix("(VllmWorker rank=3 pid=1090) ERROR 06-05 06:18:13 [multiproc_executor.py:470] CUDA"),
            "CUDA"
        );
        assert_eq!(strip_prefix("2025-11-14T08:52:38.3746210Z text"), "text");
        assert_eq!(strip_prefix("plain text"), "plain text");
        assert_eq!(rank_of("[rank7]: x"), Some(7));
        assert_eq!(rank_of("[default2]:x"), Some(2));
        assert_eq!(rank_of("(VllmWorker rank=3 pid=1090) ERROR"), Some(3));
        assert_eq!(rank_of("rank=3"), None);
        assert_eq!(collapse_ws("a  b\t c "), "a b c");
    }
}
