//! Sentence embeddings and their cosine similarities with the library's `Embedder`.
//!
//!     cargo run --release --example embed [MODEL_DIR]
//!
//! MODEL_DIR is a sentence-transformers directory (all-MiniLM-L6-v2 from tools/models/fetch_minilm.sh, say);
//! without it the example uses the tiny random model committed as a test fixture, whose similarities mean
//! nothing but show the calls.

use std::path::PathBuf;

use candle_core::Device;
use qkv::inference::Embedder;

fn main() -> anyhow::Result<()> {
    let dir = std::env::args().nth(1).map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pytorch/sentence-transformers")
    });
    let embedder = Embedder::load(&dir, &Device::Cpu)?;
    let sentences = ["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell today."];
    // (sentences, dimension), normalised when the model's modules.json says so
    let embeddings = embedder.embed(&sentences, 32)?.to_vec2::<f32>()?;
    println!("{} sentences → {} dimensions from {}", sentences.len(), embedder.dimension(), dir.display());
    for (i, a) in embeddings.iter().enumerate() {
        let row: Vec<String> = embeddings.iter().map(|b| format!("{:6.3}", cosine(a, b))).collect();
        println!("{} {}", row.join(" "), sentences[i]);
    }
    Ok(())
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}
