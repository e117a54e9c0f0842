//! Escaping for text that reaches the log but came from a client or a guest (paths, names, error
//! messages quoting them). The human log format prints fields raw, so a newline in an import path
//! would otherwise forge a log line; every such field goes through [`Escaped`].

use std::fmt;

/// Displays the wrapped value with control characters (newline, carriage return, escape, …)
/// written as Rust escapes (`\n`, `\r`, `\u{1b}`). Printable text, non-ASCII included, is kept.
pub struct Escaped<T>(pub T);

impl<T: fmt::Display> fmt::Display for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        let text = self.0.to_string();
        for c in text.chars() {
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

/// `Escaped` for a path, shown lossily.
pub fn path(p: &std::path::Path) -> Escaped<std::path::Display<'_>> {
    Escaped(p.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        let s = Escaped("/srv/x\nlevel=INFO forged\r\u{1b}[31m é").to_string();
        assert_eq!(s, "/srv/x\\nlevel=INFO forged\\r\\u{1b}[31m é");
        assert!(!s.contains('\n'));
    }
}
