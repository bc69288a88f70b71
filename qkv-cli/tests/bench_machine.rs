//! `qkv bench machine`: the report tools/bench/host.sh reads. Checks its shape and that every figure is a
//! positive, finite rate with best ≥ median; speed itself is the benchmarks' business, not a test's.

use std::process::Command;

fn qkv(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_qkv")).args(["--threads", "2", "bench", "machine"]).args(args).output().unwrap()
}

#[test]
fn reports_bandwidth_and_fma_peak_on_one_thread_and_all() {
    let run = qkv(&["--buffer-mib", "64", "--reps", "2"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(report["workload"], "machine");
    let rows = report["results"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["read bandwidth, 1 thread", "read bandwidth, 2 threads", "f32 FMA peak, 1 thread", "f32 FMA peak, 2 threads"]
    );
    for row in rows {
        let (median, best) = (row["median"].as_f64().unwrap(), row["best"].as_f64().unwrap());
        assert!(median.is_finite() && median > 0.0 && best >= median, "{row}");
        assert_eq!(row["higher_is_better"], true, "{row}");
    }
}

#[test]
fn a_buffer_that_fits_in_cache_is_refused() {
    let run = qkv(&["--buffer-mib", "8"]);
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("--buffer-mib must be at least 64"));
}
