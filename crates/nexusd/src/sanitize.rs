//! The one sanitiser for text a guest or a client controls: console output, Firecracker's own
//! log and stderr, the agent's version strings and error messages, import paths and names.
//! Whatever of it nexusd quotes (in an API answer, a VM's history, a log line) goes through here.
//!
//! One reading of the text, two renderings:
//! - [`clean`] and [`clean_lines`], for text shown to people: bytes decoded lossily (invalid
//!   UTF-8 becomes U+FFFD), ANSI escape sequences (CSI such as `ESC [ 31 m`, OSC strings such as
//!   a terminal title, two-byte escapes) removed whole, tabs turned into spaces, every other
//!   control character dropped, and at most a given number of characters kept. [`file_tail`]
//!   does the same for the newest bytes of a file a guest or a VMM writes.
//! - [`Escaped`], for log fields: nothing is dropped, every control character (an escape
//!   sequence's `ESC` included) is written as a Rust escape (`\n`, `\u{1b}`), so a newline
//!   cannot forge a log line and the log still shows exactly what was sent.

use std::fmt;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// `ESC`, which starts an escape sequence.
const ESC: char = '\u{1b}';
/// The C1 form of `ESC [`.
const C1_CSI: char = '\u{9b}';

/// `input` as one line of at most `max_chars` characters: see the module comment; newlines
/// become spaces.
pub fn clean(input: impl AsRef<[u8]>, max_chars: usize) -> String {
    render(input.as_ref(), max_chars, false)
}

/// [`clean`], keeping newlines (console output quoted line by line).
pub fn clean_lines(input: impl AsRef<[u8]>, max_chars: usize) -> String {
    render(input.as_ref(), max_chars, true)
}

/// The newest `max_bytes` of the file at `path` through [`clean_lines`], without the first line
/// when the cut fell inside it. Empty when the file cannot be read.
pub fn file_tail(path: &Path, max_bytes: u64) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(max_bytes);
    // One byte more when cut: if it is a newline, the first line is whole.
    let from = start.saturating_sub(u64::from(start > 0));
    if f.seek(SeekFrom::Start(from)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.take(len - from).read_to_end(&mut buf);
    if start > 0
        && let Some(newline) = buf.iter().position(|b| *b == b'\n')
    {
        buf.drain(..=newline);
    }
    clean_lines(&buf, usize::MAX)
}

fn render(input: &[u8], max_chars: usize, keep_newlines: bool) -> String {
    let text = String::from_utf8_lossy(input);
    let mut out = String::with_capacity(text.len().min(max_chars));
    let mut kept = 0;
    let mut chars = text.chars().peekable();
    while kept < max_chars {
        let Some(c) = chars.next() else { break };
        let shown = match c {
            ESC => {
                skip_escape(&mut chars);
                None
            }
            C1_CSI => {
                skip_csi(&mut chars);
                None
            }
            '\n' if keep_newlines => Some('\n'),
            '\n' | '\t' => Some(' '),
            c if c.is_control() => None,
            c => Some(c),
        };
        if let Some(c) = shown {
            out.push(c);
            kept += 1;
        }
    }
    out
}

/// Skips what follows an `ESC`: a CSI sequence, a control string (OSC, DCS, SOS, PM, APC) up to
/// its terminator, or a two-byte escape (intermediates, then one final character).
fn skip_escape(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    match chars.next() {
        Some('[') => skip_csi(chars),
        Some(']' | 'P' | 'X' | '^' | '_') => {
            // Ends at BEL or at ST (`ESC \`); an unterminated string runs to the end.
            while let Some(c) = chars.next() {
                if c == '\u{7}' || (c == ESC && chars.next_if_eq(&'\\').is_some()) {
                    break;
                }
            }
        }
        Some(' '..='/') => {
            while chars.next_if(|c| matches!(c, ' '..='/')).is_some() {}
            chars.next_if(|c| matches!(c, '0'..='~'));
        }
        _ => {}
    }
}

/// Skips a CSI sequence's parameters, intermediates and final character.
fn skip_csi(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    while chars.next_if(|c| matches!(c, '0'..='?')).is_some() {}
    while chars.next_if(|c| matches!(c, ' '..='/')).is_some() {}
    chars.next_if(|c| matches!(c, '@'..='~'));
}

/// Displays the wrapped value for a log field: control characters (newline, carriage return,
/// escape, …) written as Rust escapes (`\n`, `\r`, `\u{1b}`); printable text, non-ASCII
/// included, kept.
pub struct Escaped<T>(pub T);

impl<T: fmt::Display> fmt::Display for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        for c in self.0.to_string().chars() {
            if c.is_control() {
                for e in c.escape_default() {
                    f.write_char(e)?;
                }
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

impl<T: fmt::Display> fmt::Debug for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_dropped_and_tabs_become_spaces() {
        assert_eq!(clean("a\u{0}b\r\u{7}c\td\u{7f}e\u{85}f", 100), "abc def");
    }

    #[test]
    fn newlines_become_spaces_in_one_line_and_stay_in_lines() {
        assert_eq!(
            (clean("one\ntwo", 100), clean_lines("one\r\ntwo", 100)),
            ("one two".to_owned(), "one\ntwo".to_owned())
        );
    }

    #[test]
    fn ansi_escape_sequences_are_removed_whole() {
        let raw = "\u{1b}[1;31mred\u{1b}[0m \u{1b}]0;title\u{7}ok \u{1b}]8;;http://x\u{1b}\\link \u{1b}(Bascii \u{9b}2Jc1 \u{1b}7saved";
        assert_eq!(clean(raw, 100), "red ok link ascii c1 saved");
    }

    #[test]
    fn an_unterminated_sequence_at_the_end_is_dropped() {
        assert_eq!(
            (
                clean("a\u{1b}", 10),
                clean("b\u{1b}[12", 10),
                clean("c\u{1b}]title", 10)
            ),
            ("a".to_owned(), "b".to_owned(), "c".to_owned())
        );
    }

    #[test]
    fn invalid_utf8_becomes_replacement_characters_and_valid_text_is_kept() {
        assert_eq!(
            clean(b"ok \xff\xfe caf\xc3\xa9", 100),
            "ok \u{fffd}\u{fffd} café"
        );
    }

    #[test]
    fn output_is_capped_in_characters_after_removal() {
        assert_eq!(clean("\u{1b}[31méééé", 3), "ééé");
        assert_eq!(clean("x".repeat(10_000), 128).len(), 128);
    }

    #[test]
    fn file_tail_keeps_whole_lines_only_and_cleans_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        std::fs::write(&path, "older line\npartial\x1b[32m green\x07\nnewest\n").unwrap();

        assert_eq!(file_tail(&path, 27), "partial green\nnewest\n");
        assert_eq!(file_tail(&path, 20), "newest\n");
        assert_eq!(file_tail(&dir.path().join("missing"), 20), "");
    }

    #[test]
    fn escaped_writes_control_characters_as_escapes_and_keeps_the_rest() {
        let s = Escaped("/srv/x\nlevel=INFO forged\r\u{1b}[31m é").to_string();
        assert_eq!(s, "/srv/x\\nlevel=INFO forged\\r\\u{1b}[31m é");
    }
}
