//! Strings from the network or another process, made safe to print: control
//! characters escaped (a newline in a service name must never start a forged
//! log line, an escape sequence never reach a terminal) and length clipped.

use std::borrow::Cow;
use std::fmt::{self, Write as _};

/// True for characters that must not reach a log line or a terminal as is:
/// C0 and C1 controls, DEL, and the Unicode controls that reorder or hide
/// text (bidirectional overrides and isolates, line and paragraph separators).
fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every control character escaped the way Rust writes it in a
/// string literal (`\n`, `\t`, `\u{1b}`); a backslash stays a backslash.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        push_escaped(&mut out, c);
    }
    Cow::Owned(out)
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if needs_escape(c) => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
        c => out.push(c),
    }
}

/// Escapes every control character of a formatted log line except its final
/// newline, so that one event is always exactly one line.
pub fn escape_line(line: &str) -> Cow<'_, str> {
    match line.strip_suffix('\n') {
        Some(body) => match escape(body) {
            Cow::Borrowed(_) => Cow::Borrowed(line),
            Cow::Owned(mut s) => {
                s.push('\n');
                Cow::Owned(s)
            }
        },
        None => escape(line),
    }
}

/// `s` escaped and cut to at most `max` bytes of its own text, saying how
/// long it was when cut.
pub fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return escape(s).into_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", escape(&s[..end]), s.len())
}

/// Displays a string escaped (see [`escape`]).
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&escape(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_and_plain_text_is_borrowed() {
        assert!(matches!(escape("plain text é"), Cow::Borrowed(_)));
        assert_eq!(escape("a\nb\x1b[31m\u{202e}"), r"a\nb\u{1b}[31m\u{202e}");
        assert_eq!(escape_line("x\ny\n"), "x\\ny\n");
        assert_eq!(escape_line("x\n"), "x\n");
    }

    #[test]
    fn clip_cuts_on_a_character_boundary() {
        assert_eq!(clip("abc", 10), "abc");
        assert_eq!(clip("ééé", 3), "é... (6 bytes)");
    }
}
