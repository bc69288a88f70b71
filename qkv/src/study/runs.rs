//! The runs a study trains: variants of the built-in reversal task, each trained once per seed and kept as
//! JSON under `DIR/runs/` (keyed by its whole configuration), with the attention statistics of the trained
//! model measured on held-out sequences.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::atomic_file::write_atomically;
use crate::models::AttentionMaps;
use crate::train::fingerprint::{fnv1a, FNV1A_EMPTY};
use crate::train::synthetic::{self, SyntheticConfig, Task};
use crate::{Error, Result};

/// How a study runs.
#[derive(Debug, Clone)]
pub struct StudyOptions {
    /// Seeds of every trained variant (at least three for a real study).
    pub seeds: Vec<u64>,
    /// A seconds-long smoke run: the first seed only, a few steps and draws. Its numbers mean nothing.
    pub quick: bool,
    /// Called with true before a peak-memory measurement and with false after it: the allocator should hand
    /// freed memory back to the OS at once in between, or memory it keeps mapped for reuse hides the
    /// measurement's allocations (the CLI's mimalloc does keep it).
    pub release_memory: Option<fn(bool)>,
    /// Where the questions on real text and checkpoints find them.
    pub data: StudyData,
}

impl Default for StudyOptions {
    fn default() -> Self {
        Self { seeds: vec![1, 2, 3], quick: false, release_memory: None, data: StudyData::default() }
    }
}

/// The data and checkpoint the `bert` and `tokenizers` questions read (nothing is downloaded).
#[derive(Debug, Clone)]
pub struct StudyData {
    /// A sentence-transformers all-MiniLM-L6-v2 directory (tools/models/fetch_minilm.sh).
    pub minilm: PathBuf,
    /// STS-B: `train.csv` and `dev.csv` (sentence1, sentence2, score).
    pub stsb: PathBuf,
    /// Multi30k: `train.en`, `train.de`, `val.*`, `test_2016_flickr.*`.
    pub multi30k: PathBuf,
}

impl Default for StudyData {
    fn default() -> Self {
        Self {
            minilm: PathBuf::from("all-MiniLM-L6-v2"),
            stsb: PathBuf::from("../shared/data/stsb"),
            multi30k: PathBuf::from("../shared/data/multi30k"),
        }
    }
}

/// A study in progress: its options, its report directory and the progress messages it prints.
pub struct Study {
    options: StudyOptions,
    dir: PathBuf,
    progress: Box<dyn FnMut(&str)>,
}

/// Loss is kept every this many steps.
const LOSS_EVERY: usize = 10;
/// Held-out sequences the attention statistics average over.
const STATISTICS_BATCH: usize = 256;

impl Study {
    /// A study writing into `dir` (created, with `dir/runs/`), telling `progress` what it does.
    pub fn new(dir: &Path, options: StudyOptions, progress: impl FnMut(&str) + 'static) -> Result<Self> {
        if options.seeds.is_empty() {
            return Err(Error::config("seeds", "none", "at least one seed"));
        }
        std::fs::create_dir_all(dir.join("runs")).map_err(|e| Error::io(dir.join("runs"), e))?;
        Ok(Self { options, dir: dir.to_path_buf(), progress: Box::new(progress) })
    }

    /// Whether this is a quick smoke run (first seed only, few steps and draws; its numbers mean nothing).
    pub fn quick(&self) -> bool {
        self.options.quick
    }

    /// The seeds trained variants run with: all of them, or the first in a quick run.
    pub fn seeds(&self) -> Vec<u64> {
        if self.options.quick {
            self.options.seeds[..1].to_vec()
        } else {
            self.options.seeds.clone()
        }
    }

    /// Where the real data and checkpoints are.
    pub fn data(&self) -> &StudyData {
        &self.options.data
    }

    /// A directory under `runs/` for what a question writes besides its results (a trained model, a text).
    pub fn scratch_dir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.dir.join("runs").join(name);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(dir)
    }

    /// `compute()`'s result, or the one kept under `runs/` by an earlier call with the same `key` (any
    /// serializable description of everything the result depends on), so that a stopped study continues;
    /// `label` says what is computed.
    pub fn kept<K, T>(&mut self, label: &str, key: &K, compute: impl FnOnce(&mut Self) -> Result<T>) -> Result<T>
    where
        K: Serialize,
        T: Serialize + for<'de> Deserialize<'de>,
    {
        let key = serde_json::to_string(key).map_err(|e| Error::config("study run", label, e))?;
        let path = self.dir.join("runs").join(format!("{:016x}.json", fnv1a(FNV1A_EMPTY, key.as_bytes())));
        if let Ok(bytes) = std::fs::read(&path) {
            if let Ok(kept) = serde_json::from_slice::<Kept<T>>(&bytes) {
                if kept.config == key {
                    return Ok(kept.result);
                }
            }
        }
        self.say(label);
        let result = compute(self)?;
        let kept = Kept { config: key, result };
        let json = serde_json::to_vec(&kept).map_err(|e| Error::input(&path, None, e))?;
        write_atomically(&path, &json)?;
        Ok(kept.result)
    }

    /// Where a figure of the report goes.
    pub fn figure(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// Runs `f` with freed memory handed back to the OS at once (see [`StudyOptions::release_memory`]).
    pub fn with_memory_released<R>(&self, f: impl FnOnce() -> R) -> R {
        let toggle = self.options.release_memory.unwrap_or(|_| {});
        toggle(true);
        let result = f();
        toggle(false);
        result
    }

    /// Tells the user what the study is doing.
    pub fn say(&mut self, message: &str) {
        (self.progress)(message)
    }

    /// The task every trained question starts from: reversing strings of 3–8 digits with a 1 + 1-layer,
    /// 64-wide, 4-head Transformer, 800 Adam steps of 64 sequences (as `SyntheticConfig::default()`), on two
    /// data-parallel shards whatever the machine, so that the numbers do not depend on its core count.
    pub fn task(&self) -> SyntheticConfig {
        let mut config = SyntheticConfig { task: Task::Reverse, ..SyntheticConfig::default() };
        config.run.shards = 2;
        if self.options.quick {
            config.run.max_steps = Some(20);
            config.eval_size = 32;
        }
        config
    }

    /// `config` trained once per seed (its own seed replaced), each run read from `runs/` when it is there.
    pub fn train_seeds(&mut self, label: &str, config: &SyntheticConfig) -> Result<Vec<RunResult>> {
        self.seeds().into_iter().map(|seed| self.train(label, config, seed)).collect()
    }

    /// Each layer's gradient norm at initialisation ([`synthetic::gradient_norms_at_init`]), once per seed.
    pub fn gradient_norms_per_seed(&self, config: &SyntheticConfig) -> Result<Vec<Vec<(String, f64)>>> {
        self.seeds()
            .into_iter()
            .map(|seed| {
                let mut seeded = config.clone();
                seeded.run.seed = seed;
                synthetic::gradient_norms_at_init(&seeded)
            })
            .collect()
    }

    /// `config` with `seed`, trained, or read back from `runs/` when an earlier run of the same configuration
    /// finished.
    pub fn train(&mut self, label: &str, config: &SyntheticConfig, seed: u64) -> Result<RunResult> {
        let mut config = config.clone();
        config.run.seed = seed;
        self.kept(&format!("training {label}, seed {seed}"), &config, |_| train_and_measure(&config))
    }
}

/// What `runs/*.json` holds: the key it was computed for (the configuration as trained, to tell hash
/// collisions and edits apart) and the result.
#[derive(Serialize, Deserialize)]
struct Kept<T> {
    config: String,
    result: T,
}

/// One trained variant with one seed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    /// The seed of the run.
    pub seed: u64,
    /// Held-out sequences reversed exactly right (greedy decoding), as a fraction.
    pub exact_match: f64,
    /// The same for strings longer than any trained on, when the config asked for them.
    #[serde(default)]
    pub longer_exact_match: Option<f64>,
    /// Training loss of the last step.
    pub final_loss: f64,
    /// (step, training loss) every ten steps.
    pub losses: Vec<(usize, f64)>,
    /// Optimizer steps taken.
    pub steps: usize,
    /// Wall-clock seconds of training.
    pub train_seconds: f64,
    /// Trainable parameters (scalars) of the model.
    pub parameters: usize,
    /// How the trained model attends, averaged over held-out sequences.
    pub attention: AttentionStats,
    /// Every attention map of the trained model on the first held-out sequence, for the heatmaps.
    #[serde(default)]
    pub example: AttentionExample,
}

impl RunResult {
    /// Held-out exact match in percent.
    pub fn exact_match_percent(&self) -> f64 {
        100.0 * self.exact_match
    }

    /// Training time per optimizer step, in milliseconds.
    pub fn ms_per_step(&self) -> f64 {
        1000.0 * self.train_seconds / self.steps.max(1) as f64
    }

    /// The first kept step whose loss is below `threshold`, if any: how fast a variant learns.
    pub fn steps_to_loss(&self, threshold: f64) -> Option<usize> {
        self.losses.iter().find(|(_, loss)| *loss < threshold).map(|(step, _)| *step)
    }
}

fn train_and_measure(config: &SyntheticConfig) -> Result<RunResult> {
    let mut losses = Vec::new();
    let (report, model) = synthetic::train(config, |record| {
        if record.step % LOSS_EVERY == 0 {
            losses.push((record.step, record.loss));
        }
    })?;
    let (src, src_valid, tgt_in) = synthetic::held_out_batch(config, STATISTICS_BATCH, &Device::Cpu)?;
    let maps = model.all_attention_maps(&src, &src_valid, &tgt_in)?;
    let attention = AttentionStats::measure(&maps, &src_valid, config)?;
    let example = AttentionExample::first(&maps, &src, &src_valid, &tgt_in)?;
    Ok(RunResult {
        seed: config.run.seed,
        exact_match: report.exact_match_rate(),
        longer_exact_match: report.longer_exact_match,
        final_loss: report.final_loss,
        losses,
        steps: report.steps,
        train_seconds: report.train_seconds,
        parameters: report.parameters,
        attention,
        example,
    })
}

/// How a trained model attends, averaged over held-out sequences and their valid positions.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AttentionStats {
    /// Per encoder layer and head: the entropy (nats) of a query's weights over the valid keys.
    pub encoder_entropy: Vec<Vec<f64>>,
    /// Per encoder layer and head: the weight a query puts on its own position.
    pub encoder_self_mass: Vec<Vec<f64>>,
    /// Per encoder layer: the Jensen–Shannon divergence (nats) between two heads' weights for the same query,
    /// averaged over queries and head pairs; 0 with one head. ln 2 = 0.69 is the most two distributions can
    /// differ.
    pub encoder_head_divergence: Vec<f64>,
    /// Per decoder layer and head: the cross-attention weight an output position puts on the source position
    /// it has to reproduce (the mirrored one, for reversal).
    pub cross_alignment: Vec<Vec<f64>>,
    /// Per decoder layer and head: the entropy of the cross-attention weights.
    pub cross_entropy: Vec<Vec<f64>>,
    /// The entropy of uniform weights over the valid keys, averaged like the others: the most there can be.
    pub uniform_entropy: f64,
}

impl AttentionStats {
    fn measure(maps: &AttentionMaps, src_valid: &Tensor, config: &SyntheticConfig) -> Result<Self> {
        let lengths: Vec<usize> = src_valid
            .to_dtype(candle_core::DType::F32)?
            .sum(1)?
            .to_vec1::<f32>()?
            .into_iter()
            .map(|n| n as usize)
            .collect();
        let uniform = lengths.iter().map(|&n| (n as f64).ln()).sum::<f64>() / lengths.len().max(1) as f64;
        let mut stats = Self { uniform_entropy: uniform, ..Self::default() };
        for weights in &maps.encoder {
            let w = Weights::new(weights)?;
            let per_head = |f: &dyn Fn(&[f32], usize) -> f64| -> Vec<f64> {
                (0..w.heads).map(|h| w.mean_over_queries(&lengths, h, |row, i, _| f(row, i))).collect()
            };
            stats.encoder_entropy.push(per_head(&|row, _| entropy(row)));
            stats.encoder_self_mass.push(per_head(&|row, i| f64::from(row[i])));
            stats.encoder_head_divergence.push(w.head_divergence(&lengths));
        }
        let target = |i: usize, n: usize| match config.task {
            Task::Reverse => n - 1 - i,
            Task::Copy => i,
        };
        for layer in &maps.decoder {
            let w = Weights::new(&layer.cross_attn)?;
            let (mut alignment, mut entropies) = (vec![], vec![]);
            for h in 0..w.heads {
                // Output positions 0 .. n−1 each reproduce one source token; position n emits EOS.
                alignment.push(w.mean_over_queries(&lengths, h, |row, i, n| f64::from(row[target(i, n)])));
                entropies.push(w.mean_over_queries(&lengths, h, |row, _, _| entropy(row)));
            }
            stats.cross_alignment.push(alignment);
            stats.cross_entropy.push(entropies);
        }
        Ok(stats)
    }

    /// The mean over layers and heads of `per_head`.
    pub fn mean(per_head: &[Vec<f64>]) -> f64 {
        let all: Vec<f64> = per_head.iter().flatten().copied().collect();
        all.iter().sum::<f64>() / all.len().max(1) as f64
    }
}

/// One held-out sequence's attention maps, `[layer][head][query][key]`, cut to its real positions, with its tokens.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AttentionExample {
    /// The source symbols (keys of the encoder and of the cross-attention).
    pub source_tokens: Vec<String>,
    /// What the decoder reads: BOS, then the target (keys of its self-attention).
    pub read_tokens: Vec<String>,
    /// What each decoder position predicts: the target, then EOS (queries of the decoder's attentions).
    pub predicted_tokens: Vec<String>,
    /// Encoder self-attention maps, `[layer][head][query][key]` over the source.
    pub encoder: Vec<Vec<Vec<Vec<f32>>>>,
    /// Decoder self-attention maps, `[layer][head][query][key]` over what the decoder reads.
    pub decoder_self: Vec<Vec<Vec<Vec<f32>>>>,
    /// Cross-attention maps, `[layer][head][query][key]`: decoder queries over source keys.
    pub cross: Vec<Vec<Vec<Vec<f32>>>>,
}

impl AttentionExample {
    /// The first sequence of a held-out batch (sources `src` (B, S) with validity `src_valid`, decoder inputs
    /// `tgt_in` (B, T) behind BOS) and its `maps`.
    fn first(maps: &AttentionMaps, src: &Tensor, src_valid: &Tensor, tgt_in: &Tensor) -> Result<Self> {
        let n = src_valid.get(0)?.to_dtype(candle_core::DType::F32)?.sum_all()?.to_scalar::<f32>()? as usize;
        let source = src.get(0)?.narrow(0, 0, n)?.to_vec1::<u32>()?;
        // The target has as many symbols as the source; the decoder reads BOS + target and predicts target + EOS.
        let read = tgt_in.get(0)?.narrow(0, 0, n + 1)?.to_vec1::<u32>()?;
        let cut = |w: &Tensor, queries: usize, keys: usize| -> Result<Vec<Vec<Vec<f32>>>> {
            Ok(w.get(0)?.narrow(1, 0, queries)?.narrow(2, 0, keys)?.to_vec3::<f32>()?)
        };
        let symbols = |ids: &[u32]| ids.iter().map(|&id| synthetic::symbol_label(id)).collect::<Vec<_>>();
        let mut predicted = symbols(&read[1..]);
        predicted.push(synthetic::symbol_label(synthetic::EOS));
        Ok(Self {
            source_tokens: symbols(&source),
            read_tokens: symbols(&read),
            predicted_tokens: predicted,
            encoder: maps.encoder.iter().map(|w| cut(w, n, n)).collect::<Result<_>>()?,
            decoder_self: maps.decoder.iter().map(|l| cut(&l.self_attn, n + 1, n + 1)).collect::<Result<_>>()?,
            cross: maps.decoder.iter().map(|l| cut(&l.cross_attn, n + 1, n)).collect::<Result<_>>()?,
        })
    }
}

/// Attention weights (B, H, Q, K) as host numbers.
struct Weights {
    data: Vec<f32>,
    heads: usize,
    queries: usize,
    keys: usize,
}

impl Weights {
    fn new(weights: &Tensor) -> Result<Self> {
        let (_, heads, queries, keys) = weights.dims4()?;
        Ok(Self { data: weights.flatten_all()?.to_vec1::<f32>()?, heads, queries, keys })
    }

    /// The weights of query `i` of head `h` in sequence `b`, over its `n` valid keys.
    fn row(&self, b: usize, h: usize, i: usize, n: usize) -> &[f32] {
        let start = ((b * self.heads + h) * self.queries + i) * self.keys;
        &self.data[start..start + n]
    }

    /// The mean of `f(row, i, n)` over every sequence b (of `lengths[b]` = n valid positions) and its first n
    /// queries.
    fn mean_over_queries(&self, lengths: &[usize], h: usize, f: impl Fn(&[f32], usize, usize) -> f64) -> f64 {
        let (mut sum, mut count) = (0.0, 0usize);
        for (b, &n) in lengths.iter().enumerate() {
            for i in 0..n.min(self.queries) {
                sum += f(self.row(b, h, i, n), i, n);
                count += 1;
            }
        }
        sum / count.max(1) as f64
    }

    fn head_divergence(&self, lengths: &[usize]) -> f64 {
        let (mut sum, mut count) = (0.0, 0usize);
        for (b, &n) in lengths.iter().enumerate() {
            for i in 0..n.min(self.queries) {
                for h1 in 0..self.heads {
                    for h2 in h1 + 1..self.heads {
                        sum += jensen_shannon(self.row(b, h1, i, n), self.row(b, h2, i, n));
                        count += 1;
                    }
                }
            }
        }
        sum / count.max(1) as f64
    }
}

/// −Σ p ln p, in nats.
pub fn entropy(p: &[f32]) -> f64 {
    p.iter().map(|&x| f64::from(x)).filter(|&x| x > 0.0).map(|x| -x * x.ln()).sum()
}

/// JS(p, q) = ½ KL(p ‖ m) + ½ KL(q ‖ m) with m = (p + q) / 2, in nats.
pub fn jensen_shannon(p: &[f32], q: &[f32]) -> f64 {
    let kl_to_mean = |a: f64, b: f64| if a > 0.0 { a * (2.0 * a / (a + b)).ln() } else { 0.0 };
    p.iter()
        .zip(q)
        .map(|(&a, &b)| (f64::from(a), f64::from(b)))
        .map(|(a, b)| 0.5 * (kl_to_mean(a, b) + kl_to_mean(b, a)))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_and_divergence_of_known_distributions() {
        assert!((entropy(&[0.25; 4]) - 4f64.ln()).abs() < 1e-6);
        assert_eq!(entropy(&[1.0, 0.0]), 0.0);
        // Disjoint supports differ by ln 2; a distribution does not differ from itself.
        assert!((jensen_shannon(&[1.0, 0.0], &[0.0, 1.0]) - 2f64.ln()).abs() < 1e-9);
        assert!(jensen_shannon(&[0.3, 0.7], &[0.3, 0.7]).abs() < 1e-12);
    }
}
