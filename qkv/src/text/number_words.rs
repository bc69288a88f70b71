//! The README demo's built-in translation task: English number words to German number words.
//!
//! "four hundred twenty-two" → "vierhundertzweiundzwanzig". The task needs no data files, yet it has what
//! makes translation hard in miniature: German names the units before the tens ("zwei-und-zwanzig") so the
//! model must reorder, and writes the number as one word, which the subword tokenizer has to split.

use std::collections::HashSet;
use std::ops::Range;

use rand::Rng;

use crate::{Error, Result};

/// The largest number with a name here.
pub const MAX: u32 = 999_999;

/// A number with its English and German names.
pub type NumberPair = (u32, String, String);

const ENGLISH_UNITS: [&str; 20] = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
];
const ENGLISH_TENS: [&str; 10] = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"];

/// German 0–19, with "ein" for 1: the form inside compounds ("einhundert", "einundzwanzig").
const GERMAN_UNITS: [&str; 20] = [
    "null",
    "ein",
    "zwei",
    "drei",
    "vier",
    "fünf",
    "sechs",
    "sieben",
    "acht",
    "neun",
    "zehn",
    "elf",
    "zwölf",
    "dreizehn",
    "vierzehn",
    "fünfzehn",
    "sechzehn",
    "siebzehn",
    "achtzehn",
    "neunzehn",
];
const GERMAN_TENS: [&str; 10] =
    ["", "", "zwanzig", "dreißig", "vierzig", "fünfzig", "sechzig", "siebzig", "achtzig", "neunzig"];

/// English words for `n` in 0..=999 999, American style without "and": "one thousand three hundred five",
/// "twenty-one".
pub fn english(n: u32) -> Result<String> {
    check_range(n)?;
    let (thousands, rest) = (n / 1000, n % 1000);
    Ok(match (thousands, rest) {
        (0, _) => english_below_thousand(rest),
        (_, 0) => format!("{} thousand", english_below_thousand(thousands)),
        _ => format!("{} thousand {}", english_below_thousand(thousands), english_below_thousand(rest)),
    })
}

/// German words for `n` in 0..=999 999, written as one word: "eintausenddreihundertfünf",
/// "einundzwanzigtausendeinundzwanzig". A final lone one is "eins" ("einhunderteins"), elsewhere "ein".
pub fn german(n: u32) -> Result<String> {
    check_range(n)?;
    if n == 0 {
        return Ok(GERMAN_UNITS[0].to_string());
    }
    let (thousands, rest) = (n / 1000, n % 1000);
    let mut words = String::new();
    if thousands > 0 {
        words += &german_below_thousand(thousands);
        words += "tausend";
    }
    if rest > 0 {
        words += &german_below_thousand(rest);
        if rest % 100 == 1 {
            words += "s"; // "eins" when the one stands last and alone: 1, 101, 1001, not 21
        }
    }
    Ok(words)
}

/// `count` distinct numbers drawn uniformly from `range`, in random order, with their English and German
/// names. Errors when the range reaches past [`MAX`] or holds fewer than `count` numbers.
pub fn pairs<R: Rng + ?Sized>(range: Range<u32>, count: usize, rng: &mut R) -> Result<Vec<NumberPair>> {
    if range.end > MAX + 1 {
        return Err(Error::config("number range", format!("{range:?}"), format!("a range within 0..{}", MAX + 1)));
    }
    let available = range.len();
    if count > available {
        return Err(Error::config("number count", count, format!("at most {available}, the size of {range:?}")));
    }
    rand::seq::index::sample(rng, available, count)
        .into_iter()
        .map(|offset| {
            let n = range.start + offset as u32; // offset < range.len(), so this stays below range.end
            Ok((n, english(n)?, german(n)?))
        })
        .collect()
}

/// Splits a sample into (training, held-out): the last `held_out` pairs are held out, and no number of theirs
/// stays in the training part, so the demo is evaluated on numbers it never trained on.
pub fn split_held_out(mut pairs: Vec<NumberPair>, held_out: usize) -> Result<(Vec<NumberPair>, Vec<NumberPair>)> {
    if held_out > pairs.len() {
        return Err(Error::config("held-out count", held_out, format!("at most {}, the sample size", pairs.len())));
    }
    let held = pairs.split_off(pairs.len() - held_out);
    // The sample from `pairs` is distinct already; this keeps the split disjoint for any input.
    let held_numbers: HashSet<u32> = held.iter().map(|(n, _, _)| *n).collect();
    pairs.retain(|(n, _, _)| !held_numbers.contains(n));
    Ok((pairs, held))
}

fn check_range(n: u32) -> Result<()> {
    if n > MAX {
        return Err(Error::OutOfRange { what: "number", found: i64::from(n), expected: format!("0..={MAX}") });
    }
    Ok(())
}

/// 0..=999 in English; 0 only as "zero" when alone, which `english` guarantees.
fn english_below_thousand(n: u32) -> String {
    let (hundreds, rest) = (n / 100, n % 100);
    match (hundreds, rest) {
        (0, _) => english_below_hundred(rest),
        (_, 0) => format!("{} hundred", ENGLISH_UNITS[hundreds as usize]),
        _ => format!("{} hundred {}", ENGLISH_UNITS[hundreds as usize], english_below_hundred(rest)),
    }
}

fn english_below_hundred(n: u32) -> String {
    let (tens, units) = (n as usize / 10, n as usize % 10);
    match (tens, units) {
        (0 | 1, _) => ENGLISH_UNITS[n as usize].to_string(),
        (_, 0) => ENGLISH_TENS[tens].to_string(),
        _ => format!("{}-{}", ENGLISH_TENS[tens], ENGLISH_UNITS[units]),
    }
}

/// 1..=999 in German, in compound form ("ein" for a final 1; `german` appends the "s" where it stands alone).
fn german_below_thousand(n: u32) -> String {
    let (hundreds, rest) = (n as usize / 100, n % 100);
    let mut words = String::new();
    if hundreds > 0 {
        words += GERMAN_UNITS[hundreds];
        words += "hundert";
    }
    if rest > 0 {
        words += &german_below_hundred(rest);
    }
    words
}

/// 1..=99: units before tens, joined by "und" ("einundzwanzig").
fn german_below_hundred(n: u32) -> String {
    let (tens, units) = (n as usize / 10, n as usize % 10);
    match (tens, units) {
        (0 | 1, _) => GERMAN_UNITS[n as usize].to_string(),
        (_, 0) => GERMAN_TENS[tens].to_string(),
        _ => format!("{}und{}", GERMAN_UNITS[units], GERMAN_TENS[tens]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::mode::Rng as Xoshiro;
    use rand::SeedableRng;

    const SPOT_CHECKS: [(u32, &str, &str); 36] = [
        (0, "zero", "null"),
        (1, "one", "eins"),
        (7, "seven", "sieben"),
        (10, "ten", "zehn"),
        (11, "eleven", "elf"),
        (12, "twelve", "zwölf"),
        (16, "sixteen", "sechzehn"),
        (17, "seventeen", "siebzehn"),
        (20, "twenty", "zwanzig"),
        (21, "twenty-one", "einundzwanzig"),
        (30, "thirty", "dreißig"),
        (31, "thirty-one", "einunddreißig"),
        (40, "forty", "vierzig"),
        (60, "sixty", "sechzig"),
        (66, "sixty-six", "sechsundsechzig"),
        (70, "seventy", "siebzig"),
        (77, "seventy-seven", "siebenundsiebzig"),
        (99, "ninety-nine", "neunundneunzig"),
        (100, "one hundred", "einhundert"),
        (101, "one hundred one", "einhunderteins"),
        (111, "one hundred eleven", "einhundertelf"),
        (121, "one hundred twenty-one", "einhunderteinundzwanzig"),
        (200, "two hundred", "zweihundert"),
        (422, "four hundred twenty-two", "vierhundertzweiundzwanzig"),
        (999, "nine hundred ninety-nine", "neunhundertneunundneunzig"),
        (1000, "one thousand", "eintausend"),
        (1001, "one thousand one", "eintausendeins"),
        (1100, "one thousand one hundred", "eintausendeinhundert"),
        (1305, "one thousand three hundred five", "eintausenddreihundertfünf"),
        (2021, "two thousand twenty-one", "zweitausendeinundzwanzig"),
        (21_021, "twenty-one thousand twenty-one", "einundzwanzigtausendeinundzwanzig"),
        (99_999, "ninety-nine thousand nine hundred ninety-nine", "neunundneunzigtausendneunhundertneunundneunzig"),
        (100_000, "one hundred thousand", "einhunderttausend"),
        (101_101, "one hundred one thousand one hundred one", "einhunderteintausendeinhunderteins"),
        (317_000, "three hundred seventeen thousand", "dreihundertsiebzehntausend"),
        (
            999_999,
            "nine hundred ninety-nine thousand nine hundred ninety-nine",
            "neunhundertneunundneunzigtausendneunhundertneunundneunzig",
        ),
    ];

    #[test]
    fn spot_checks_in_both_languages() {
        for (n, en, de) in SPOT_CHECKS {
            assert_eq!(english(n).unwrap(), en, "{n}");
            assert_eq!(german(n).unwrap(), de, "{n}");
        }
    }

    #[test]
    fn every_number_has_distinct_well_formed_names() {
        let mut seen_en = HashSet::new();
        let mut seen_de = HashSet::new();
        for n in 0..=MAX {
            let (en, de) = (english(n).unwrap(), german(n).unwrap());
            assert!(!en.contains("  ") && !en.starts_with(' ') && !en.ends_with(' ') && !en.contains("zero") || n == 0);
            assert!(!de.contains(' ') && !de.contains("null") || n == 0, "{n}: {de}");
            assert!(!de.ends_with("ein"), "{n}: {de}");
            assert!(seen_en.insert(en) && seen_de.insert(de), "{n}");
        }
    }

    #[test]
    fn out_of_range_names_the_value() {
        let err = english(1_000_000).unwrap_err().to_string();
        assert!(err.contains("1000000"), "{err}");
        assert!(german(u32::MAX).unwrap_err().to_string().contains(&u32::MAX.to_string()));
    }

    #[test]
    fn pairs_are_distinct_in_range_and_seeded() {
        let sample = pairs(1000..3000, 500, &mut Xoshiro::seed_from_u64(1)).unwrap();
        assert_eq!(sample.len(), 500);
        let numbers: HashSet<u32> = sample.iter().map(|p| p.0).collect();
        assert_eq!(numbers.len(), 500);
        assert!(numbers.iter().all(|n| (1000..3000).contains(n)));
        assert_eq!(sample[3], (sample[3].0, english(sample[3].0).unwrap(), german(sample[3].0).unwrap()));
        assert_eq!(sample, pairs(1000..3000, 500, &mut Xoshiro::seed_from_u64(1)).unwrap());
        assert_ne!(sample, pairs(1000..3000, 500, &mut Xoshiro::seed_from_u64(2)).unwrap());
        assert_eq!(pairs(0..10, 10, &mut Xoshiro::seed_from_u64(1)).unwrap().len(), 10);
        assert!(pairs(0..10, 11, &mut Xoshiro::seed_from_u64(1)).is_err());
        assert!(pairs(0..1_000_001, 1, &mut Xoshiro::seed_from_u64(1)).is_err());
    }

    #[test]
    fn held_out_numbers_are_never_trained_on() {
        let sample = pairs(0..MAX + 1, 2000, &mut Xoshiro::seed_from_u64(3)).unwrap();
        let (train, held) = split_held_out(sample, 300).unwrap();
        assert_eq!((train.len(), held.len()), (1700, 300));
        let held_numbers: HashSet<u32> = held.iter().map(|p| p.0).collect();
        assert!(train.iter().all(|p| !held_numbers.contains(&p.0)));

        let duplicated = vec![(5, "five".into(), "fünf".into()), (5, "five".into(), "fünf".into())];
        let (train, held) = split_held_out(duplicated, 1).unwrap();
        assert!(train.is_empty() && held.len() == 1);
        assert!(split_held_out(Vec::new(), 1).is_err());
    }
}
