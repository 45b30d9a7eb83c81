//! Cheap token-class labels from a token's text, for purity and probe checks.

/// A class of tokens read off the token's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenClass {
    /// Starts a word: leading whitespace, then a letter or digit (` the`, ` 42`).
    WordStart,
    /// Continues a word: starts with a letter or digit (`ing`, `ly`).
    WordPiece,
    /// Contains an ASCII digit.
    Digit,
    /// Only punctuation (after any whitespace), at least one mark (`,`, `."`, ` (`).
    Punctuation,
    /// Its first non-whitespace character is an uppercase letter (` The`, `US`).
    Capitalised,
}

impl TokenClass {
    /// Every class, in a fixed order.
    pub const ALL: [TokenClass; 5] = [
        TokenClass::WordStart,
        TokenClass::WordPiece,
        TokenClass::Digit,
        TokenClass::Punctuation,
        TokenClass::Capitalised,
    ];

    /// A short name (`word_start`, `word_piece`, `digit`, `punctuation`, `capitalised`).
    pub fn name(self) -> &'static str {
        match self {
            TokenClass::WordStart => "word_start",
            TokenClass::WordPiece => "word_piece",
            TokenClass::Digit => "digit",
            TokenClass::Punctuation => "punctuation",
            TokenClass::Capitalised => "capitalised",
        }
    }

    /// Whether the token text `text` is in this class.
    pub fn holds(self, text: &str) -> bool {
        let body = text.trim_start();
        let first = body.chars().next();
        match self {
            TokenClass::WordStart => {
                body.len() < text.len() && first.is_some_and(char::is_alphanumeric)
            }
            TokenClass::WordPiece => text.chars().next().is_some_and(char::is_alphanumeric),
            TokenClass::Digit => text.chars().any(|c| c.is_ascii_digit()),
            TokenClass::Punctuation => {
                !body.is_empty() && body.chars().all(|c| c.is_ascii_punctuation())
            }
            TokenClass::Capitalised => first.is_some_and(char::is_uppercase),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TokenClass::*;
    use super::*;

    #[test]
    fn classes_read_the_token_text() {
        let cases: [(&str, &[TokenClass]); 9] = [
            (" the", &[WordStart]),
            ("ing", &[WordPiece]),
            (" 42", &[WordStart, Digit]),
            ("7", &[WordPiece, Digit]),
            (",", &[Punctuation]),
            (" (\"", &[Punctuation]),
            (" The", &[WordStart, Capitalised]),
            ("US", &[WordPiece, Capitalised]),
            ("\n", &[]),
        ];
        for (text, want) in cases {
            let got: Vec<TokenClass> = TokenClass::ALL
                .into_iter()
                .filter(|c| c.holds(text))
                .collect();
            assert_eq!(got, want, "{text:?}");
        }
        assert_eq!(Digit.name(), "digit");
    }
}
