//! The table reader (qkv::text::table): the same rows as CSV, TSV, JSON lines and Parquet (written by pyarrow,
//! tools/fixtures/make_table_fixtures.py) read as the same examples, and every kind of bad cell, line and
//! column is an error naming the file, the row and the column.

use std::path::{Path, PathBuf};

use qkv::text::labeled::LabeledText;
use qkv::text::table::{read_labeled, read_texts, Columns};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tables").join(name)
}

/// A file in a fresh temporary folder of this test process.
fn write(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qkv-tables-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The rows of pairs.parquet (make_table_fixtures.py's PAIRS).
fn pairs() -> Vec<LabeledText> {
    let row =
        |a: &str, b: &str, label: &str| LabeledText { text: a.into(), text_b: Some(b.into()), label: label.into() };
    vec![
        row("The cat sat.", "A cat was sitting.", "1"),
        row("He said \"hi\", then left.", "He left silently.", "0"),
        row("Ünïcödé — 東京 🙂", "Tokyo", "1"),
    ]
}

const PAIRS_JSONL: &str = concat!(
    "{\"sentence1\": \"The cat sat.\", \"sentence2\": \"A cat was sitting.\", \"label\": 1, \"idx\": 0}\n",
    "{\"sentence1\": \"He said \\\"hi\\\", then left.\", \"sentence2\": \"He left silently.\", \"label\": 0, ",
    "\"idx\": 1}\n",
    "\n",
    "{\"idx\": 2, \"label\": 1, \"sentence2\": \"Tokyo\", \"sentence1\": \"Ünïcödé — 東京 🙂\"}\n",
);

const PAIRS_CSV: &str = "sentence1,sentence2,label,idx\nThe cat sat.,A cat was sitting.,1,0\n\
                         \"He said \"\"hi\"\", then left.\",He left silently.,0,1\nÜnïcödé — 東京 🙂,Tokyo,1,2\n";

/// One table, four formats, one reading: Parquet and JSON lines by their column names (the defaults find
/// sentence1/sentence2/label), CSV by position (the existing reader) and by name.
#[test]
fn csv_jsonl_and_parquet_read_as_the_same_examples() {
    let defaults = Columns::default();
    let parquet = read_labeled(&fixture("pairs.parquet"), &defaults, false).unwrap();
    assert_eq!(parquet, pairs());
    let jsonl = read_labeled(&write("pairs.jsonl", PAIRS_JSONL), &defaults, false).unwrap();
    assert_eq!(jsonl, pairs());
    let json = read_labeled(&write("pairs.json", PAIRS_JSONL), &defaults, false).unwrap();
    assert_eq!(json, pairs());
    // By position: text,text_b,label — the idx column is dropped first, as a GLUE file would not have it.
    let positional: String =
        PAIRS_CSV.lines().skip(1).map(|l| l.rsplit_once(',').unwrap().0.to_string() + "\n").collect();
    assert_eq!(read_labeled(&write("pairs.csv", &positional), &defaults, false).unwrap(), pairs());
    let named = Columns { text_column: Some("sentence1".into()), ..Columns::default() };
    assert_eq!(read_labeled(&write("named.csv", PAIRS_CSV), &named, false).unwrap(), pairs());
    let tsv = PAIRS_CSV.replace("\"He said \"\"hi\"\", then left.\"", "He said \"hi\"; then left.").replace(',', "\t");
    let mut want = pairs();
    want[1].text = "He said \"hi\"; then left.".into();
    assert_eq!(read_labeled(&write("named.tsv", &tsv), &named, false).unwrap(), want);
}

/// Columns chosen by flag, string labels, and the single-text reader `qkv embed` uses.
#[test]
fn chosen_columns_and_single_texts() {
    let swapped = Columns {
        text_column: Some("sentence2".into()),
        text_pair_column: Some("sentence1".into()),
        label_column: Some("idx".into()),
    };
    let rows = read_labeled(&fixture("pairs.parquet"), &swapped, false).unwrap();
    assert_eq!(
        (rows[2].text.as_str(), rows[2].text_b.as_deref(), rows[2].label.as_str()),
        ("Tokyo", Some("Ünïcödé — 東京 🙂"), "2")
    );
    let single = read_labeled(&fixture("single.parquet"), &Columns::default(), false).unwrap();
    let got: Vec<(&str, Option<&str>, &str)> =
        single.iter().map(|r| (r.text.as_str(), r.text_b.as_deref(), r.label.as_str())).collect();
    assert_eq!(got, [("good one", None, "yes"), ("bad one", None, "no")]);
    assert_eq!(read_texts(&fixture("single.parquet"), None).unwrap(), ["good one", "bad one"]);
    assert_eq!(read_texts(&fixture("pairs.parquet"), Some("sentence2")).unwrap()[2], "Tokyo");
    let jsonl = write("texts.jsonl", "{\"text\": \"one\"}\n{\"text\": \"two\", \"extra\": [1]}\n");
    assert_eq!(read_texts(&jsonl, None).unwrap(), ["one", "two"]);
}

fn error(path: &Path, columns: &Columns) -> String {
    read_labeled(path, columns, false).unwrap_err().to_string()
}

fn assert_mentions(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(message.contains(part), "{message:?} should mention {part:?}");
    }
}

/// Each bad JSON line is named by its line and, where it has one, its column.
#[test]
fn json_lines_errors_name_line_and_column() {
    let d = Columns::default();
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "invalid.jsonl",
            "{\"text\": \"a\", \"label\": 1}\n{\"text\": \"b\", \"label\": }\n",
            &["invalid.jsonl:2:", "invalid JSON"],
        ),
        (
            "array.jsonl",
            "[{\"text\": \"a\", \"label\": 1}]\n",
            &["array.jsonl:1:", "expected a JSON object, found a list"],
        ),
        (
            "float.jsonl",
            "{\"text\": \"a\", \"label\": 1}\n{\"text\": \"b\", \"label\": 0.5}\n",
            &["float.jsonl:2:", "column `label`", "string or an integer", "0.5"],
        ),
        (
            "null.jsonl",
            "{\"text\": null, \"label\": 1}\n",
            &["null.jsonl:1:", "column `text`", "expected a string, found null"],
        ),
        (
            "number.jsonl",
            "{\"text\": 7, \"label\": 1}\n",
            &["number.jsonl:1:", "column `text`", "expected a string, found 7"],
        ),
        (
            "empty_label.jsonl",
            "{\"text\": \"a\", \"label\": \" \"}\n",
            &["empty_label.jsonl:1:", "column `label`", "empty string"],
        ),
        (
            "missing.jsonl",
            "{\"text\": \"a\", \"label\": 1}\n\n{\"txt\": \"b\", \"label\": 0}\n",
            &["missing.jsonl:3:", "column `text`", "keys on this line: label, txt"],
        ),
        (
            "nolabel.jsonl",
            "{\"text\": \"a\", \"target\": 1}\n",
            &["nolabel.jsonl:", "no label column", "columns present: target, text", "--label-column"],
        ),
        ("latin1.jsonl", "{\"text\": \"a\", \"label\": 1}\n{\"text\": \"caf\u{e9}\", \"label\": 1}\n", &[]),
        ("blank.jsonl", "\n\n", &["blank.jsonl", "holds no labelled texts"]),
    ];
    for (name, text, parts) in cases {
        let path = write(name, text);
        if *name == "latin1.jsonl" {
            // The same line with é as the single Latin-1 byte 0xE9.
            let mut bytes = text.as_bytes().to_vec();
            let at = bytes.windows(2).position(|w| w == "é".as_bytes()).unwrap();
            bytes.splice(at..at + 2, [0xE9]);
            std::fs::write(&path, bytes).unwrap();
            assert_mentions(&error(&path, &d), &["latin1.jsonl:2:", "not UTF-8"]);
            continue;
        }
        assert_mentions(&error(&path, &d), parts);
    }
    let chosen = Columns { text_pair_column: Some("second".into()), ..Columns::default() };
    let message = error(&write("pair.jsonl", "{\"text\": \"a\", \"label\": 1}\n"), &chosen);
    assert_mentions(&message, &["no column `second` (given by --text-pair-column)", "columns present: label, text"]);
}

/// Parquet errors name the row (1-based) and the column; a file that is no Parquet, and a codec this build
/// leaves out, are named errors too.
#[test]
fn parquet_errors_name_row_and_column() {
    let d = Columns::default();
    assert_mentions(
        &error(&fixture("null_text.parquet"), &d),
        &["null_text.parquet: row 2, column `sentence`", "expected a string, found null"],
    );
    assert_mentions(
        &error(&fixture("float_label.parquet"), &d),
        &["float_label.parquet: row 1, column `label`", "string or an integer", "the number 0"],
    );
    let chosen = Columns { label_column: Some("gold".into()), ..Columns::default() };
    assert_mentions(
        &error(&fixture("pairs.parquet"), &chosen),
        &["no column `gold`", "columns present: sentence1, sentence2, label, idx"],
    );
    assert_mentions(&error(&fixture("zstd.parquet"), &d), &["zstd.parquet: row 1", "zstd", "compression=\"snappy\""]);
    let mut truncated = std::fs::read(fixture("pairs.parquet")).unwrap();
    truncated.truncate(truncated.len() / 2);
    let path = write("truncated.parquet", "");
    std::fs::write(&path, truncated).unwrap();
    assert_mentions(&error(&path, &d), &["truncated.parquet", "not a readable Parquet file"]);
    let mut garbage = std::fs::read(fixture("pairs.parquet")).unwrap();
    let middle = garbage.len() / 2;
    garbage[8..middle].iter_mut().for_each(|b| *b = 0xFF);
    let path = write("garbage.parquet", "");
    std::fs::write(&path, garbage).unwrap();
    assert!(read_labeled(&path, &d, false).unwrap_err().to_string().contains("garbage.parquet"));
}

/// CSV with named columns: a short row names its line and the column it lacks; a missing column lists the
/// header's.
#[test]
fn named_csv_errors() {
    let named = Columns { text_column: Some("sentence".into()), ..Columns::default() };
    let path = write("short.csv", "sentence,label\nfine,1\nno label\n");
    assert_mentions(&error(&path, &named), &["short.csv:3:", "column `label`", "1 field(s)"]);
    let path = write("other.csv", "body,label\nfine,1\n");
    assert_mentions(&error(&path, &named), &["no column `sentence`", "columns present: body, label"]);
}

/// 300 damaged copies of pairs.parquet (a byte changed or the file cut short): every read ends in a result,
/// and every error names the file.
#[test]
fn damaged_parquet_files_end_in_named_errors() {
    let original = std::fs::read(fixture("pairs.parquet")).unwrap();
    let path = write("damaged.parquet", "");
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut below = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let mut refused = 0;
    for _ in 0..300 {
        let mut bytes = original.clone();
        let at = below(bytes.len());
        if below(4) == 0 {
            bytes.truncate(at);
        } else {
            bytes[at] = below(256) as u8;
        }
        std::fs::write(&path, &bytes).unwrap();
        if let Err(e) = read_labeled(&path, &Columns::default(), false) {
            refused += 1;
            assert!(e.to_string().contains("damaged.parquet"), "{e}");
        }
    }
    assert!(refused > 0, "no damaged file was refused");
}
