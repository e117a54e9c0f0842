//! The detach key sequence of `vm shell`/`vm attach` (`ctrl-],d` by default): parsed from the
//! `--detach-keys` text and matched in the stream of typed bytes.

/// A parsed sequence and how much of it was typed so far.
#[derive(Debug, Clone)]
pub struct Detach {
    keys: Vec<u8>,
    matched: usize,
    text: String,
}

/// What to do with a chunk of typed bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Typed {
    /// Send these bytes (possibly empty while a sequence is half typed).
    Send(Vec<u8>),
    /// The sequence was completed: send these bytes typed before it, then detach.
    Detach(Vec<u8>),
}

impl Detach {
    /// Parses `ctrl-],d`: comma-separated keys, each `ctrl-X` or a single character.
    pub fn parse(text: &str) -> Result<Self, String> {
        let keys = text
            .split(',')
            .map(|key| parse_key(key.trim()))
            .collect::<Result<Vec<u8>, String>>()?;
        if keys.is_empty() {
            return Err("--detach-keys: give at least one key".into());
        }
        Ok(Self {
            keys,
            matched: 0,
            text: text.to_string(),
        })
    }

    /// The sequence as the user wrote it, for the hint.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Feeds typed bytes; keys of a half-typed sequence are held back until it completes or
    /// breaks (then they are sent as typed).
    ///
    /// A chunk that is one whole control sequence (`ESC [ … final`) while a sequence is half
    /// typed is the terminal's own answer to a guest's query (a cursor position report after
    /// the prompt), not a key: it is sent on and the half-typed sequence stays held back.
    pub fn feed(&mut self, input: &[u8]) -> Typed {
        if self.matched > 0 && is_control_sequence(input) {
            return Typed::Send(input.to_vec());
        }
        let mut out = Vec::with_capacity(input.len());
        for &b in input {
            if b == self.keys[self.matched] {
                self.matched += 1;
                if self.matched == self.keys.len() {
                    self.matched = 0;
                    return Typed::Detach(out);
                }
                continue;
            }
            out.extend_from_slice(&self.keys[..self.matched]);
            self.matched = 0;
            if b == self.keys[0] {
                self.matched = 1;
                if self.keys.len() == 1 {
                    self.matched = 0;
                    return Typed::Detach(out);
                }
            } else {
                out.push(b);
            }
        }
        Typed::Send(out)
    }
}

/// `ESC [` then parameter and intermediate bytes, then one final byte, and nothing more.
fn is_control_sequence(chunk: &[u8]) -> bool {
    let [0x1b, b'[', body @ .., last] = chunk else {
        return false;
    };
    (0x40..=0x7e).contains(last) && body.iter().all(|b| (0x20..=0x3f).contains(b))
}

fn parse_key(key: &str) -> Result<u8, String> {
    let bad = || format!("--detach-keys: {key:?} is not `ctrl-X` or one ASCII character");
    if let Some(rest) = key.strip_prefix("ctrl-") {
        let &[c] = rest.as_bytes() else {
            return Err(bad());
        };
        return match c.to_ascii_uppercase() {
            c @ b'@'..=b'_' => Ok(c - b'@'),
            _ => Err(bad()),
        };
    }
    match key.as_bytes() {
        &[c] if c.is_ascii() && c != b',' => Ok(c),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_sequence_detaches_after_ctrl_bracket_then_d() {
        let mut d = Detach::parse("ctrl-],d").unwrap();

        assert_eq!(d.feed(b"ls\x1d"), Typed::Send(b"ls".to_vec()));
        assert_eq!(d.feed(b"d"), Typed::Detach(Vec::new()));
    }

    #[test]
    fn broken_sequence_sends_what_was_held_back() {
        let mut d = Detach::parse("ctrl-],d").unwrap();

        assert_eq!(d.feed(b"\x1dx"), Typed::Send(b"\x1dx".to_vec()));
    }

    #[test]
    fn terminal_reply_between_the_keys_does_not_break_the_sequence() {
        let mut d = Detach::parse("ctrl-],d").unwrap();

        assert_eq!(d.feed(b"\x1d"), Typed::Send(Vec::new()));
        assert_eq!(d.feed(b"\x1b[13;8R"), Typed::Send(b"\x1b[13;8R".to_vec()));
        assert_eq!(d.feed(b"d"), Typed::Detach(Vec::new()));
    }

    #[test]
    fn malformed_keys_are_refused() {
        assert!(Detach::parse("ctrl-xy").is_err());
        assert!(Detach::parse("ab").is_err());
    }
}
