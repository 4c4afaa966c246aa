//! Embeds the contributor page in the `tessera` binary when it was built (`scripts/build-web`
//! writes it to `target/web-dist`; `TESSERA_WEB_DIST` names another folder): the binary then
//! serves it from any directory. Without it, `page.rs` says there is none, and the coordinator's
//! `/` explains how to build it.

use std::path::PathBuf;

/// The page's files, as `coordinator/src/web.rs` serves them.
const FILES: [&str; 6] = [
    "index.html",
    "app.js",
    "worker.js",
    "tessera-client-wasm.js",
    "tessera-client-wasm_bg.wasm",
    "style.css",
];

fn main() {
    println!("cargo:rerun-if-env-changed=TESSERA_WEB_DIST");
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let dist = std::env::var_os("TESSERA_WEB_DIST")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../target/web-dist"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it")).join("page.rs");
    // Each file is watched: a page built (or rebuilt) later embeds at the next build.
    for f in FILES {
        println!("cargo:rerun-if-changed={}", dist.join(f).display());
    }
    let code = if FILES.iter().all(|f| dist.join(f).is_file()) {
        let entries: Vec<String> = FILES
            .iter()
            .map(|f| {
                let path = dist.join(f).canonicalize().expect("a file of the page");
                format!(
                    "({f:?}, include_bytes!({:?}).as_slice())",
                    path.display().to_string()
                )
            })
            .collect();
        format!(
            "/// The contributor page's files, embedded at build time.\npub const EMBEDDED: Option<&[(&str, &[u8])]> = Some(&[{}]);\n",
            entries.join(", ")
        )
    } else {
        "/// The contributor page was not built when this binary was.\npub const EMBEDDED: Option<&[(&str, &[u8])]> = None;\n".to_string()
    };
    std::fs::write(&out, code).expect("write page.rs");
}
