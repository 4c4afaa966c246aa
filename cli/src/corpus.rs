//! The built-in corpus (original prose shipped with the binary, so demos need no download) and
//! the byte-level tokenizer: a text's UTF-8 bytes are its token ids.

/// The built-in corpus.
pub const BUILT_IN: &str = include_str!("../corpus/built-in.txt");

/// Byte-level tokens of a text.
pub fn bytes_to_tokens(text: &str) -> Vec<u32> {
    text.bytes().map(u32::from).collect()
}
