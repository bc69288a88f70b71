//! Plain-text corpora: one sentence per line, UTF-8, and parallel corpora as two line-aligned files.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use crate::{Error, Result};

/// One training example of a parallel corpus: a sentence and its translation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentencePair {
    /// The sentence in the source language.
    pub source: String,
    /// Its translation in the target language.
    pub target: String,
}

/// The lines of a UTF-8 text file, without their "\n" or "\r\n" (and without a leading byte-order mark).
///
/// A missing file, bytes that are not UTF-8 (reported at the first bad line, 1-based) and a file with no lines
/// are errors naming the file.
pub fn read_lines(path: &Path) -> Result<Vec<String>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut lines = Vec::new();
    for (index, bytes) in BufReader::new(file).split(b'\n').enumerate() {
        let mut bytes = bytes.map_err(|e| Error::io(path, e))?;
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        let line = String::from_utf8(bytes).map_err(|e| {
            Error::input(
                path,
                Some(index + 1),
                format!("not UTF-8 (byte {} of the line)", e.utf8_error().valid_up_to() + 1),
            )
        })?;
        lines.push(line);
    }
    match lines.first_mut() {
        None => Err(Error::input(path, None, "the file is empty: expected one sentence per line")),
        Some(first) => {
            // Editors on Windows may start a UTF-8 file with a byte-order mark; it is not part of the sentence.
            if let Some(rest) = first.strip_prefix('\u{feff}') {
                *first = rest.to_string();
            }
            Ok(lines)
        }
    }
}

/// The whole file as UTF-8, naming the file and line of a bad byte.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        Error::input(path, Some(line), "not valid UTF-8")
    })
}

/// A parallel corpus: line i of `source` is translated by line i of `target`.
///
/// Errors name the file: different line counts (both files and both counts), and an empty or whitespace-only
/// line on either side (with its line number), since a pair with an empty side cannot be trained on.
pub fn read_parallel(source: &Path, target: &Path) -> Result<Vec<SentencePair>> {
    let sources = read_lines(source)?;
    let targets = read_lines(target)?;
    if sources.len() != targets.len() {
        let message = format!(
            "{} lines, but the parallel file {} has {} lines; the two sides must be line-aligned",
            sources.len(),
            target.display(),
            targets.len()
        );
        return Err(Error::input(source, None, message));
    }
    check_no_empty_line(source, &sources)?;
    check_no_empty_line(target, &targets)?;
    Ok(sources.into_iter().zip(targets).map(|(source, target)| SentencePair { source, target }).collect())
}

fn check_no_empty_line(path: &Path, lines: &[String]) -> Result<()> {
    match lines.iter().position(|line| line.trim().is_empty()) {
        Some(index) => Err(Error::input(
            path,
            Some(index + 1),
            "empty line: every sentence of a parallel corpus needs a non-empty translation",
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A file in a fresh temporary directory, removed with it.
    struct TempFile {
        dir: PathBuf,
        path: PathBuf,
    }

    impl TempFile {
        fn new(name: &str, bytes: &[u8]) -> Self {
            let unique = format!("qkv-corpus-{}-{name}-{:?}", std::process::id(), std::thread::current().id());
            let dir = std::env::temp_dir().join(unique.replace(['(', ')'], ""));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(name);
            std::fs::write(&path, bytes).unwrap();
            Self { dir, path }
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn lines_lose_their_line_endings() {
        let file = TempFile::new("mixed.txt", b"\xef\xbb\xbfHallo Welt\r\nzweite Zeile\n\ndritte");
        let lines = read_lines(&file.path).unwrap();
        assert_eq!(lines, ["Hallo Welt", "zweite Zeile", "", "dritte"]);
        let file = TempFile::new("final-newline.txt", b"eins\nzwei\n");
        assert_eq!(read_lines(&file.path).unwrap(), ["eins", "zwei"]);
    }

    #[test]
    fn missing_empty_and_non_utf8_files_are_errors_naming_the_file() {
        let missing = std::env::temp_dir().join("qkv-no-such-corpus.txt");
        let err = read_lines(&missing).unwrap_err().to_string();
        assert!(err.contains("qkv-no-such-corpus.txt"), "{err}");

        let empty = TempFile::new("empty.txt", b"");
        let err = read_lines(&empty.path).unwrap_err().to_string();
        assert!(err.contains("empty.txt") && err.contains("empty"), "{err}");

        let latin1 = TempFile::new("latin1.txt", b"gut\nsch\xf6n\n");
        let err = read_lines(&latin1.path).unwrap_err().to_string();
        assert!(err.contains("latin1.txt:2:") && err.contains("UTF-8"), "{err}");
    }

    #[test]
    fn parallel_files_are_zipped() {
        let source = TempFile::new("train.en", b"Good morning.\nThank you!\n");
        let target = TempFile::new("train.de", b"Guten Morgen.\r\nDanke!\r\n");
        let pairs = read_parallel(&source.path, &target.path).unwrap();
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[1], SentencePair { source: "Thank you!".into(), target: "Danke!".into() });
    }

    #[test]
    fn misaligned_parallel_files_name_both_files_and_counts() {
        let source = TempFile::new("three.en", b"a\nb\nc\n");
        let target = TempFile::new("two.de", b"a\nb\n");
        let err = read_parallel(&source.path, &target.path).unwrap_err().to_string();
        assert!(err.contains("three.en") && err.contains("two.de"), "{err}");
        assert!(err.contains("3 lines") && err.contains("2 lines"), "{err}");
    }

    #[test]
    fn an_empty_side_is_an_error_at_its_line() {
        let source = TempFile::new("ok.en", b"a\nb\nc\n");
        let target = TempFile::new("hole.de", b"a\n  \nc\n");
        let err = read_parallel(&source.path, &target.path).unwrap_err().to_string();
        assert!(err.contains("hole.de:2:") && err.contains("empty line"), "{err}");
    }
}
