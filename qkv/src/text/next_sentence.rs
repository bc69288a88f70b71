//! Sentence pairs for next-sentence prediction (Devlin et al., 2019, §3.1, task #2): from a corpus of
//! documents (separated by blank lines, one sentence per line), each sentence that has a successor becomes
//! sentence A; half the time B is that successor ("IsNext", label 0), otherwise a random sentence of another
//! document ("NotNext", label 1) — the `next_sentence_label` convention of transformers' BertForPreTraining.

use std::path::Path;

use rand::Rng as _;

use super::corpus::read_lines;
use crate::nn::mode::Rng;
use crate::{Error, Result};

/// `next_sentence_label` of a pair whose B follows A in the document.
pub const IS_NEXT: u32 = 0;
/// `next_sentence_label` of a pair whose B comes from another document.
pub const NOT_NEXT: u32 = 1;

/// Where a sentence sits: (document, sentence within it).
pub type SentenceAt = (usize, usize);

/// Sentence A, sentence B and the label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NspPair {
    /// Sentence A.
    pub a: SentenceAt,
    /// Sentence B: A's successor, or a sentence of another document.
    pub b: SentenceAt,
    /// [`IS_NEXT`] (0) or [`NOT_NEXT`] (1).
    pub label: u32,
}

/// The documents of a file: runs of non-blank lines, split at blank lines. Fewer than two documents is an
/// error (a "random" B must come from another document).
pub fn read_documents(path: &Path) -> Result<Vec<Vec<String>>> {
    let mut documents: Vec<Vec<String>> = vec![vec![]];
    for line in read_lines(path)? {
        match (line.trim().is_empty(), documents.last_mut()) {
            (true, Some(last)) if !last.is_empty() => documents.push(vec![]),
            (false, Some(last)) => last.push(line),
            _ => {}
        }
    }
    documents.retain(|d| !d.is_empty());
    if documents.len() < 2 {
        let message = format!(
            "{} document(s): next-sentence prediction needs at least two documents separated by a blank line \
             (one sentence per line), to draw random sentences from another document",
            documents.len()
        );
        return Err(Error::input(path, None, message));
    }
    Ok(documents)
}

/// One pair for every sentence that has a successor, B drawn as the module doc says. `sizes[d]` is the number
/// of sentences of document d; at least two documents must be non-empty.
pub fn draw_pairs(sizes: &[usize], rng: &mut Rng) -> Vec<NspPair> {
    let others: Vec<usize> = (0..sizes.len()).filter(|&d| sizes[d] > 0).collect();
    let mut pairs = Vec::new();
    for (d, &n) in sizes.iter().enumerate() {
        for i in 0..n.saturating_sub(1) {
            let pair = if rng.random::<bool>() {
                NspPair { a: (d, i), b: (d, i + 1), label: IS_NEXT }
            } else {
                NspPair { a: (d, i), b: random_elsewhere(sizes, &others, d, rng), label: NOT_NEXT }
            };
            pairs.push(pair);
        }
    }
    pairs
}

/// A uniformly chosen non-empty document other than `d`, then a uniformly chosen sentence of it.
fn random_elsewhere(sizes: &[usize], non_empty: &[usize], d: usize, rng: &mut Rng) -> SentenceAt {
    loop {
        let other = non_empty[rng.random_range(0..non_empty.len())];
        if other != d {
            return (other, rng.random_range(0..sizes[other]));
        }
    }
}

/// \[CLS\] A \[SEP\] B \[SEP\] and its token_type_ids (0 through the first \[SEP\], 1 after), at most `max_length`
/// tokens: the longer sentence loses its last token until the pair fits (transformers' `longest_first`;
/// ties cut A). `max_length` must be at least 3.
pub fn pack(a: &[u32], b: &[u32], cls: u32, sep: u32, max_length: usize) -> (Vec<u32>, Vec<u32>) {
    let budget = max_length.saturating_sub(3);
    let (mut na, mut nb) = (a.len(), b.len());
    while na + nb > budget {
        if na >= nb {
            na -= 1;
        } else {
            nb -= 1;
        }
    }
    let mut ids = Vec::with_capacity(na + nb + 3);
    ids.push(cls);
    ids.extend_from_slice(&a[..na]);
    ids.push(sep);
    let first = ids.len();
    ids.extend_from_slice(&b[..nb]);
    ids.push(sep);
    let segments = (0..ids.len()).map(|i| u32::from(i >= first)).collect();
    (ids, segments)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn half_the_pairs_are_true_successors_and_random_ones_come_from_other_documents() {
        let sizes: Vec<usize> = (0..400).map(|d| 1 + d % 9).collect();
        let mut rng = Rng::seed_from_u64(7);
        let pairs = draw_pairs(&sizes, &mut rng);
        // Every sentence with a successor is an A exactly once.
        assert_eq!(pairs.len(), sizes.iter().map(|n| n - 1).sum::<usize>());
        let next = pairs.iter().filter(|p| p.label == IS_NEXT).count() as f64 / pairs.len() as f64;
        // About 1 400 pairs: 3 standard deviations of a fair coin's share are 0.04.
        assert!((next - 0.5).abs() < 0.04, "IsNext share {next}");
        for p in &pairs {
            if p.label == IS_NEXT {
                assert_eq!(p.b, (p.a.0, p.a.1 + 1));
            } else {
                assert_ne!(p.b.0, p.a.0, "a random B from A's own document: {p:?}");
                assert!(p.b.1 < sizes[p.b.0]);
            }
        }
        // Seeded: the same generator gives the same pairs.
        assert_eq!(pairs, draw_pairs(&sizes, &mut Rng::seed_from_u64(7)));
    }

    #[test]
    fn random_sentences_skip_empty_documents() {
        let mut rng = Rng::seed_from_u64(1);
        for p in draw_pairs(&[3, 0, 2], &mut rng) {
            assert_ne!(p.b.0, 1);
        }
    }

    #[test]
    fn packing_marks_segments_and_truncates_longest_first() {
        let (ids, segments) = pack(&[10, 11], &[20, 21, 22], 2, 3, 16);
        assert_eq!(ids, [2, 10, 11, 3, 20, 21, 22, 3]);
        assert_eq!(segments, [0, 0, 0, 0, 1, 1, 1, 1]);
        let a: Vec<u32> = (100..120).collect();
        let b: Vec<u32> = (200..205).collect();
        let (ids, segments) = pack(&a, &b, 2, 3, 12);
        assert_eq!(ids.len(), 12);
        // B (5 tokens) is longer than what is left of A only once A is down to 4 tokens: 4 + 5 = 9 = 12 − 3.
        assert_eq!(ids, [2, 100, 101, 102, 103, 3, 200, 201, 202, 203, 204, 3]);
        assert_eq!(segments, [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1]);
        for max in 3..30 {
            let (ids, segments) = pack(&a, &b, 2, 3, max);
            assert!(ids.len() <= max, "{max}");
            assert_eq!((ids[0], ids.last().copied()), (2, Some(3)));
            assert_eq!(ids.iter().filter(|&&t| t == 3).count(), 2, "two [SEP] at max_length {max}");
            let first_b = segments.iter().position(|&s| s == 1).unwrap();
            assert_eq!(ids[first_b - 1], 3, "segment 1 starts right after the first [SEP]");
        }
    }

    #[test]
    fn one_document_is_refused_naming_the_file() {
        let path = std::env::temp_dir().join(format!("qkv-nsp-one-doc-{}.txt", std::process::id()));
        std::fs::write(&path, "a sentence.\nanother one.\n\n\n").unwrap();
        let err = read_documents(&path).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()) && err.contains("two documents"), "{err}");
        std::fs::write(&path, "one.\ntwo.\n\n  \nthree.\n").unwrap();
        assert_eq!(read_documents(&path).unwrap(), [vec!["one.", "two."], vec!["three."]]);
        std::fs::remove_file(&path).unwrap();
    }
}
