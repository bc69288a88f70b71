//! Tables of texts and labels in the formats Hugging Face datasets exports — JSON lines (`to_json`: one object per
//! line, `.jsonl`/`.json`) and Parquet (`to_parquet`) — besides the CSV/TSV of [`super::labeled`]. Columns are
//! chosen by name, with the defaults datasets' GLUE-style tables use (`sentence`, `sentence1`/`sentence2`,
//! `label`, ...), so a table that `datasets` wrote reads without flags.
//!
//! Errors name the file, the row (the line of a JSON-lines or CSV file, the 1-based row of a Parquet file) and
//! the column, and say what was expected: a missing column lists the columns present.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::Arc;

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use parquet::schema::types::Type;
use serde::{Deserialize, Serialize};

use super::labeled::{self, LabeledText};
use crate::{Error, Result};

/// The file format a path's extension names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableFormat {
    /// Comma-separated, RFC 4180 quoting (any extension not named below).
    Csv,
    /// `.tsv`: tab-separated, unquoted (GLUE's files).
    Tsv,
    /// `.jsonl`, `.ndjson`, `.json`: one JSON object per line.
    JsonLines,
    /// `.parquet`.
    Parquet,
}

impl TableFormat {
    /// The format a file's extension implies (CSV for any extension not listed).
    pub fn of(path: &Path) -> Self {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        match ext.as_str() {
            "tsv" => TableFormat::Tsv,
            "jsonl" | "ndjson" | "json" => TableFormat::JsonLines,
            "parquet" => TableFormat::Parquet,
            _ => TableFormat::Csv,
        }
    }

    /// JSON lines and Parquet name their columns; CSV/TSV name them only in a header row.
    pub fn has_column_names(self) -> bool {
        matches!(self, TableFormat::JsonLines | TableFormat::Parquet)
    }
}

/// The columns a labelled table is read from. `None` picks the first default the table has.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Columns {
    /// The column holding the text (`--text-column`); `None` tries `text`, `sentence1`, `premise`, `question`,
    /// `sentence`.
    pub text_column: Option<String>,
    /// The column holding a pair's second text (`--text-pair-column`); `None` tries `text_pair`, `sentence2`,
    /// `hypothesis`, `sentence`, where the table has one.
    pub text_pair_column: Option<String>,
    /// The column holding the label (`--label-column`); `None` tries `label`, `labels`.
    pub label_column: Option<String>,
}

impl Columns {
    fn any_chosen(&self) -> bool {
        self.text_column.is_some() || self.text_pair_column.is_some() || self.label_column.is_some()
    }
}

/// Default text columns, in order of preference: the names of datasets' text and GLUE tables (`question` before
/// `sentence`, so QNLI's question is the first segment).
const TEXT_COLUMNS: &[&str] = &["text", "sentence1", "premise", "question", "sentence"];
/// Default second segments, used only where the table has one (and it is not the text column).
const PAIR_COLUMNS: &[&str] = &["text_pair", "sentence2", "hypothesis", "sentence"];
const LABEL_COLUMNS: &[&str] = &["label", "labels"];

/// Reads texts (and text pairs) with their labels. CSV/TSV without a column option are read by position as
/// [`labeled::read_labeled_texts`] reads them (`header` skips a first row); with one, or in JSON lines and
/// Parquet, columns are found by name (a CSV/TSV file then needs its header row).
pub fn read_labeled(path: &Path, columns: &Columns, header: bool) -> Result<Vec<LabeledText>> {
    let format = TableFormat::of(path);
    if !format.has_column_names() && !columns.any_chosen() {
        return labeled::read_labeled_texts(path, header);
    }
    let specs = [
        Spec::new("text", "--text-column", columns.text_column.as_deref(), TEXT_COLUMNS, true),
        Spec::new("text pair", "--text-pair-column", columns.text_pair_column.as_deref(), PAIR_COLUMNS, false),
        Spec::new("label", "--label-column", columns.label_column.as_deref(), LABEL_COLUMNS, true),
    ];
    let table = read_table(path, format, &specs)?;
    let mut rows = Vec::with_capacity(table.rows.len());
    for (row, cells) in &table.rows {
        let mut cells = by_spec(&table.names, cells).into_iter();
        let mut next = || cells.next().flatten();
        let (text, text_b, label) = (next(), next(), next());
        let text = table.text(*row, text)?.unwrap_or_default();
        let text_b = table.text(*row, text_b)?;
        let label = table.label(*row, label)?.unwrap_or_default();
        rows.push(LabeledText { text, text_b, label });
    }
    if rows.is_empty() {
        return Err(Error::input(path, None, "holds no labelled texts"));
    }
    Ok(rows)
}

/// Reads one text column (`column`, else the first of the default text columns the table has).
pub fn read_texts(path: &Path, column: Option<&str>) -> Result<Vec<String>> {
    let format = TableFormat::of(path);
    let specs = [Spec::new("text", "--text-column", column, TEXT_COLUMNS, true)];
    let table = read_table(path, format, &specs)?;
    let mut texts = Vec::with_capacity(table.rows.len());
    for (row, cells) in &table.rows {
        let text = table.text(*row, cells.first().zip(table.names[0].as_deref()))?;
        texts.push(text.unwrap_or_default());
    }
    if texts.is_empty() {
        return Err(Error::input(path, None, "holds no texts"));
    }
    Ok(texts)
}

/// Each spec's cell with its column name (`None` where the spec found no column: such specs have no cell).
fn by_spec<'t>(names: &'t [Option<String>], cells: &'t [Cell]) -> Vec<Option<(&'t Cell, &'t str)>> {
    let mut cells = cells.iter();
    names.iter().map(|name| name.as_deref().and_then(|name| cells.next().map(|cell| (cell, name)))).collect()
}

/// One column a reader looks for.
struct Spec<'a> {
    role: &'static str,
    flag: &'static str,
    chosen: Option<&'a str>,
    defaults: &'static [&'static str],
    required: bool,
}

impl<'a> Spec<'a> {
    fn new(
        role: &'static str,
        flag: &'static str,
        chosen: Option<&'a str>,
        defaults: &'static [&'static str],
        required: bool,
    ) -> Self {
        Self { role, flag, chosen, defaults, required }
    }
}

/// Picks each spec's column among `present` (a default already taken by an earlier spec is skipped, so
/// `sentence` is not both text and pair). A chosen column must exist; a required one must be found.
fn resolve(path: &Path, specs: &[Spec], present: &[String]) -> Result<Vec<Option<String>>> {
    let listed = || format!("columns present: {}", present.join(", "));
    let mut names: Vec<Option<String>> = Vec::with_capacity(specs.len());
    for spec in specs {
        let name = match spec.chosen {
            Some(chosen) if present.iter().any(|p| p == chosen) => Some(chosen.to_string()),
            Some(chosen) => {
                let message = format!("no column `{chosen}` (given by {}); {}", spec.flag, listed());
                return Err(Error::input(path, None, message));
            }
            None => spec
                .defaults
                .iter()
                .find(|d| present.iter().any(|p| p == *d) && !names.iter().flatten().any(|n| n == *d))
                .map(|d| d.to_string()),
        };
        if name.is_none() && spec.required {
            let message = format!(
                "no {} column: looked for {}; {} (choose one with {})",
                spec.role,
                spec.defaults.join(", "),
                listed(),
                spec.flag
            );
            return Err(Error::input(path, None, message));
        }
        names.push(name);
    }
    Ok(names)
}

/// A cell, as far as reading texts and labels needs to tell values apart.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Text(String),
    Integer(i64),
    /// Anything else, described for the error message ("null", "the number 0.5", "a list").
    Other(String),
}

/// How a table's rows are numbered in messages.
#[derive(Debug, Clone, Copy)]
enum Numbering {
    /// The line of a text file, given as `path:line`.
    Line,
    /// The 1-based row of a Parquet file.
    Row,
}

/// The selected columns of every row: `rows[i] = (line or row number, one cell per named column)`. Specs that
/// found no column have a `None` name and no cell.
struct Table<'a> {
    path: &'a Path,
    numbering: Numbering,
    names: Vec<Option<String>>,
    rows: Vec<(usize, Vec<Cell>)>,
}

impl Table<'_> {
    fn error(&self, row: usize, column: &str, message: impl std::fmt::Display) -> Error {
        match self.numbering {
            Numbering::Line => Error::input(self.path, Some(row), format!("column `{column}`: {message}")),
            Numbering::Row => Error::input(self.path, None, format!("row {row}, column `{column}`: {message}")),
        }
    }

    /// A text cell; `None` where the column was not chosen.
    fn text(&self, row: usize, cell: Option<(&Cell, &str)>) -> Result<Option<String>> {
        match cell {
            None => Ok(None),
            Some((Cell::Text(text), _)) => Ok(Some(text.clone())),
            Some((Cell::Integer(i), column)) => Err(self.error(row, column, format!("expected a string, found {i}"))),
            Some((Cell::Other(kind), column)) => {
                Err(self.error(row, column, format!("expected a string, found {kind}")))
            }
        }
    }

    /// A label: a non-empty string, or an integer (datasets' ClassLabel) written in decimal.
    fn label(&self, row: usize, cell: Option<(&Cell, &str)>) -> Result<Option<String>> {
        let expected = "expected a class label (a string or an integer)";
        match cell {
            None => Ok(None),
            Some((Cell::Integer(i), _)) => Ok(Some(i.to_string())),
            Some((Cell::Text(text), _)) if !text.trim().is_empty() => Ok(Some(text.trim().to_string())),
            Some((Cell::Text(_), column)) => Err(self.error(row, column, format!("{expected}, found an empty string"))),
            Some((Cell::Other(kind), column)) => Err(self.error(row, column, format!("{expected}, found {kind}"))),
        }
    }
}

fn read_table<'a>(path: &'a Path, format: TableFormat, specs: &[Spec]) -> Result<Table<'a>> {
    match format {
        TableFormat::JsonLines => read_json_lines(path, specs),
        TableFormat::Parquet => read_parquet(path, specs),
        TableFormat::Csv | TableFormat::Tsv => read_csv(path, specs),
    }
}

/// CSV/TSV with a header row naming the columns.
fn read_csv<'a>(path: &'a Path, specs: &[Spec]) -> Result<Table<'a>> {
    let labeled::NamedColumns { header, rows: records } = labeled::read_with_header(path)?;
    let names = resolve(path, specs, &header)?;
    let indices: Vec<usize> = names.iter().flatten().filter_map(|name| header.iter().position(|h| h == name)).collect();
    let mut table = Table { path, numbering: Numbering::Line, names, rows: Vec::with_capacity(records.len()) };
    for (line, fields) in records {
        let mut cells = Vec::with_capacity(indices.len());
        for &i in &indices {
            match fields.get(i) {
                Some(field) => cells.push(Cell::Text(field.clone())),
                None => {
                    let found = format!("the row has {} field(s), the header {}", fields.len(), header.len());
                    return Err(table.error(line, &header[i], format!("missing: {found}")));
                }
            }
        }
        table.rows.push((line, cells));
    }
    Ok(table)
}

/// JSON lines: one object per line; blank lines are skipped. The columns are the keys of the first object.
fn read_json_lines<'a>(path: &'a Path, specs: &[Spec]) -> Result<Table<'a>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut table = Table { path, numbering: Numbering::Line, names: Vec::new(), rows: Vec::new() };
    let mut selected: Option<Vec<String>> = None;
    for (index, bytes) in BufReader::new(file).split(b'\n').enumerate() {
        let line = index + 1;
        let bytes = bytes.map_err(|e| Error::io(path, e))?;
        let text = std::str::from_utf8(&bytes).map_err(|e| {
            Error::input(path, Some(line), format!("not UTF-8 (byte {} of the line)", e.valid_up_to() + 1))
        })?;
        let text = if index == 0 { text.trim_start_matches('\u{feff}') } else { text };
        if text.trim().is_empty() {
            continue;
        }
        let object = parse_object(path, line, text)?;
        let columns = match &selected {
            Some(columns) => columns,
            None => {
                let keys: Vec<String> = object.keys().cloned().collect();
                table.names = resolve(path, specs, &keys)?;
                selected.insert(table.names.iter().flatten().cloned().collect())
            }
        };
        let mut cells = Vec::with_capacity(columns.len());
        for column in columns {
            match object.get(column) {
                Some(value) => cells.push(json_cell(value)),
                None => {
                    let keys: Vec<&str> = object.keys().map(String::as_str).collect();
                    let message = format!("missing (keys on this line: {})", keys.join(", "));
                    return Err(table.error(line, column, message));
                }
            }
        }
        table.rows.push((line, cells));
    }
    Ok(table)
}

fn parse_object(path: &Path, line: usize, text: &str) -> Result<serde_json::Map<String, serde_json::Value>> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(object)) => Ok(object),
        Ok(other) => {
            let message = format!("expected a JSON object, found {}", json_kind(&other));
            Err(Error::input(path, Some(line), message))
        }
        Err(e) => {
            let message = format!(
                "invalid JSON at column {}: {e} (JSON lines hold one object per line, as datasets' to_json writes)",
                e.column()
            );
            Err(Error::input(path, Some(line), message))
        }
    }
}

fn json_cell(value: &serde_json::Value) -> Cell {
    match value {
        serde_json::Value::String(s) => Cell::Text(s.clone()),
        serde_json::Value::Number(n) if n.is_i64() => Cell::Integer(n.as_i64().unwrap_or_default()),
        other => Cell::Other(json_kind(other)),
    }
}

fn json_kind(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "null".into(),
        serde_json::Value::Bool(b) => format!("the boolean {b}"),
        serde_json::Value::Number(n) => format!("the number {n}"),
        serde_json::Value::String(_) => "a string".into(),
        serde_json::Value::Array(_) => "a list".into(),
        serde_json::Value::Object(_) => "an object".into(),
    }
}

/// Parquet, read row by row through the crate's record API over the selected columns only. The parquet crate
/// may panic on a damaged file; the read runs under a guard so that is an error naming the file too.
fn read_parquet<'a>(path: &'a Path, specs: &[Spec]) -> Result<Table<'a>> {
    let read = std::panic::AssertUnwindSafe(|| read_parquet_unguarded(path, specs));
    crate::panic_guard::catch_quietly(read)
        .unwrap_or_else(|panic| Err(Error::input(path, None, format!("not a readable Parquet file: {panic}"))))
}

fn read_parquet_unguarded<'a>(path: &'a Path, specs: &[Spec]) -> Result<Table<'a>> {
    let unreadable = |e| Error::input(path, None, format!("not a readable Parquet file: {}", parquet_message(e)));
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = SerializedFileReader::new(file).map_err(unreadable)?;
    let schema = reader.metadata().file_metadata().schema();
    let present: Vec<String> = schema.get_fields().iter().map(|f| f.name().to_string()).collect();
    let names = resolve(path, specs, &present)?;
    let selected: Vec<String> = names.iter().flatten().cloned().collect();
    check_decoded_size(path, &reader, &selected)?;
    let fields: Vec<Arc<Type>> =
        selected.iter().filter_map(|n| schema.get_fields().iter().find(|f| f.name() == n).cloned()).collect();
    let projection = Type::group_type_builder(schema.name()).with_fields(fields).build().map_err(unreadable)?;
    let mut table = Table { path, numbering: Numbering::Row, names, rows: Vec::new() };
    for (index, row) in reader.get_row_iter(Some(projection)).map_err(unreadable)?.enumerate() {
        let row = row.map_err(|e| {
            Error::input(path, None, format!("row {}: not readable: {}", index + 1, parquet_message(e)))
        })?;
        let mut cells: Vec<Cell> = Vec::with_capacity(selected.len());
        for column in &selected {
            let field = row.get_column_iter().find(|(name, _)| *name == column).map(|(_, f)| f);
            cells.push(field.map_or_else(|| Cell::Other("nothing".into()), parquet_cell));
        }
        table.rows.push((index + 1, cells));
    }
    Ok(table)
}

/// The parquet crate's error, with a hint where the file uses a codec this build leaves out.
fn parquet_message(error: parquet::errors::ParquetError) -> String {
    let message = error.to_string();
    if message.contains("Disabled feature") {
        return format!(
            "{message} (qkv reads uncompressed and snappy-compressed Parquet, the default of pyarrow and \
                        datasets: re-save with compression=\"snappy\")"
        );
    }
    message
}

/// Refuses a file whose selected columns would decode to more than this process may hold (the footer
/// declares each column chunk's decoded size), before any page is read.
fn check_decoded_size(path: &Path, reader: &SerializedFileReader<File>, columns: &[String]) -> Result<()> {
    let mut bytes = 0f64;
    for group in reader.metadata().row_groups() {
        for chunk in group.columns() {
            if columns.iter().any(|c| chunk.column_path().parts().first() == Some(c)) {
                bytes += chunk.uncompressed_size().max(0) as f64;
            }
        }
    }
    // Decoded strings are held about twice: the page buffers and the row values built from them.
    crate::limits::check_memory("the text columns of this Parquet file", 2.0 * bytes)
        .map_err(|e| Error::input(path, None, e))
}

fn parquet_cell(field: &Field) -> Cell {
    match field {
        Field::Str(s) => Cell::Text(s.clone()),
        Field::Byte(i) => Cell::Integer(*i as i64),
        Field::Short(i) => Cell::Integer(*i as i64),
        Field::Int(i) => Cell::Integer(*i as i64),
        Field::Long(i) => Cell::Integer(*i),
        Field::UByte(i) => Cell::Integer(*i as i64),
        Field::UShort(i) => Cell::Integer(*i as i64),
        Field::UInt(i) => Cell::Integer(*i as i64),
        Field::ULong(i) => i64::try_from(*i).map_or_else(|_| Cell::Other(format!("the integer {i}")), Cell::Integer),
        Field::Null => Cell::Other("null".into()),
        Field::Bool(b) => Cell::Other(format!("the boolean {b}")),
        Field::Float(v) => Cell::Other(format!("the number {v}")),
        Field::Double(v) => Cell::Other(format!("the number {v}")),
        Field::Bytes(_) => Cell::Other("binary data (not UTF-8 text)".into()),
        Field::ListInternal(_) => Cell::Other("a list".into()),
        Field::MapInternal(_) => Cell::Other("a map".into()),
        Field::Group(_) => Cell::Other("a struct".into()),
        other => Cell::Other(format!("the value {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn present(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn labeled_specs(columns: &Columns) -> [Spec<'_>; 3] {
        [
            Spec::new("text", "--text-column", columns.text_column.as_deref(), TEXT_COLUMNS, true),
            Spec::new("text pair", "--text-pair-column", columns.text_pair_column.as_deref(), PAIR_COLUMNS, false),
            Spec::new("label", "--label-column", columns.label_column.as_deref(), LABEL_COLUMNS, true),
        ]
    }

    /// The defaults pick datasets' GLUE columns: CoLA's `sentence` alone, MRPC's pair, QNLI's question first.
    #[test]
    fn default_columns_follow_the_glue_tables() {
        let path = Path::new("t.jsonl");
        let defaults = Columns::default();
        let specs = labeled_specs(&defaults);
        let pick = |names: &[&str]| resolve(path, &specs, &present(names)).unwrap();
        let some = |s: &str| Some(s.to_string());
        assert_eq!(pick(&["sentence", "label", "idx"]), [some("sentence"), None, some("label")]);
        assert_eq!(pick(&["sentence1", "sentence2", "label"]), [some("sentence1"), some("sentence2"), some("label")]);
        assert_eq!(pick(&["question", "sentence", "label"]), [some("question"), some("sentence"), some("label")]);
        let message = resolve(path, &specs, &present(&["body", "label"])).unwrap_err().to_string();
        assert!(message.contains("no text column") && message.contains("columns present: body, label"), "{message}");
        let chosen = Columns { label_column: Some("stars".into()), ..Columns::default() };
        let message = resolve(path, &labeled_specs(&chosen), &present(&["text", "label"])).unwrap_err().to_string();
        assert!(message.contains("no column `stars` (given by --label-column)"), "{message}");
    }

    #[test]
    fn formats_follow_the_extension() {
        assert_eq!(TableFormat::of(Path::new("a/train.JSONL")), TableFormat::JsonLines);
        assert_eq!(TableFormat::of(Path::new("dev.json")), TableFormat::JsonLines);
        assert_eq!(TableFormat::of(Path::new("x.parquet")), TableFormat::Parquet);
        assert_eq!(TableFormat::of(Path::new("x.tsv")), TableFormat::Tsv);
        assert_eq!(TableFormat::of(Path::new("x.csv")), TableFormat::Csv);
        assert_eq!(TableFormat::of(Path::new("x")), TableFormat::Csv);
    }
}
