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
    use proptest::prelude::*;

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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the input, the escaped form has no control character
        /// left, and text without one comes back unchanged.
        #[test]
        fn nothing_that_needs_escaping_survives(s in any::<String>()) {
            let e = escape(&s);
            prop_assert!(!e.chars().any(needs_escape), "{:?} -> {:?}", s, e);
            if !s.chars().any(needs_escape) {
                prop_assert_eq!(&*e, &*s);
            }
            prop_assert_eq!(Escaped(&s).to_string(), e.to_string());
            let with_newline = format!("{s}\n");
            let line = escape_line(&with_newline);
            prop_assert_eq!(line.matches('\n').count(), 1);
            prop_assert!(line.ends_with('\n'));
        }

        /// A clip is at most `max` bytes of the text (escaped), and says how
        /// long the text was when it cut it.
        #[test]
        fn a_clip_keeps_a_prefix_and_names_the_length(s in "[a-zé\u{1F600}]{0,20}", max in 0usize..30) {
            let c = clip(&s, max);
            if s.len() <= max {
                prop_assert_eq!(c, s);
            } else {
                let suffix = format!("... ({} bytes)", s.len());
                prop_assert!(c.ends_with(&suffix), "{}", c);
                let kept = &c[..c.len() - suffix.len()];
                prop_assert!(s.starts_with(kept) && kept.len() <= max && kept.len() + 4 > max, "{:?} {} -> {:?}", s, max, c);
            }
        }
    }

    #[test]
    fn each_control_is_escaped_its_own_way() {
        for (raw, shown) in [
            ("\n", r"\n"),
            ("\r", r"\r"),
            ("\t", r"\t"),
            ("\x00", r"\u{0}"),
            ("\x7f", r"\u{7f}"),
            ("\u{85}", r"\u{85}"),
            ("\u{2028}", r"\u{2028}"),
            ("\u{2029}", r"\u{2029}"),
            ("\u{202a}", r"\u{202a}"),
            ("\u{2066}", r"\u{2066}"),
            ("\u{2069}", r"\u{2069}"),
        ] {
            assert_eq!(escape(raw), shown, "{raw:?}");
            assert_eq!(escape(&format!("a{raw}b")), format!("a{shown}b"));
        }
        for plain in ["\u{2027}", "\u{202f}", "\u{2065}", "\u{206a}", "\\", "é", " "] {
            assert!(matches!(escape(plain), Cow::Borrowed(p) if p == plain), "{plain:?}");
        }
        assert!(matches!(escape_line("a\n"), Cow::Borrowed("a\n")));
        assert_eq!(escape_line("a\tb"), r"a\tb");
        assert_eq!(Escaped("a\x1b").to_string(), r"a\u{1b}");
        assert_eq!(clip("abcdef", 3), "abc... (6 bytes)");
        assert_eq!(clip("a\nb", 3), r"a\nb");
        assert_eq!(clip("a\nbc", 3), r"a\nb... (4 bytes)");
    }
}
