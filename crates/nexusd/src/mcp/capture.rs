//! The output of a command run for an MCP client: small output is returned whole; big output is
//! cut to its start and its end with a marker between, in a character budget the daemon's
//! `mcp_output_max_chars` sets, while the whole of it goes to a file in the VM (see `guest.rs`).
//!
//! Memory is bounded whatever the command prints: the first and the last `window` bytes of each
//! stream are kept, nothing else. `window` is four bytes per character of the budget, so a stream
//! that outgrows it holds more characters than the budget (a UTF-8 character is at most four
//! bytes, and an invalid byte becomes one replacement character) and must be cut anyway.

use std::collections::VecDeque;

/// What was kept of one output stream.
#[derive(Debug)]
pub struct Capture {
    window: usize,
    head: Vec<u8>,
    tail: VecDeque<u8>,
    total: u64,
}

impl Capture {
    /// Keeps what is needed to show at most `budget` characters.
    pub fn new(budget: usize) -> Self {
        let window = budget.saturating_mul(4).max(4);
        Self {
            window,
            head: Vec::new(),
            tail: VecDeque::new(),
            total: 0,
        }
    }

    pub fn push(&mut self, mut chunk: &[u8]) {
        self.total += chunk.len() as u64;
        let room = self.window - self.head.len();
        if room > 0 {
            let take = room.min(chunk.len());
            self.head.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
        }
        if chunk.len() >= self.window {
            chunk = &chunk[chunk.len() - self.window..];
            self.tail.clear();
        }
        let overflow = (self.tail.len() + chunk.len()).saturating_sub(self.window);
        self.tail.drain(..overflow);
        self.tail.extend(chunk);
    }

    /// Bytes seen so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Whether the stream no longer fits in memory: everything past the first window is only seen
    /// in passing (and must be saved elsewhere as it comes).
    pub fn overflowed(&self) -> bool {
        self.total > self.window as u64
    }

    /// The first window of the stream (all of it unless [`overflowed`](Self::overflowed)).
    pub fn head(&self) -> &[u8] {
        &self.head
    }

    /// How many characters the whole stream shows as, or `None` when more than fit in memory
    /// (which is more than the budget).
    pub fn chars(&self) -> Option<usize> {
        (!self.overflowed()).then(|| String::from_utf8_lossy(&self.head).chars().count())
    }

    /// The stream as text of at most `budget` characters (plus the marker): whole when it fits,
    /// else its first and last halves of the budget around `marker(omitted_bytes)`.
    pub fn render(&self, budget: usize, marker: impl FnOnce(u64) -> String) -> (String, bool) {
        let head_text = String::from_utf8_lossy(&self.head);
        if !self.overflowed() && head_text.chars().count() <= budget {
            return (head_text.into_owned(), false);
        }
        let half = budget / 2;
        let start: String = head_text.chars().take(half).collect();
        let end_source = if self.overflowed() {
            let tail: Vec<u8> = self.tail.iter().copied().collect();
            String::from_utf8_lossy(skip_partial_char(&tail)).into_owned()
        } else {
            head_text.into_owned()
        };
        let end_chars = end_source.chars().count();
        let end: String = end_source
            .chars()
            .skip(end_chars.saturating_sub(budget - half))
            .collect();
        let shown = start.len() + end.len();
        let omitted = self.total.saturating_sub(shown as u64);
        (format!("{start}{}{end}", marker(omitted)), true)
    }
}

/// `bytes` without the continuation bytes a cut left at its start (at most three).
fn skip_partial_char(bytes: &[u8]) -> &[u8] {
    let skip = bytes
        .iter()
        .take(3)
        .take_while(|b| (0x80..0xC0).contains(*b))
        .count();
    &bytes[skip..]
}

/// Shares `budget` characters between stdout and stderr of the given sizes (`None`: more than the
/// budget): each gets what it needs when both fit, and otherwise at least half of the budget or
/// what it needs if that is less, the rest going to the other.
pub fn split_budget(budget: usize, out: Option<usize>, err: Option<usize>) -> (usize, usize) {
    let (out_need, err_need) = (out.unwrap_or(usize::MAX), err.unwrap_or(usize::MAX));
    if out_need.saturating_add(err_need) <= budget {
        return (out_need, err_need);
    }
    let half = budget / 2;
    let err_share = err_need.min(half.max(budget.saturating_sub(out_need)));
    (budget - err_share, err_share)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(omitted: u64) -> String {
        format!("[{omitted} cut]")
    }

    #[test]
    fn small_output_is_returned_whole() {
        let mut c = Capture::new(100);
        c.push(b"hello\n");
        assert_eq!(c.render(100, marker), ("hello\n".to_string(), false));
    }

    #[test]
    fn output_over_the_budget_keeps_its_start_and_end() {
        let mut c = Capture::new(10);
        c.push(b"0123456789abcdefghij");
        let (text, cut) = c.render(10, marker);
        assert!(cut);
        assert_eq!(text, "01234[10 cut]fghij");
    }

    #[test]
    fn output_past_the_window_keeps_the_last_bytes_in_any_chunking() {
        let mut c = Capture::new(4);
        for chunk in [&b"0123456789"[..], b"abcdefghij", b"KLMNOPQRSTUVWXYZ"] {
            c.push(chunk);
        }
        let (text, cut) = c.render(4, marker);
        assert!(c.overflowed() && cut);
        assert_eq!(text, "01[32 cut]YZ");
        assert_eq!(c.total(), 36);
    }

    #[test]
    fn a_tail_starting_inside_a_character_drops_the_fragment() {
        let mut c = Capture::new(1);
        c.push(b"abcd");
        c.push("éé".as_bytes());
        c.push(b"z");
        let (text, _) = c.render(4, marker);
        assert_eq!(text, "ab[4 cut]éz");
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut c = Capture::new(10);
        c.push(&[b'a', 0xff, b'b']);
        assert_eq!(c.render(10, marker).0, "a\u{FFFD}b");
    }

    #[test]
    fn memory_stays_bounded_by_the_window() {
        let mut c = Capture::new(8);
        for _ in 0..1000 {
            c.push(&[b'x'; 1000]);
        }
        assert_eq!((c.head().len(), c.tail.len()), (32, 32));
    }

    #[test]
    fn budgets_that_fit_are_whole() {
        assert_eq!(split_budget(100, Some(30), Some(40)), (30, 40));
    }

    #[test]
    fn a_long_stdout_leaves_stderr_what_it_needs() {
        assert_eq!(split_budget(100, None, Some(10)), (90, 10));
    }

    #[test]
    fn two_long_streams_share_the_budget() {
        assert_eq!(split_budget(100, None, None), (50, 50));
    }

    #[test]
    fn a_short_stdout_gives_its_unused_share_to_stderr() {
        assert_eq!(split_budget(100, Some(20), None), (20, 80));
    }
}
