//! PyTorch `.bin` checkpoints (tools/fixtures/make_pytorch_fixtures.py: the random BERT and GPT-2 fixtures saved by
//! transformers with `safe_serialization=False`, BertForMaskedLM in shards, and a sentence-transformers
//! directory): each loads with the outputs transformers computes from it, within 1e-5 as
//! max |qkv − reference| / max(1, max |reference|); safetensors wins where both exist; a malicious pickle (a
//! REDUCE of `os.system`) and a truncated file are errors naming the file (and the global); converting to
//! safetensors keeps every tensor bit for bit.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use qkv::hub::bert::{self, LoadOptions};
use qkv::hub::gpt2;
use qkv::inference::Embedder;
use qkv::models::bert::BertInput;
use qkv::nn::Mode;

mod support;
use support::error_scaled_to_one as error;

const TOL: f64 = 1e-5;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pytorch").join(name)
}

fn io(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name).join("io.safetensors"), &Device::Cpu).unwrap()
}

/// A scratch copy of fixture `name`, changed by `edit`.
fn variant(name: &str, tag: &str, edit: impl FnOnce(&Path)) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qkv-pytorch-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
        }
    }
    edit(&dir);
    dir
}

fn bert_outputs_match(dir: &Path, class: &str) {
    let loaded = bert::load(dir, &LoadOptions::default(), &Device::Cpu).unwrap();
    assert_eq!(loaded.model.architecture().name(), class);
    assert!(loaded.report.initialized.is_empty(), "{class}: {:?}", loaded.report);
    let io = io(class);
    let input = BertInput {
        input_ids: io["input.input_ids"].clone(),
        attention_mask: Some(io["input.attention_mask"].clone()),
        token_type_ids: Some(io["input.token_type_ids"].clone()),
    };
    let outputs = loaded.model.forward(&input, &mut Mode::Eval).unwrap();
    let expected: Vec<&str> = io.keys().filter_map(|k| k.strip_prefix("output.")).collect();
    assert_eq!(outputs.len(), expected.len(), "{class}: {:?} vs {expected:?}", outputs.keys());
    for name in expected {
        let err = error(&outputs[name], &io[&format!("output.{name}")]);
        assert!(err <= TOL, "{class} {name}: error {err:e}");
    }
}

#[test]
fn every_bert_class_loads_from_pytorch_bin() {
    let classes = [
        "BertModel",
        "BertForSequenceClassification",
        "BertForTokenClassification",
        "BertForQuestionAnswering",
        "BertForMaskedLM",
        "BertForPreTraining",
    ];
    assert!(fixture("BertForMaskedLM/pytorch_model.bin.index.json").exists(), "the sharded case");
    for class in classes {
        bert_outputs_match(&fixture(class), class);
    }
}

#[test]
fn gpt2_loads_from_pytorch_bin() {
    for name in ["GPT2Model", "GPT2LMHeadModel"] {
        let loaded = gpt2::load(&fixture(name), &Device::Cpu).unwrap();
        let io = io(name);
        let (ids, mask) = (&io["input.input_ids"], &io["input.attention_mask"]);
        let hidden = loaded.model.hidden_masked(ids, Some(mask), &mut Mode::Eval).unwrap();
        let (got, key) = match io.contains_key("output.logits") {
            true => (loaded.model.logits(&hidden).unwrap(), "output.logits"),
            false => (hidden, "output.last_hidden_state"),
        };
        let err = error(&got, &io[key]);
        assert!(err <= TOL, "{name} {key}: {err:e}");
    }
}

#[test]
fn sentence_transformers_directory_loads_from_pytorch_bin() {
    let dir = fixture("sentence-transformers");
    let encoder = Embedder::load(&dir, &Device::Cpu).unwrap();
    assert!(encoder.normalizes());
    let text = std::fs::read_to_string(dir.join("sentences.txt")).unwrap();
    let sentences: Vec<&str> = text.lines().collect();
    let got = encoder.embed(&sentences, 8).unwrap();
    let err = error(&got, &io("sentence-transformers")["embeddings"]);
    assert!(err <= TOL, "embeddings: {err:e}");
}

/// With both formats present the safetensors file is read: here the .bin beside it is garbage and the model
/// still loads with the reference outputs.
#[test]
fn safetensors_is_preferred_over_bin() {
    let safetensors = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bert/BertModel/model.safetensors");
    let dir = variant("BertModel", "both", |d| {
        std::fs::copy(&safetensors, d.join("model.safetensors")).unwrap();
        std::fs::write(d.join("pytorch_model.bin"), b"not a checkpoint").unwrap();
    });
    bert_outputs_match(&dir, "BertModel");
}

/// A zip laid out as torch.save lays it out, holding `pickle` as its data.pkl.
fn checkpoint_with_pickle(pickle: &[u8]) -> Vec<u8> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut bytes);
    let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", stored).unwrap();
    zip.write_all(pickle).unwrap();
    zip.start_file("archive/version", stored).unwrap();
    zip.write_all(b"3\n").unwrap();
    zip.finish().unwrap();
    bytes.into_inner()
}

fn load_error(dir: &Path) -> String {
    match bert::load(dir, &LoadOptions::default(), &Device::Cpu) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

/// A pickle whose REDUCE calls `os.system("touch MARKER")` is refused by name before anything runs (the marker
/// file never appears), as are `builtins.eval` and a protocol-4 STACK_GLOBAL import.
#[test]
fn malicious_pickles_are_refused_by_name() {
    let marker = std::env::temp_dir().join(format!("qkv-pwned-{}", std::process::id()));
    let command = format!("touch {}", marker.display());
    let mut system = b"\x80\x02cos\nsystem\nq\x00X".to_vec();
    system.extend((command.len() as u32).to_le_bytes());
    system.extend(command.as_bytes());
    system.extend(b"q\x01\x85q\x02Rq\x03.");
    let eval = b"\x80\x02cbuiltins\neval\nX\x01\x00\x00\x001\x85R.".to_vec();
    let stacked = b"\x80\x04\x8c\x02os\x94\x8c\x06system\x94\x93\x94X\x01\x00\x00\x00x\x85R.".to_vec();
    for (tag, pickle, global) in
        [("system", system, "`os.system`"), ("eval", eval, "`builtins.eval`"), ("stack", stacked, "`os.system`")]
    {
        let dir = variant("BertModel", tag, |d| {
            std::fs::write(d.join("pytorch_model.bin"), checkpoint_with_pickle(&pickle)).unwrap()
        });
        let message = load_error(&dir);
        assert!(
            message.contains("pytorch_model.bin") && message.contains(global) && message.contains("refused"),
            "{message}"
        );
    }
    assert!(!marker.exists(), "the pickle ran");
}

#[test]
fn truncated_and_foreign_files_are_named_errors() {
    let bytes = std::fs::read(fixture("BertModel/pytorch_model.bin")).unwrap();
    let dir = variant("BertModel", "truncated", |d| {
        std::fs::write(d.join("pytorch_model.bin"), &bytes[..bytes.len() / 2]).unwrap()
    });
    let message = load_error(&dir);
    assert!(message.contains("pytorch_model.bin") && message.contains("truncated"), "{message}");
    // A shard cut short inside a sharded checkpoint is named too.
    let shard = "pytorch_model-00002-of-00002.bin";
    let dir = variant("BertForMaskedLM", "shard", |d| {
        let bytes = std::fs::read(d.join(shard)).unwrap();
        std::fs::write(d.join(shard), &bytes[..bytes.len() - 10]).unwrap();
    });
    let message = load_error(&dir);
    assert!(message.contains(shard) && message.contains("truncated"), "{message}");
    // Legacy (pre-zip) pickles and other files.
    let dir =
        variant("BertModel", "legacy", |d| std::fs::write(d.join("pytorch_model.bin"), b"\x80\x02\x8a\x0a").unwrap());
    assert!(load_error(&dir).contains("legacy"), "{}", load_error(&dir));
    // A tensor whose shape claims more bytes than its storage holds: refused before anything is allocated.
    let pickle = b"\x80\x02}(X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x02tQK\x00J\x00\x00\x00\x40\x85K\x01\x85\x89ccollections\nOrderedDict\n)RtRu.";
    let mut zipped = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut zipped);
    let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", stored).unwrap();
    zip.write_all(pickle).unwrap();
    zip.start_file("archive/data/0", stored).unwrap();
    zip.write_all(&[0u8; 8]).unwrap();
    zip.finish().unwrap();
    let dir =
        variant("BertModel", "oversized", |d| std::fs::write(d.join("pytorch_model.bin"), zipped.get_ref()).unwrap());
    let message = load_error(&dir);
    assert!(message.contains("tensor `w`") && message.contains("runs past its 8 bytes"), "{message}");
}

/// `convert_to_safetensors` writes every tensor of the .bin files unchanged (bit for bit, f32), and the
/// directory then loads from the safetensors file with the same outputs.
#[test]
fn conversion_to_safetensors_round_trips() {
    let dir = variant("BertForMaskedLM", "convert", |_| {});
    let before = qkv::hub::load_weights(&dir, &Device::Cpu).unwrap();
    let path = qkv::hub::convert_to_safetensors(&dir).unwrap();
    assert_eq!(path, dir.join("model.safetensors"));
    let after = qkv::hub::load_safetensors(&path, &Device::Cpu).unwrap();
    assert_eq!(before.len(), after.len());
    for (name, tensor) in &before {
        let diff = error(tensor, &after[name]);
        assert_eq!(diff, 0.0, "{name}");
    }
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".bin") {
            std::fs::write(dir.join(&name), b"gone").unwrap(); // the .bin files are no longer read
        }
    }
    bert_outputs_match(&dir, "BertForMaskedLM");
    let message = qkv::hub::convert_to_safetensors(&dir).unwrap_err().to_string();
    assert!(message.contains("already has safetensors"), "{message}");
}

/// A small xorshift generator: the mutation tests below are the same on every run.
struct Xorshift(u64);

impl Xorshift {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

/// The records of a zip, in order.
fn records(path: &Path) -> Vec<(String, Vec<u8>)> {
    use std::io::Read;
    let mut zip = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
    (0..zip.len())
        .map(|i| {
            let mut entry = zip.by_index(i).unwrap();
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            (entry.name().unwrap().to_string(), bytes)
        })
        .collect()
}

/// 300 damaged copies of a real data.pkl (a byte changed, cut short or doubled), each re-zipped with valid
/// checksums so that the pickle itself reaches the checks: every load ends in a result — an error naming the
/// file, or the full set of tensors — and none panics or allocates what the damage claims.
#[test]
fn damaged_pickles_end_in_named_errors() {
    let original = records(&fixture("BertModel/pytorch_model.bin"));
    let pickle_at = original.iter().position(|(name, _)| name.ends_with("data.pkl")).unwrap();
    let dir = variant("BertModel", "mutations", |_| {});
    let path = dir.join("pytorch_model.bin");
    let tensors = qkv::hub::pytorch::load_pytorch(&path, &Device::Cpu).unwrap().len();
    let mut rng = Xorshift(0x9E37_79B9_7F4A_7C15);
    let (mut refused, mut loaded) = (0, 0);
    for _ in 0..300 {
        let mut pickle = original[pickle_at].1.clone();
        let at = rng.below(pickle.len());
        match rng.below(3) {
            0 => pickle[at] = rng.below(256) as u8,
            1 => pickle.truncate(at),
            _ => {
                let byte = pickle[at];
                pickle.insert(at, byte);
            }
        }
        let mut bytes = std::io::Cursor::new(Vec::new());
        let mut zip = zip::ZipWriter::new(&mut bytes);
        let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        for (i, (name, data)) in original.iter().enumerate() {
            zip.start_file(name.as_str(), stored).unwrap();
            zip.write_all(if i == pickle_at { &pickle } else { data }).unwrap();
        }
        zip.finish().unwrap();
        std::fs::write(&path, bytes.into_inner()).unwrap();
        match qkv::hub::pytorch::load_pytorch(&path, &Device::Cpu) {
            Ok(found) => {
                loaded += 1;
                assert!(found.len() <= tensors, "{} tensors from a damaged pickle", found.len());
            }
            Err(e) => {
                refused += 1;
                assert!(e.to_string().contains("pytorch_model.bin"), "{e}");
            }
        }
    }
    assert!(refused > 200, "only {refused} of 300 damaged pickles refused ({loaded} loaded)");
}
