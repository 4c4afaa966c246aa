//! The size limits of the house (docs/ARCHITECTURE.md, "Size limits"): no source file of the
//! coordinator or worker crates over 600 lines and no function over 120, so that each file
//! holds one part and each function one decision a reader can see whole.

use std::path::{Path, PathBuf};

const MAX_FILE_LINES: usize = 600;
const MAX_FN_LINES: usize = 120;

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("a source folder") {
        let p = e.expect("an entry").path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The name of the function a line opens, when it opens one with a body.
fn opens_fn(line: &str) -> Option<&str> {
    let mut rest = line.trim_start();
    for prefix in [
        "pub(crate) ",
        "pub(super) ",
        "pub ",
        "const ",
        "async ",
        "unsafe ",
    ] {
        rest = rest.strip_prefix(prefix).unwrap_or(rest);
    }
    if let Some(r) = rest.strip_prefix("pub(in ") {
        rest = r.split_once(") ")?.1;
        rest = rest.strip_prefix("async ").unwrap_or(rest);
    }
    let name = rest.strip_prefix("fn ")?;
    if line.trim_end().ends_with(';') {
        return None;
    }
    Some(name.split(['(', '<']).next().unwrap_or(name))
}

/// Every function of `text` longer than the limit, with its length: a function ends at the
/// first later line that is its own indentation and a closing brace (rustfmt's layout).
fn long_fns(text: &str) -> Vec<(String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut long = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(name) = opens_fn(line) else { continue };
        let indent = &line[..line.len() - line.trim_start().len()];
        let close = format!("{indent}}}");
        let Some(end) = lines[i + 1..].iter().position(|l| l.trim_end() == close) else {
            continue;
        };
        let n = end + 2;
        if n > MAX_FN_LINES {
            long.push((name.to_string(), n));
        }
    }
    long
}

#[test]
fn the_measure_finds_what_it_should() {
    let body = "    x();\n".repeat(MAX_FN_LINES);
    let text = format!("pub(in crate::core) async fn big(a: u8) {{\n{body}}}\nfn small() {{\n}}\n");
    assert_eq!(long_fns(&text), vec![("big".to_string(), MAX_FN_LINES + 2)]);
    assert_eq!(opens_fn("    fn declared(&self);"), None);
    assert_eq!(opens_fn("    pub(super) fn f<T>(t: T) {"), Some("f"));
}

#[test]
fn no_file_and_no_function_of_the_coordinator_or_worker_is_over_the_limits() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for krate in ["coordinator/src", "worker/src"] {
        sources(&root.join(krate), &mut files);
    }
    assert!(files.len() > 40, "the sources were found");
    let mut over = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("a source file");
        let name = f.strip_prefix(&root).unwrap_or(f).display().to_string();
        let n = text.lines().count();
        if n > MAX_FILE_LINES {
            over.push(format!("{name}: {n} lines (at most {MAX_FILE_LINES})"));
        }
        for (func, n) in long_fns(&text) {
            over.push(format!(
                "{name}: fn {func} is {n} lines (at most {MAX_FN_LINES})"
            ));
        }
    }
    assert!(over.is_empty(), "over the limits:\n{}", over.join("\n"));
}
