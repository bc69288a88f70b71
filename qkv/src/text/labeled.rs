//! Labelled text files, read as RFC 4180 CSV (quoted fields may hold commas, quotes and line breaks) or, for
//! `.tsv`, tab-separated: sentence pairs with a similarity score (STS-B's `sentence1,sentence2,score`) and
//! texts with a class label (`text[,text_b],label`, GLUE-style).

use std::path::Path;

use crate::{Error, Result};

/// Two sentences and a gold similarity score.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredPair {
    /// The first sentence (`sentence1`).
    pub first: String,
    /// The second sentence (`sentence2`).
    pub second: String,
    /// Their gold similarity (STS-B: 0 to 5).
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
    let file = CsvFile::read(path, true)?;
    let mut reader = file.reader(false);
    let mut pairs = Vec::new();
    for (index, record) in reader.records().enumerate() {
        let record = record.map_err(|e| file.error(e))?;
        let line = file.line_of(&record);
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
    /// The text, or the first text of a pair.
    pub text: String,
    /// The second text of a pair (`text_b`); `None` for a single text.
    pub text_b: Option<String>,
    /// The class label, as written in the file.
    pub label: String,
}

/// Reads `text,label` or `text,text_b,label` rows (the label is the last field). With `header`, the first row is
/// skipped. TSV files are read without quoting, as GLUE's are (CoLA's sentences hold bare quote marks).
/// Errors name the file and line: a row with fewer than two fields, an empty label, no rows.
pub fn read_labeled_texts(path: &Path, header: bool) -> Result<Vec<LabeledText>> {
    let tsv = delimiter_for(path) == b'\t';
    let file = CsvFile::read(path, !tsv)?;
    let mut reader = file.reader(header);
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| file.error(e))?;
        let line = file.line_of(&record);
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

/// A CSV/TSV file whose first row names its columns.
pub(crate) struct NamedColumns {
    pub header: Vec<String>,
    /// Every later row's fields, with the line it starts on. Rows may be shorter or longer than the header (the
    /// caller names a missing field).
    pub rows: Vec<(usize, Vec<String>)>,
}

/// Reads a CSV/TSV file with a header row (quoting as [`read_labeled_texts`]).
pub(crate) fn read_with_header(path: &Path) -> Result<NamedColumns> {
    let tsv = delimiter_for(path) == b'\t';
    let file = CsvFile::read(path, !tsv)?;
    let mut reader = file.reader(true);
    let header: Vec<String> = reader.headers().map_err(|e| file.error(e))?.iter().map(str::to_string).collect();
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| file.error(e))?;
        let line = file.line_of(&record).unwrap_or(rows.len() + 2);
        rows.push((line, record.iter().map(str::to_string).collect()));
    }
    Ok(NamedColumns { header, rows })
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

/// A CSV or TSV file read whole, so that errors can name lines as an editor numbers them: the csv crate counts
/// a CRLF line ending as two line breaks in some positions and one in others, so its line numbers run one
/// behind on Windows files; counting the `\n` bytes before a record's byte offset does not.
struct CsvFile<'a> {
    path: &'a Path,
    bytes: Vec<u8>,
    /// Byte offset of every `\n`.
    line_ends: Vec<usize>,
    quoting: bool,
}

impl<'a> CsvFile<'a> {
    /// Reads `path`; with `quoting`, RFC 4180 quotes are checked first (see [`check_quotes`]).
    fn read(path: &'a Path, quoting: bool) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let line_ends = bytes.iter().enumerate().filter(|(_, &b)| b == b'\n').map(|(i, _)| i).collect();
        let file = Self { path, bytes, line_ends, quoting };
        if quoting {
            check_quotes(&file)?;
        }
        Ok(file)
    }

    fn reader(&self, header: bool) -> csv::Reader<&[u8]> {
        csv::ReaderBuilder::new()
            .has_headers(header)
            .flexible(true)
            .delimiter(delimiter_for(self.path))
            .quoting(self.quoting)
            .from_reader(self.bytes.as_slice())
    }

    /// The 1-based line holding byte `offset`.
    fn line_at(&self, offset: usize) -> usize {
        self.line_ends.partition_point(|&end| end < offset) + 1
    }

    /// The line where a record starts. The csv crate ends a record at the `\r` of a CRLF and gives the next
    /// one's position at the `\n`, so line breaks at the position are skipped first.
    fn record_line(&self, position: &csv::Position) -> usize {
        let start = position.byte() as usize;
        let skipped =
            self.bytes.get(start..).map_or(0, |rest| rest.iter().take_while(|b| matches!(b, b'\r' | b'\n')).count());
        self.line_at(start + skipped)
    }

    fn line_of(&self, record: &csv::StringRecord) -> Option<usize> {
        record.position().map(|p| self.record_line(p))
    }

    fn error(&self, error: csv::Error) -> Error {
        let line = error.position().map(|p| self.record_line(p));
        match error.into_kind() {
            csv::ErrorKind::Io(e) => Error::io(self.path, e),
            csv::ErrorKind::Utf8 { err, .. } => Error::input(self.path, line, format!("not UTF-8: {err}")),
            other => Error::input(self.path, line, format!("{other:?}")),
        }
    }
}

/// RFC 4180 quoting, checked before parsing. The csv crate reads an unclosed quote to the end of the file
/// and text after a closing quote into the field, so one stray quote silently merges the rows after it. A
/// quoted field may hold line breaks; one that never closes, or that spans lines and has text after its
/// closing quote, is a quoting error naming the line where it opens.
fn check_quotes(file: &CsvFile) -> Result<()> {
    let (bytes, delimiter) = (&file.bytes, delimiter_for(file.path));
    let mut opened: Option<usize> = None; // byte offset of the open quote
    let mut field_start = true;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match opened {
            Some(open) if b == b'"' => {
                if bytes.get(i + 1) == Some(&b'"') {
                    i += 2; // an escaped quote inside the field
                    continue;
                }
                opened = None;
                field_start = false;
                let next = bytes.get(i + 1).copied();
                let ends_field = matches!(next, None | Some(b'\r') | Some(b'\n')) || next == Some(delimiter);
                let (first, last) = (file.line_at(open), file.line_at(i));
                if !ends_field && last > first {
                    let message = format!(
                        "quoting error: the quoted field opened here closes on line {last} and more text follows \
                         its closing quote (a missing or stray \" merges the rows between)"
                    );
                    return Err(Error::input(file.path, Some(first), message));
                }
            }
            Some(_) => {}
            None if b == b'"' && field_start => opened = Some(i),
            None if b == delimiter || b == b'\n' => field_start = true,
            None if b == b'\r' => {}
            None => field_start = false,
        }
        i += 1;
    }
    match opened {
        Some(open) => {
            let message = "quoting error: the quoted field opened here is never closed (an unclosed \" reads the rest \
                           of the file into one field)";
            Err(Error::input(file.path, Some(file.line_at(open)), message))
        }
        None => Ok(()),
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

    /// Lines are numbered as an editor numbers them, with LF and with CRLF endings, in both readers.
    #[test]
    fn crlf_files_report_the_lines_an_editor_shows() {
        for (name, ending) in [("lf.csv", "\n"), ("crlf.csv", "\r\n")] {
            let text = ["sentence1,sentence2,score", "a,b,1", "\"c, d\",e,2", "f,g,high"].join(ending) + ending;
            let message = read_scored_pairs(&write(name, &text)).unwrap_err().to_string();
            assert!(message.contains(&format!("{name}:4")) && message.contains("high"), "{message}");
            let text = ["text,label", "fine,1", "no label", "x,0"].join(ending);
            let message = read_labeled_texts(&write(&format!("l{name}"), &text), true).unwrap_err().to_string();
            assert!(message.contains(&format!("l{name}:3")) && message.contains("1 field"), "{message}");
        }
    }

    /// An unclosed quote, or one whose field spans lines and runs on after closing, is a quoting error at the
    /// line where it opens; a well-formed quoted field with a line break is still read.
    #[test]
    fn quoting_errors_name_the_line_where_the_quote_opens() {
        let unclosed = write("unclosed.csv", "sentence1,sentence2,score\na,b,1\n\"c,d,2\ne,f,3\n");
        let message = read_scored_pairs(&unclosed).unwrap_err().to_string();
        assert!(message.contains("unclosed.csv:3: quoting error") && message.contains("never closed"), "{message}");
        let merged = write("merged.csv", "a good one,1\n\"bad stuff,0\nnice\" one,1\nawful,0\n");
        let message = read_labeled_texts(&merged, false).unwrap_err().to_string();
        assert!(message.contains("merged.csv:2: quoting error") && message.contains("line 3"), "{message}");
        let multiline = write("multiline.csv", "\"two\nlines\",b,1\n\"say \"\"hi\"\"\" x,c,2\n");
        let pairs = read_scored_pairs(&multiline).unwrap();
        assert_eq!(pairs[0].first, "two\nlines");
        assert_eq!(pairs.len(), 2);
    }
}
