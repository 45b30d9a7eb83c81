//! Generated tokens to printable text, one token at a time: a token's text is released only
//! once its characters are complete (a byte-level token can end inside a multi-byte UTF-8
//! character, which decodes as U+FFFD until the next token completes it), and text that might
//! be the start of a stop string is held back until it is known not to be one.

use metarep_model::Tokenizer;

/// Incremental decoder with stop strings.
pub struct TextStream<'a> {
    tok: &'a Tokenizer,
    ids: Vec<u32>,
    /// Tokens before `prefix` are no longer decoded; `prefix..read` is decoded again as
    /// context (decoders may treat a sequence's first token differently).
    prefix: usize,
    /// Tokens before `read` have had their text released.
    read: usize,
    stops: Vec<String>,
    /// Released by the decoder, not yet printed (could start a stop string).
    held: String,
}

/// What one token adds.
#[derive(Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Text safe to print now.
    pub text: String,
    /// A stop string has appeared (`text` ends right before it).
    pub stopped: bool,
}

impl<'a> TextStream<'a> {
    /// A stream decoding with `tok` that ends at the first of `stops` (empty strings ignored).
    pub fn new(tok: &'a Tokenizer, stops: &[String]) -> Self {
        TextStream {
            tok,
            ids: Vec::new(),
            prefix: 0,
            read: 0,
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
        }
    }

    /// Adds token `id`.
    pub fn push(&mut self, id: u32) -> metarep_model::Result<Chunk> {
        self.ids.push(id);
        let before = self.tok.decode(&self.ids[self.prefix..self.read], false)?;
        let now = self.tok.decode(&self.ids[self.prefix..], false)?;
        match now.strip_prefix(before.as_str()) {
            Some(new) if !new.is_empty() && !new.ends_with('\u{FFFD}') => {
                self.held.push_str(new);
                self.prefix = self.read;
                self.read = self.ids.len();
                Ok(self.release())
            }
            _ => Ok(Chunk {
                text: String::new(),
                stopped: false,
            }),
        }
    }

    /// Everything not printed yet (an incomplete last character decodes as U+FFFD), cut at a
    /// stop string if one appears.
    pub fn finish(&mut self) -> metarep_model::Result<Chunk> {
        let before = self.tok.decode(&self.ids[self.prefix..self.read], false)?;
        let now = self.tok.decode(&self.ids[self.prefix..], false)?;
        match now.strip_prefix(before.as_str()) {
            Some(new) => self.held.push_str(new),
            None => self
                .held
                .push_str(&self.tok.decode(&self.ids[self.read..], false)?),
        }
        self.read = self.ids.len();
        let mut chunk = self.release();
        if !chunk.stopped {
            chunk.text.push_str(&std::mem::take(&mut self.held));
        }
        Ok(chunk)
    }

    /// Takes the printable part of `held`: up to the first stop string, or all but the longest
    /// tail that begins some stop string.
    fn release(&mut self) -> Chunk {
        let first_stop = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = first_stop {
            let text = self.held[..at].to_string();
            self.held.clear();
            return Chunk {
                text,
                stopped: true,
            };
        }
        let keep = self.held.len() - self.open_tail();
        let text = self.held[..keep].to_string();
        self.held.drain(..keep);
        Chunk {
            text,
            stopped: false,
        }
    }

    /// Length in bytes of the longest tail of `held` that is a proper prefix of a stop string.
    fn open_tail(&self) -> usize {
        self.held
            .char_indices()
            .map(|(i, _)| &self.held[i..])
            .filter(|tail| self.stops.iter().any(|s| s.starts_with(tail)))
            .map(str::len)
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn tokenizer() -> Tokenizer {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/parity/tokenizer/tokenizer.json");
        Tokenizer::from_file(&path).unwrap()
    }

    /// Pushes every id of `text`; returns the chunks' texts and whether one stopped.
    fn stream(text: &str, stops: &[&str]) -> (Vec<String>, bool) {
        let tok = tokenizer();
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut s = TextStream::new(&tok, &stops);
        let mut out = Vec::new();
        for id in tok.encode(text, false).unwrap().ids {
            let c = s.push(id).unwrap();
            out.push(c.text);
            if c.stopped {
                return (out, true);
            }
        }
        let c = s.finish().unwrap();
        out.push(c.text);
        (out, c.stopped)
    }

    #[test]
    fn multi_byte_characters_are_never_split() {
        let text = "naïve café, 東京, Привет 🙂 ok";
        let tok = tokenizer();
        let ids = tok.encode(text, false).unwrap().ids;
        // The 300-token vocabulary spells these characters in byte pieces.
        assert!(ids.len() > text.chars().count());
        let (chunks, stopped) = stream(text, &[]);
        assert!(!stopped);
        assert!(chunks.iter().all(|c| !c.contains('\u{FFFD}')), "{chunks:?}");
        assert!(
            chunks.iter().filter(|c| c.is_empty()).count() > 1,
            "{chunks:?}"
        );
        assert_eq!(chunks.concat(), tok.decode(&ids, false).unwrap());
    }

    #[test]
    fn output_ends_before_the_first_stop_string_and_holds_back_its_prefixes() {
        let (chunks, stopped) = stream("one two. three. four", &[". t", "four"]);
        assert!(stopped);
        assert_eq!(chunks.concat(), "one two");
        // A stop string's start that never completes is printed in the end.
        let (chunks, stopped) = stream("one two. done", &[". t"]);
        assert!(!stopped);
        assert_eq!(chunks.concat(), "one two. done");
        let (chunks, _) = stream("abc", &[""]);
        assert_eq!(chunks.concat(), "abc");
    }
}
