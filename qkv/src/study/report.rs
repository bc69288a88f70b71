//! The study's report: one markdown page (`report.md`) with a section per question, the figures beside it, and
//! the raw numbers as `results.json`.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::atomic_file::write_atomically;
use crate::{Error, Result};

/// What one question contributes to the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Section {
    /// The subcommand, e.g. `scaling`.
    pub name: String,
    /// The question as people ask it.
    pub question: String,
    /// The answer in one line, with the numbers that back it.
    pub answer: String,
    /// Task, model, seeds, what is averaged.
    pub setup: String,
    /// The section's tables, in order.
    pub tables: Vec<Table>,
    /// The section's figures, in order (PNGs beside the report).
    pub figures: Vec<Figure>,
    /// Every measured number, for scripts.
    pub results: serde_json::Value,
}

/// A markdown table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Table {
    /// The line above the table: what it shows and how it was measured.
    pub caption: String,
    /// The column titles.
    pub header: Vec<String>,
    /// The rows, one string per cell.
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with its caption and column titles.
    pub fn new(caption: impl Into<String>, header: &[&str]) -> Self {
        Self { caption: caption.into(), header: header.iter().map(|h| h.to_string()).collect(), rows: vec![] }
    }

    /// Appends a row (as many cells as the header has).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn markdown(&self, out: &mut String) {
        let _ = writeln!(out, "{}\n", self.caption);
        let _ = writeln!(out, "| {} |", self.header.join(" | "));
        let _ = writeln!(out, "|{}", "---|".repeat(self.header.len()));
        for row in &self.rows {
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
        out.push('\n');
    }
}

/// A PNG in the report directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Figure {
    /// File name inside the report directory.
    pub file: String,
    /// The figure's caption, under it in the report (also its alt text).
    pub caption: String,
}

/// Keeps `section` as `dir/sections/NAME.json`, so that questions run one at a time build one report.
pub fn keep_section(dir: &Path, section: &Section) -> Result<()> {
    let sections = dir.join("sections");
    std::fs::create_dir_all(&sections).map_err(|e| Error::io(&sections, e))?;
    let path = sections.join(format!("{}.json", section.name));
    let json = serde_json::to_vec_pretty(section).map_err(|e| Error::input(&path, None, e))?;
    write_atomically(&path, &json)
}

/// The sections kept in `dir`, in the order of `names`; a file that does not parse is an error naming it.
pub fn kept_sections(dir: &Path, names: &[&str]) -> Result<Vec<Section>> {
    let mut sections = Vec::new();
    for name in names {
        let path = dir.join("sections").join(format!("{name}.json"));
        let Ok(bytes) = std::fs::read(&path) else { continue };
        let section = serde_json::from_slice(&bytes).map_err(|e| Error::input(&path, Some(e.line()), e))?;
        sections.push(section);
    }
    Ok(sections)
}

/// Writes `report.md` and `results.json` into `dir` (each atomically), the figures being there already.
pub fn write_report(dir: &Path, title: &str, sections: &[Section]) -> Result<()> {
    let mut md = format!("# {title}\n\n");
    for s in sections {
        let _ = writeln!(md, "- **{}** — {}", s.question, s.answer);
    }
    md.push('\n');
    for s in sections {
        let _ = writeln!(md, "## {} (`qkv study {}`)\n", s.question, s.name);
        let _ = writeln!(md, "**Answer.** {}\n", s.answer);
        let _ = writeln!(md, "**Setup.** {}\n", s.setup);
        for table in &s.tables {
            table.markdown(&mut md);
        }
        for figure in &s.figures {
            let _ = writeln!(md, "![{}]({})\n\n*{}*\n", figure.caption, figure.file, figure.caption);
        }
    }
    write_atomically(&dir.join("report.md"), md.as_bytes())?;
    let json = serde_json::to_vec_pretty(sections).map_err(|e| Error::input(dir.join("results.json"), None, e))?;
    write_atomically(&dir.join("results.json"), &json)
}
