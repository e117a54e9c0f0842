//! Splits the agent's newline-delimited JSON exec stream into lines, refusing any line longer
//! than the protocol allows so a misbehaving guest cannot grow the host's buffers.

use bytes::{Bytes, BytesMut};

use super::AgentError;

#[derive(Debug)]
pub struct NdjsonDecoder {
    buf: BytesMut,
    /// How much of `buf` is known to hold no `\n`, so each byte is searched once however the
    /// guest splits its frames.
    scanned: usize,
    max_line: usize,
}

impl NdjsonDecoder {
    pub fn new(max_line: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            scanned: 0,
            max_line,
        }
    }

    /// Adds a chunk; returns the complete lines it finished (each with its `\n`).
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Bytes>, AgentError> {
        self.buf.extend_from_slice(chunk);
        let mut lines = Vec::new();
        while let Some(pos) = self.buf[self.scanned..]
            .iter()
            .position(|b| *b == b'\n')
            .map(|p| self.scanned + p)
        {
            self.scanned = 0;
            if pos > self.max_line {
                return Err(AgentError::TooLarge {
                    limit: self.max_line,
                });
            }
            lines.push(self.buf.split_to(pos + 1).freeze());
        }
        self.scanned = self.buf.len();
        if self.buf.len() > self.max_line {
            return Err(AgentError::TooLarge {
                limit: self.max_line,
            });
        }
        Ok(lines)
    }

    /// At end of stream: a partial last line is an error (the agent always ends lines).
    pub fn finish(&self) -> Result<(), AgentError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(AgentError::Malformed("stream ended inside a line".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_across_chunks_are_joined() {
        let mut d = NdjsonDecoder::new(100);
        assert!(d.push(b"{\"a\":").unwrap().is_empty());
        let lines = d.push(b"1}\n{\"b\":2}\n").unwrap();
        assert_eq!(
            lines,
            vec![
                Bytes::from_static(b"{\"a\":1}\n"),
                Bytes::from_static(b"{\"b\":2}\n")
            ]
        );
    }

    #[test]
    fn lines_fed_one_byte_at_a_time_are_split() {
        let mut d = NdjsonDecoder::new(100);
        let mut lines = Vec::new();

        for b in b"{\"a\":1}\n{}\n{\"b\"" {
            lines.extend(d.push(&[*b]).unwrap());
        }

        assert_eq!(
            lines,
            vec![
                Bytes::from_static(b"{\"a\":1}\n"),
                Bytes::from_static(b"{}\n")
            ]
        );
        assert_eq!(d.scanned, 4);
    }

    #[test]
    fn overlong_line_is_rejected() {
        let mut d = NdjsonDecoder::new(4);
        assert!(matches!(
            d.push(b"123456"),
            Err(AgentError::TooLarge { limit: 4 })
        ));
    }

    #[test]
    fn partial_line_at_end_is_malformed() {
        let mut d = NdjsonDecoder::new(100);
        d.push(b"{").unwrap();
        assert!(d.finish().is_err());
    }
}
