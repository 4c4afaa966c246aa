//! `docs/ARCHITECTURE.md` stays true to the code: every variant of the wire enums
//! (`ToCoordinator`, the signed `SessionMessage` inside it, and `ToContributor`) is named in its
//! table "Where each message is handled" beside a file that exists and holds the function the
//! table names; and the table names no variant that does not exist.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const ENUMS: [&str; 3] = ["ToCoordinator", "SessionMessage", "ToContributor"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the protocol crate sits in the repository")
        .to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The variants of `pub enum NAME` in Rust source: the identifiers that open a line at the
/// enum's first level of indentation.
fn variants(src: &str, name: &str) -> Vec<String> {
    let open = format!("pub enum {name} {{");
    let start = src
        .find(&open)
        .unwrap_or_else(|| panic!("no `{open}` in protocol/src/messages.rs"));
    let body = &src[start + open.len()..];
    let end = body
        .find("\n}")
        .expect("the enum closes at the start of a line");
    body[..end]
        .lines()
        .filter(|l| l.starts_with("    ") && !l.starts_with("     "))
        .map(str::trim)
        .filter(|l| l.starts_with(|c: char| c.is_ascii_uppercase()))
        .map(|l| {
            l.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

/// The rows of the table under `## Where each message is handled`: (message, file, function).
fn table(doc: &str) -> Vec<(String, String, String)> {
    let heading = "## Where each message is handled";
    let start = doc
        .find(heading)
        .unwrap_or_else(|| panic!("docs/ARCHITECTURE.md has no `{heading}` section"));
    let section = &doc[start + heading.len()..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<String> = l
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().trim_matches('`').to_string())
                .collect();
            assert_eq!(cells.len(), 3, "a row of three cells: {l}");
            (cells[0].clone(), cells[1].clone(), cells[2].clone())
        })
        .collect()
}

#[test]
fn every_message_is_named_beside_the_file_and_function_that_handle_it() {
    let root = repo();
    let src = read(&root.join("protocol/src/messages.rs"));
    let doc = read(&root.join("docs/ARCHITECTURE.md"));
    let rows = table(&doc);
    assert!(!rows.is_empty(), "the message table has rows");

    let mut wanted = BTreeSet::new();
    for e in ENUMS {
        let vs = variants(&src, e);
        assert!(vs.len() >= 2, "{e} has variants: {vs:?}");
        wanted.extend(vs.into_iter().map(|v| format!("{e}::{v}")));
    }
    let mut named: BTreeMap<String, usize> = BTreeMap::new();
    for (message, file, function) in &rows {
        assert!(
            wanted.contains(message),
            "the table names {message}, which protocol/src/messages.rs does not define"
        );
        *named.entry(message.clone()).or_default() += 1;
        let path = root.join(file);
        assert!(path.is_file(), "{message}: {file} does not exist");
        let code = read(&path);
        assert!(
            code.contains(&format!("fn {function}(")) || code.contains(&format!("fn {function}<")),
            "{message}: {file} has no fn {function}"
        );
    }
    let missing: Vec<&String> = wanted.iter().filter(|m| !named.contains_key(*m)).collect();
    assert!(
        missing.is_empty(),
        "docs/ARCHITECTURE.md does not say where these are handled: {missing:?}"
    );
    println!("{} messages, {} rows in the map", wanted.len(), rows.len());
}

#[test]
fn the_parsers_read_what_they_claim() {
    let src = "pub enum E {\n    /// doc\n    A {\n        x: u8,\n    },\n    B(u8),\n    C,\n}\n";
    assert_eq!(variants(src, "E"), ["A", "B", "C"]);
    let doc = "## Where each message is handled\n\n| message | file | function |\n| --- | --- | --- |\n| `E::A` | `a.rs` | `f` |\n\n## Next\n| `E::B` | `b.rs` | `g` |\n";
    assert_eq!(
        table(doc),
        [("E::A".to_string(), "a.rs".to_string(), "f".to_string())]
    );
}
