//! `qkv bleu --paired-bs / --by-length / --sentence` on the systems of qkv/tests/fixtures/bleu_tools.json:
//! the table cells are sacreBLEU 2.6's, and bad input (misaligned files, an unknown smoothing) is an error
//! that names what is wrong.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("qkv-bleu-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn write(&self, name: &str, lines: &[String]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fixture() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../qkv/tests/fixtures/bleu_tools.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn lines(value: &Value) -> Vec<String> {
    value.as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect()
}

fn bleu(args: &[&Path], flags: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_qkv"));
    command.arg("bleu").args(args).args(flags);
    command.output().unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// The fixture's systems written to files named as in sacreBLEU's run, with the reference file.
fn files(scratch: &Scratch) -> (PathBuf, Vec<PathBuf>) {
    let fixture = fixture();
    let reference = scratch.write("ref.txt", &lines(&fixture["references"]));
    let names = ["baseline.txt", "system_a.txt", "system_b.txt"];
    let systems = names.iter().map(|name| scratch.write(name, &lines(&fixture["systems"][name]))).collect();
    (reference, systems)
}

#[test]
fn paired_bs_prints_sacrebleus_cells() {
    let scratch = Scratch::new("paired");
    let (reference, systems) = files(&scratch);
    let run = &fixture()["paired_bs"][0];
    assert_eq!((run["samples"].as_u64(), run["seed"].as_u64()), (Some(1000), Some(12345)), "the defaults");
    let mut args: Vec<&Path> = vec![Path::new("--hyp")];
    args.extend(systems.iter().map(PathBuf::as_path));
    args.extend([Path::new("--ref"), reference.as_path()]);
    let table = stdout(&bleu(&args, &["--paired-bs"]));
    let rows: Vec<&str> = table.lines().filter(|l| l.contains(" ± ") && !l.starts_with("System")).collect();
    assert_eq!(rows.len(), 3, "{table}");
    for (row, cell) in rows.iter().zip(lines(&run["printed"])) {
        assert!(row.trim_end().ends_with(&cell), "{row:?} should end with sacreBLEU's {cell:?}\n{table}");
    }
    assert!(rows[0].starts_with("Baseline: "), "{table}");
    // sacreBLEU's command line prints one decimal (its --width 1): `42.1 (42.1 ± 3.1)`, `(p = 0.0989)`.
    let table = stdout(&bleu(&args, &["--paired-bs", "--width", "1"]));
    assert!(table.contains("baseline.txt  42.1 (42.1 ± 3.1)\n"), "{table}");
    assert!(table.contains("44.6 (44.6 ± 3.2) (p = 0.0989)\n"), "{table}");

    let json: Value = serde_json::from_str(&stdout(&bleu(&args, &["--paired-bs", "--json"]))).unwrap();
    let p: Vec<Option<f64>> = json["systems"].as_array().unwrap().iter().map(|s| s["p_value"].as_f64()).collect();
    let theirs: Vec<Option<f64>> =
        run["sacrebleu"].as_array().unwrap().iter().map(|s| s["BLEU"]["p_value"].as_f64()).collect();
    assert_eq!(p.len(), 3);
    for (ours, theirs) in p.iter().zip(&theirs) {
        assert_eq!(ours.map(|p| (p * 1001.0).round()), theirs.map(|p| (p * 1001.0).round()));
    }

    // The second run of the fixture: another seed and sample count, another baseline.
    let run = &fixture()["paired_bs"][1];
    let copy = scratch.write("baseline_copy.txt", &lines(&fixture()["systems"]["baseline.txt"]));
    let args: Vec<&Path> = vec![Path::new("--hyp"), &systems[2], &copy, &systems[1], Path::new("--ref"), &reference];
    let table = stdout(&bleu(&args, &["--paired-bs", "--paired-bs-n", "300", "--seed", "2024"]));
    let rows: Vec<&str> = table.lines().filter(|l| l.contains(" ± ") && !l.starts_with("System")).collect();
    for (row, cell) in rows.iter().zip(lines(&run["printed"])) {
        assert!(row.trim_end().ends_with(&cell), "{row:?} should end with sacreBLEU's {cell:?}\n{table}");
    }
}

#[test]
fn by_length_counts_and_scores_each_bucket() {
    let scratch = Scratch::new("length");
    let (reference, systems) = files(&scratch);
    let expected = &fixture()["by_length"][0];
    let args: Vec<&Path> = vec![Path::new("--hyp"), &systems[0], Path::new("--ref"), &reference];
    let table = stdout(&bleu(&args, &["--by-length"]));
    for bucket in expected["buckets"].as_array().unwrap() {
        let label = match bucket["max"].as_u64() {
            Some(max) => format!("{}-{max}", bucket["min"]),
            None => format!("{}+", bucket["min"]),
        };
        let row = table.lines().find(|l| l.split_whitespace().next() == Some(&label)).expect(&label);
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[1], bucket["sentences"].to_string(), "{row}");
        assert_eq!(cells[2], format!("{:.2}", bucket["score"].as_f64().unwrap()), "{row}");
    }
    let table = stdout(&bleu(&args, &["--by-length", "--buckets", "5,15"]));
    assert!(table.contains("16+") && !table.contains("31+"), "{table}");
}

#[test]
fn sentence_prints_one_line_per_hypothesis() {
    let scratch = Scratch::new("sentence");
    let (reference, systems) = files(&scratch);
    let args: Vec<&Path> = vec![Path::new("--hyp"), &systems[0], Path::new("--ref"), &reference];
    let out = stdout(&bleu(&args, &["--sentence", "--smooth-method", "floor", "--smooth-value", "0.2"]));
    assert_eq!(out.lines().count(), 200);
    assert!(out.lines().all(|l| l.starts_with("BLEU = ")), "{out}");
    let two: Vec<&Path> = vec![Path::new("--hyp"), &systems[0], &systems[1], Path::new("--ref"), &reference];
    let err = bleu(&two, &["--sentence"]);
    assert!(!err.status.success() && String::from_utf8_lossy(&err.stderr).contains("one system"));
}

#[test]
fn misaligned_files_and_unknown_smoothing_are_clear_errors() {
    let scratch = Scratch::new("errors");
    let (reference, systems) = files(&scratch);
    let short = scratch.write("short.txt", &lines(&fixture()["references"])[..150]);
    let args: Vec<&Path> = vec![Path::new("--hyp"), &systems[0], Path::new("--ref"), &short];
    let err = String::from_utf8(bleu(&args, &[]).stderr).unwrap();
    for part in [systems[0].display().to_string(), short.display().to_string(), "200".into(), "150".into()] {
        assert!(err.contains(&part), "{part:?} missing from: {err}");
    }
    let args: Vec<&Path> = vec![Path::new("--hyp"), &systems[0], &short, Path::new("--ref"), &reference];
    let err = String::from_utf8(bleu(&args, &["--paired-bs"]).stderr).unwrap();
    let expected = format!("{} has 200 lines but {} has 150", systems[0].display(), short.display());
    assert!(err.contains(&expected), "{err}");

    let args: Vec<&Path> = vec![Path::new("--hyp"), &systems[0], Path::new("--ref"), &reference];
    let err = String::from_utf8(bleu(&args, &["--smooth-method", "laplace"]).stderr).unwrap();
    assert!(err.contains("laplace") && err.contains("none, floor, add-k, exp"), "{err}");
    let err = bleu(&args, &["--paired-bs"]);
    assert!(!err.status.success() && String::from_utf8_lossy(&err.stderr).contains("baseline"));
}

/// `qkv bleu --sentence ... | head -1`: the reader goes away after one line. The rest of the output must end
/// the process by SIGPIPE, as it ends `cat`, not by a panic in `println!`.
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    let scratch = Scratch::new("pipe");
    let sentences: Vec<String> = (0..20_000).map(|i| format!("a sentence number {i} to score")).collect();
    let path = scratch.write("text.txt", &sentences);
    let mut child = Command::new(env!("CARGO_BIN_EXE_qkv"))
        .args(["bleu", "--sentence", "--ref"])
        .arg(&path)
        .arg("--hyp")
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    // SIGPIPE is 13 on Linux and the BSDs.
    assert_eq!(output.status.signal(), Some(13), "{:?}: {stderr}", output.status);
}
