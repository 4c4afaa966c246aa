//! The built-in corpus: original prose shipped with the binary, so demos need no download.

/// The built-in corpus.
pub const BUILT_IN: &str = include_str!("../corpus/built-in.txt");
