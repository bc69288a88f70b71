//! Turning generated tokens into text as they arrive: only whole characters are released (a byte-level token
//! may end inside a multi-byte character), and text that could be the start of a stop string is held back
//! until it is known not to be one, so a stop string never reaches the reader even when it spans tokens.

use crate::hub::tokenizer::PretrainedTokenizer;
use crate::Result;

/// The text of a growing sequence of generated tokens, released piece by piece.
pub struct TextStream<'a> {
    tokenizer: &'a PretrainedTokenizer,
    stops: Vec<String>,
    ids: Vec<u32>,
    /// The decoded text of `ids` (cut at a stop string once one is found).
    text: String,
    /// Bytes of `text` already released.
    released: usize,
    stopped: bool,
}

impl<'a> TextStream<'a> {
    /// A stream that ends at the first occurrence of any of `stops` (empty strings are ignored).
    pub fn new(tokenizer: &'a PretrainedTokenizer, stops: &[String]) -> Self {
        let stops = stops.iter().filter(|s| !s.is_empty()).cloned().collect();
        Self { tokenizer, stops, ids: Vec::new(), text: String::new(), released: 0, stopped: false }
    }

    /// Adds a token; returns the text that can be released now (possibly empty). After a stop string appears,
    /// [`stopped`](Self::stopped) is true and the text ends before it.
    pub fn push(&mut self, token: u32) -> Result<String> {
        if self.stopped {
            return Ok(String::new());
        }
        self.ids.push(token);
        self.text = self.tokenizer.decode(&self.ids)?;
        if let Some(cut) = self.first_stop() {
            self.text.truncate(cut);
            self.stopped = true;
            return Ok(self.release(cut));
        }
        let mut end = self.text.len() - self.held_back();
        // A multi-byte character split across tokens decodes as U+FFFD until its last byte arrives.
        while self.text[self.released..end].ends_with('\u{fffd}') {
            end -= '\u{fffd}'.len_utf8();
        }
        Ok(self.release(end))
    }

    /// The text not yet released, at the end of generation (a held-back prefix of a stop string that never
    /// completed belongs to the output).
    pub fn finish(&mut self) -> String {
        let end = self.text.len();
        self.release(end)
    }

    /// True once a stop string appeared.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// The whole text so far (without a stop string).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The token ids pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    fn release(&mut self, end: usize) -> String {
        let end = end.max(self.released);
        let piece = self.text[self.released..end].to_string();
        self.released = end;
        piece
    }

    /// Where the earliest stop string starts, searching only where a new one can be: from the longest stop's
    /// length before the released end.
    fn first_stop(&self) -> Option<usize> {
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let mut from = self.released.saturating_sub(longest);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        let tail = &self.text[from..];
        self.stops.iter().filter_map(|s| tail.find(s.as_str()).map(|i| from + i)).min()
    }

    /// Bytes at the end of the unreleased text that begin some stop string (and so may still become one).
    fn held_back(&self) -> usize {
        let unreleased = &self.text[self.released..];
        let mut held = 0;
        for stop in &self.stops {
            for (i, _) in stop.char_indices().skip(1) {
                if i > held && unreleased.ends_with(&stop[..i]) {
                    held = i;
                }
            }
        }
        held
    }
}
