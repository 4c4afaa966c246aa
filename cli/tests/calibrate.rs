//! `tessera calibrate` end to end: this machine's adapter reruns the calibration work an NVIDIA
//! H100 ran (`tests/fixtures/calibration-h100-small-byte.bin`), every output drifts less than
//! the default check tolerances, and comparing a file with itself shows no drift.

use std::process::Command;

use tessera_train::drift::{ROUND_TOLERANCE, UNIT_TOLERANCE};

const H100: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/calibration-h100-small-byte.bin"
);

fn tessera(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
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
    let d = drifts(&report);
    assert_eq!(d.len(), 13, "every output is compared");
    for (name, e) in &d {
        let tol = if name.starts_with("replica/") {
            ROUND_TOLERANCE
        } else {
            UNIT_TOLERANCE
        };
        assert!(*e <= tol, "{name}: drift {e:e} over the default {tol:e}");
    }
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
