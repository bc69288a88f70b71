//! Continuation of a prompt with the library's `Generator` (GPT-2 over a key/value cache), streamed.
//!
//!     cargo run --release --example generate [MODEL_DIR] [PROMPT]
//!
//! MODEL_DIR is a GPT-2 directory with tokenizer.json (openai-community/gpt2's files, say); without it the
//! example uses the tiny character-level model qkv trained for its tests (tests/fixtures/gpt2/qkv-trained).

use std::io::Write;
use std::path::PathBuf;

use candle_core::Device;
use qkv::decode::generate::GenerateOptions;
use qkv::inference::Generator;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gpt2/qkv-trained"));
    let prompt = args.next().unwrap_or_else(|| "the ".to_string());
    let generator = Generator::load(&dir, &Device::Cpu)?;
    let ids = generator.encode(&prompt)?;
    // Sampled (temperature 0.8 among the 20 likeliest tokens, seeded): the tiny default model repeats a
    // newline when decoded greedily. `greedy: true` gives transformers' do_sample=False.
    let options = GenerateOptions {
        max_new_tokens: 60,
        temperature: 0.8,
        top_k: Some(20),
        seed: 1,
        ..GenerateOptions::default()
    };
    // Written through a locked handle, not print!, so that a closed pipe (`| head`) is an error, not a panic.
    let mut out = std::io::stdout().lock();
    let write = |out: &mut std::io::StdoutLock, text: &str| {
        out.write_all(text.as_bytes()).and_then(|()| out.flush()).map_err(|e| qkv::Error::io("<stdout>", e))
    };
    write(&mut out, &prompt)?;
    let completion = generator.complete(&ids, &options, &[], |piece| write(&mut out, piece))?;
    let summary = format!(
        "\n({} prompt tokens, {} generated, stop: {:?})\n",
        ids.len(),
        completion.generated_ids.len(),
        completion.stop
    );
    write(&mut out, &summary)?;
    Ok(())
}
