//! Labelled text files, read as RFC 4180 CSV (quoted fields may hold commas, quotes and line breaks) or, for
//! `.tsv`, tab-separated: sentence pairs with a similarity score (STS-B's `sentence1,sentence2,score`) and
//! texts with a class label (`text[,text_b],label`, GLUE-style).

use std::path::Path;

use crate::{Error, Result};

/// Two sentences and a gold similarity score.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredPair {
    pub first: String,
    pub second: String,
    pub score: f64,
}

/// The delimiter a file's extension implies: tab for `.tsv`, comma otherwise.
pub fn delimiter_for(path: &Path) -> u8 {
    match path.extension().and_then(|e| e.to_str()) {
        Some(ext) if ext.eq_ignore_ascii_case("tsv") => b'\t',
        _ => b',',
    }
}

/// Reads `sentence1,sentence2,score` rows. A first row whose score is not a number is taken as a header.
/// Errors name the file and line: a row without three fields, a score that is not a finite number, no rows.
pub fn read_scored_pairs(path: &Path) -> Result<Vec<ScoredPair>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(delimiter_for(path))
        .from_path(path)
        .map_err(|e| csv_error(path, e))?;
    let mut pairs = Vec::new();
    for (index, record) in reader.records().enumerate() {
        let record = record.map_err(|e| csv_error(path, e))?;
        let line = record.position().map(|p| p.line() as usize);
        if record.len() < 3 {
            let message = format!("expected sentence1,sentence2,score; found {} field(s)", record.len());
            return Err(Error::input(path, line, message));
        }
        let score = record[2].trim().parse::<f64>().ok().filter(|s| s.is_finite());
        match score {
            Some(score) => {
                pairs.push(ScoredPair { first: record[0].to_string(), second: record[1].to_string(), score })
            }
            None if index == 0 => continue, // a header row
            None => {
                let message = format!("score {:?} is not a number", &record[2]);
                return Err(Error::input(path, line, message));
            }
        }
    }
    if pairs.is_empty() {
        return Err(Error::input(path, None, "holds no sentence pairs"));
    }
    Ok(pairs)
}

/// A text (or text pair) and its class label, as written in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct LabeledText {
    pub text: String,
    pub text_b: Option<String>,
    pub label: String,
}

/// Reads `text,label` or `text,text_b,label` rows (the label is the last field). With `header`, the first row is
/// skipped. TSV files are read without quoting, as GLUE's are (CoLA's sentences hold bare quote marks).
/// Errors name the file and line: a row with fewer than two fields, an empty label, no rows.
pub fn read_labeled_texts(path: &Path, header: bool) -> Result<Vec<LabeledText>> {
    let tsv = delimiter_for(path) == b'\t';
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(header)
        .flexible(true)
        .delimiter(delimiter_for(path))
        .quoting(!tsv)
        .from_path(path)
        .map_err(|e| csv_error(path, e))?;
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| csv_error(path, e))?;
        let line = record.position().map(|p| p.line() as usize);
        let fields: Vec<&str> = record.iter().collect();
        let (label, texts) = match fields.split_last() {
            Some((label, texts)) if !texts.is_empty() && texts.len() <= 2 => (label.trim(), texts),
            _ => {
                let message = format!("expected text,label or text,text_b,label; found {} field(s)", fields.len());
                return Err(Error::input(path, line, message));
            }
        };
        if label.is_empty() {
            return Err(Error::input(path, line, "the label (last field) is empty"));
        }
        rows.push(LabeledText {
            text: texts[0].to_string(),
            text_b: texts.get(1).map(|t| t.to_string()),
            label: label.to_string(),
        });
    }
    if rows.is_empty() {
        return Err(Error::input(path, None, "holds no labelled texts"));
    }
    Ok(rows)
}

/// The distinct labels of `rows` in class-id order: numerically when every label is an integer (so "0", "1"
/// keep their meaning), alphabetically otherwise.
pub fn label_set(rows: &[LabeledText]) -> Vec<String> {
    let mut labels: Vec<String> = rows.iter().map(|r| r.label.clone()).collect();
    labels.sort();
    labels.dedup();
    if labels.iter().all(|l| l.parse::<i64>().is_ok()) {
        labels.sort_by_key(|l| l.parse::<i64>().unwrap_or(0));
    }
    labels
}

fn csv_error(path: &Path, error: csv::Error) -> Error {
    let line = error.position().map(|p| p.line() as usize);
    match error.into_kind() {
        csv::ErrorKind::Io(e) => Error::io(path, e),
        csv::ErrorKind::Utf8 { err, .. } => Error::input(path, line, format!("not UTF-8: {err}")),
        other => Error::input(path, line, format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("qkv-labeled-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn quoted_fields_and_headers() {
        let path = write("a.csv", "sentence1,sentence2,score\n\"A, b\",\"He said \"\"hi\"\"\",4.5\nx,y,0\n");
        let pairs = read_scored_pairs(&path).unwrap();
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[0], ScoredPair { first: "A, b".into(), second: "He said \"hi\"".into(), score: 4.5 });
    }

    #[test]
    fn labelled_texts_from_tsv_and_csv() {
        let path = write("cola.tsv", "they said \"hi\" loudly\t1\nhim went\t0\n");
        let rows = read_labeled_texts(&path, false).unwrap();
        assert_eq!(rows[0].text, "they said \"hi\" loudly");
        assert_eq!(rows[1].label, "0");
        assert_eq!(label_set(&rows), vec!["0", "1"]);
        let path = write("pairs.csv", "premise,hypothesis,label\n\"a, b\",c,entailment\nd,e,neutral\n");
        let rows = read_labeled_texts(&path, true).unwrap();
        assert_eq!(rows[0].text_b.as_deref(), Some("c"));
        assert_eq!(label_set(&rows), vec!["entailment", "neutral"]);
        let path = write("bad.tsv", "fine\t1\nno label here\n");
        let message = read_labeled_texts(&path, false).unwrap_err().to_string();
        assert!(message.contains("bad.tsv:2") && message.contains("1 field"), "{message}");
        let labels = ["10", "9", "-1"].map(|l| LabeledText { text: String::new(), text_b: None, label: l.into() });
        assert_eq!(label_set(&labels), vec!["-1", "9", "10"]);
    }

    #[test]
    fn bad_rows_name_their_line() {
        let path = write("b.csv", "a,b,1\nc,d,high\n");
        let message = read_scored_pairs(&path).unwrap_err().to_string();
        assert!(message.contains("b.csv:2") && message.contains("high"), "{message}");
        let path = write("c.csv", "a,b,1\nonly one field\n");
        let message = read_scored_pairs(&path).unwrap_err().to_string();
        assert!(message.contains("c.csv:2") && message.contains("1 field"), "{message}");
        let message = read_scored_pairs(Path::new("/nonexistent/sts.csv")).unwrap_err().to_string();
        assert!(message.contains("/nonexistent/sts.csv"), "{message}");
    }
}
