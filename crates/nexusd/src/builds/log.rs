//! A build's log: bounded to [`MAX_BUILD_LOG_BYTES`]. The first quarter is kept as written and
//! the rest is a rolling tail, so both how a build began and how it ended (a failing step's
//! output) survive; what falls between is dropped and marked. Offsets count every byte ever
//! appended, so a follower reading from an offset never sees a byte twice.

use std::collections::VecDeque;

use nexus_lib::api::MAX_BUILD_LOG_BYTES;

#[derive(Debug, Default)]
pub struct BuildLog {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    /// Bytes ever appended.
    total: u64,
    tail_cap: usize,
}

impl BuildLog {
    pub fn new() -> Self {
        Self::with_cap(MAX_BUILD_LOG_BYTES)
    }

    fn with_cap(cap: usize) -> Self {
        Self {
            head: Vec::new(),
            tail: VecDeque::new(),
            total: 0,
            tail_cap: cap - cap / 4,
        }
    }

    pub fn append(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        let head_cap = self.head_cap();
        if self.head.len() < head_cap {
            let n = data.len().min(head_cap - self.head.len());
            self.head.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        if data.len() >= self.tail_cap {
            data = &data[data.len() - self.tail_cap..];
            self.tail.clear();
        }
        let over = (self.tail.len() + data.len()).saturating_sub(self.tail_cap);
        self.tail.drain(..over);
        self.tail.extend(data);
    }

    pub fn line(&mut self, text: &str) {
        self.append(text.as_bytes());
        self.append(b"\n");
    }

    fn head_cap(&self) -> usize {
        // The head is a quarter of the whole; the tail the rest.
        self.tail_cap / 3
    }

    /// Bytes dropped between head and tail.
    fn dropped(&self) -> u64 {
        self.total - self.head.len() as u64 - self.tail.len() as u64
    }

    /// Bytes ever appended (the offset after the newest byte).
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The whole kept log, with a marker where bytes were dropped.
    pub fn render(&self) -> Vec<u8> {
        let mut out = self.head.clone();
        if self.dropped() > 0 {
            out.extend_from_slice(
                format!("\n[... {} bytes of log dropped ...]\n", self.dropped()).as_bytes(),
            );
        }
        out.extend(self.tail.iter());
        out
    }

    /// What was appended from `offset` on (with a marker for any part no longer kept).
    pub fn read_from(&self, offset: u64) -> Vec<u8> {
        let head_len = self.head.len() as u64;
        let tail_start = self.total - self.tail.len() as u64;
        let mut out = Vec::new();
        let mut at = offset.min(self.total);
        if at < head_len {
            out.extend_from_slice(&self.head[at as usize..]);
            at = head_len;
        }
        if at < tail_start {
            out.extend_from_slice(
                format!("\n[... {} bytes of log dropped ...]\n", tail_start - at).as_bytes(),
            );
            at = tail_start;
        }
        let skip = (at - tail_start) as usize;
        out.extend(self.tail.iter().skip(skip));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_log_is_kept_whole_and_read_by_offset() {
        let mut log = BuildLog::new();
        log.line("one");
        log.line("two");
        assert_eq!(log.render(), b"one\ntwo\n");
        assert_eq!(log.read_from(4), b"two\n");
        assert_eq!(log.read_from(99), b"");
    }

    #[test]
    fn a_long_log_keeps_its_head_and_tail_and_marks_the_gap() {
        let mut log = BuildLog::with_cap(400);
        for i in 0..1000 {
            log.line(&format!("line {i:04}"));
        }
        let text = String::from_utf8(log.render()).unwrap();
        assert!(text.starts_with("line 0000\n"), "{text}");
        assert!(text.ends_with("line 0999\n"), "{text}");
        assert!(text.contains("bytes of log dropped"), "{text}");
        assert!(text.len() < 500, "{}", text.len());
        let recent = String::from_utf8(log.read_from(log.total() - 10)).unwrap();
        assert_eq!(recent, "line 0999\n");
        let gap = String::from_utf8(log.read_from(200)).unwrap();
        assert!(gap.starts_with("\n[... "), "{gap}");
    }

    #[test]
    fn one_huge_append_keeps_only_its_end() {
        let mut log = BuildLog::with_cap(400);
        let mut big = vec![b'a'; 10_000];
        big.extend_from_slice(b"END");
        log.append(&big);
        assert!(log.render().ends_with(b"END"));
        assert!(log.render().len() < 500);
    }
}
