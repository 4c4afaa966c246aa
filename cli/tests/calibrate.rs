//! `tessera calibrate` end to end: this machine's adapter reruns the calibration work an NVIDIA
//! H100 ran (`tests/fixtures/calibration-h100-small-byte.bin`), every output drifts less than
//! the default check tolerances, and comparing a file with itself shows no drift; SwiftShader
//! (Chromium's CPU Vulkan driver, chosen with `--adapter`) stays within them too, against the
//! H100 and against this machine's adapter.

use std::process::Command;

use tessera_train::drift::{ROUND_TOLERANCE, UNIT_TOLERANCE};

const H100: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/calibration-h100-small-byte.bin"
);

/// Chromium's SwiftShader Vulkan driver as Debian's `chromium` package installs it.
const SWIFTSHADER_ICD: &str = "/usr/lib/chromium/vk_swiftshader_icd.json";

fn tessera(args: &[&str]) -> String {
    tessera_with(args, &[])
}

fn tessera_with(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run tessera");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    println!("{stdout}");
    assert!(
        out.status.success(),
        "calibrate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `(output, rel L2)` per row of the report.
fn drifts(report: &str) -> Vec<(String, f64)> {
    report
        .lines()
        .filter(|l| l.starts_with("pipeline/") || l.starts_with("replica/"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let name = l[..l.find("  ").expect("columns")].to_string();
            (name, f[f.len() - 2].parse().expect("a number"))
        })
        .collect()
}

/// Every output of `report` compared, each within the default tolerance of its kind; the
/// drifts.
fn within_defaults(report: &str, what: &str) -> Vec<(String, f64)> {
    let d = drifts(report);
    assert_eq!(d.len(), 13, "{what}: every output is compared");
    for (name, e) in &d {
        let tol = if name.starts_with("replica/") {
            ROUND_TOLERANCE
        } else {
            UNIT_TOLERANCE
        };
        assert!(
            *e <= tol,
            "{what}: {name} drifts {e:e}, over the default {tol:e}"
        );
    }
    d
}

#[test]
fn this_adapter_stays_within_the_default_tolerances_of_an_h100() {
    let dir = std::env::temp_dir().join(format!("tessera-calibrate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mine = dir.join("here.bin");
    let report = tessera(&[
        "calibrate",
        "--against",
        H100,
        "--out",
        mine.to_str().unwrap(),
    ]);
    assert!(report.contains("B: NVIDIA H100 80GB HBM3 (Vulkan"));
    let d = within_defaults(&report, "this adapter against the H100");
    // Another adapter does not agree bit for bit: a tolerance is needed.
    assert!(d.iter().any(|(_, e)| *e > 0.0));
    let same = tessera(&["calibrate", "--compare", mine.to_str().unwrap(), H100]);
    assert_eq!(
        drifts(&same),
        d,
        "--compare reads back what --against printed"
    );
    let zero = tessera(&["calibrate", "--compare", H100, H100]);
    assert!(drifts(&zero).iter().all(|(_, e)| *e == 0.0));
    std::fs::remove_dir_all(&dir).ok();
}

/// SwiftShader (a browser tab's adapter without a GPU), chosen with `--adapter` beside this
/// machine's own, drifts from the H100 and from this machine's adapter within the defaults.
#[test]
fn swiftshader_stays_within_the_default_tolerances_of_an_h100_and_of_this_adapter() {
    assert!(
        std::path::Path::new(SWIFTSHADER_ICD).exists(),
        "{SWIFTSHADER_ICD} is missing: install Debian's chromium package (scripts/test-all does)"
    );
    let env = [("VK_ADD_DRIVER_FILES", SWIFTSHADER_ICD)];
    let listed = tessera_with(&["adapters"], &env);
    assert!(
        listed.lines().any(|l| l.contains("SwiftShader")),
        "{listed}"
    );
    let dir = std::env::temp_dir().join(format!("tessera-calibrate-ss-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ss = dir.join("swiftshader.bin");
    let report = tessera_with(
        &[
            "calibrate",
            "--adapter",
            "swiftshader",
            "--against",
            H100,
            "--out",
            ss.to_str().unwrap(),
        ],
        &env,
    );
    assert!(report.contains("SwiftShader"), "{report}");
    let here = dir.join("here.bin");
    let first = listed
        .lines()
        .find(|l| !l.contains("SwiftShader"))
        .expect("an adapter beside SwiftShader");
    let against_here = tessera_with(
        &[
            "calibrate",
            "--adapter",
            first,
            "--against",
            ss.to_str().unwrap(),
            "--out",
            here.to_str().unwrap(),
        ],
        &env,
    );
    within_defaults(&report, "SwiftShader against the H100");
    within_defaults(&against_here, &format!("{first} against SwiftShader"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn an_adapter_no_name_matches_is_refused_with_the_list() {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["calibrate", "--adapter", "no such adapter 7f3a"])
        .output()
        .expect("run tessera");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no adapter's name contains"), "{stderr}");
}

#[test]
fn a_file_that_is_not_a_calibration_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args([
            "calibrate",
            "--compare",
            H100,
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/calibrate.rs"),
        ])
        .output()
        .expect("run tessera");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("is not a calibration file"), "{stderr}");
}
