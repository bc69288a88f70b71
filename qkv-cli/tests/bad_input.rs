//! The bad-input table: the `qkv` binary run on broken model directories (config, weights, shards, tokenizer),
//! text files, CSV/TSV, safetensors inputs and out-of-range options. Every case must end on its own within a
//! time bound and under an address-space limit, without a panic or an abort, with the exit status it expects
//! and a message naming the culprit (file, line, field, tensor or option). The tiny model directories are
//! built once per test process from the committed fixtures and two one-step training runs.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Map, Value};

/// A case that runs longer is a hang.
const TIME_LIMIT: Duration = Duration::from_secs(30);
/// Address space per run: far above what any tiny model needs, far below the allocations the fixed bugs made.
const MEMORY_LIMIT: u64 = 3 << 30;

/// What a run must end with.
enum Outcome {
    /// Exit status 1 (or 2 for an argument clap refuses); stderr holds every string.
    Fails(Vec<String>),
    /// Exit status 0; stdout and stderr together hold every string.
    Succeeds(Vec<String>),
}

struct Case {
    name: String,
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    stdin: Vec<u8>,
    outcome: Outcome,
}

fn strings(needles: &[&str]) -> Vec<String> {
    needles.iter().map(|s| s.to_string()).collect()
}

/// `qkv ARGS` must fail, naming each of `needles`.
fn fails(name: &str, args: &[&str], needles: &[&str]) -> Case {
    Case {
        name: name.to_string(),
        args: args.iter().map(|a| a.to_string()).collect(),
        env: Vec::new(),
        stdin: Vec::new(),
        outcome: Outcome::Fails(strings(needles)),
    }
}

/// `qkv ARGS` must succeed, printing each of `needles`.
fn succeeds(name: &str, args: &[&str], needles: &[&str]) -> Case {
    Case { outcome: Outcome::Succeeds(strings(needles)), ..fails(name, args, &[]) }
}

/// The scratch directory and the model directories every case starts from.
struct Fixtures {
    root: PathBuf,
    bert: PathBuf,
    qa: PathBuf,
    masked_lm: PathBuf,
    sharded: PathBuf,
    gpt2: PathBuf,
    translation: PathBuf,
    trained_mlm: PathBuf,
}

fn committed(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../qkv/tests/fixtures").join(path)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// The binary on one worker thread (through the environment, so a case may still pass --threads).
fn qkv() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_qkv"));
    command.env("QKV_THREADS", "1");
    command
}

/// `base` option/value pairs, each replaced by the pair of `overrides` for the same option, then the
/// remaining overrides (clap refuses an option given twice), as `--option=value` (so values may start with -).
fn options(base: &[(&str, &str)], overrides: &[(&str, &str)]) -> Vec<String> {
    let mut out: Vec<(&str, &str)> =
        base.iter().map(|&(k, v)| overrides.iter().find(|(o, _)| *o == k).copied().unwrap_or((k, v))).collect();
    out.extend(overrides.iter().filter(|(o, _)| !base.iter().any(|(k, _)| k == o)));
    out.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

fn run_setup(args: &[&str]) {
    let output = qkv().args(args).output().unwrap();
    assert!(output.status.success(), "setup {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

impl Fixtures {
    fn get() -> &'static Fixtures {
        static FIXTURES: OnceLock<Fixtures> = OnceLock::new();
        FIXTURES.get_or_init(Self::build)
    }

    fn build() -> Self {
        let root = std::env::temp_dir().join(format!("qkv-bad-input-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let copy = |from: &str, name: &str| {
            let to = root.join("base").join(name);
            copy_dir(&committed(from), &to);
            to
        };
        let (bert, qa) = (copy("bert/BertModel", "bert"), copy("bert/BertForQuestionAnswering", "qa"));
        let (masked_lm, sharded) =
            (copy("bert/BertForMaskedLM", "masked-lm"), copy("bert/BertForPreTraining", "sharded"));
        let gpt2 = copy("gpt2/qkv-trained", "gpt2");
        let data = root.join("data");
        std::fs::create_dir_all(&data).unwrap();
        let lines = |f: &dyn Fn(usize) -> String| (1..=40).map(f).collect::<Vec<_>>().join("\n") + "\n";
        std::fs::write(data.join("src.txt"), lines(&|i| format!("one two three {i}"))).unwrap();
        std::fs::write(data.join("tgt.txt"), lines(&|i| format!("eins zwei drei {i}"))).unwrap();
        std::fs::write(data.join("mlm.txt"), lines(&|i| format!("the cat number {i} sat on the mat"))).unwrap();
        let path = |p: &Path| p.display().to_string();
        let (src, tgt, run) = (path(&data.join("src.txt")), path(&data.join("tgt.txt")), root.join("translation-run"));
        run_setup(&[
            "train",
            "translation",
            "--out",
            &path(&run),
            "--train-source",
            &src,
            "--train-target",
            &tgt,
            "--valid-source",
            &src,
            "--valid-target",
            &tgt,
            "--layers",
            "1",
            "--d-model",
            "16",
            "--heads",
            "2",
            "--d-ff",
            "32",
            "--vocab-size",
            "60",
            "--num-train-epochs",
            "1",
        ]);
        let mlm_run = root.join("mlm-run");
        run_setup(&[
            "train",
            "mlm",
            "--text",
            &path(&data.join("mlm.txt")),
            "--out",
            &path(&mlm_run),
            "--vocab-size",
            "60",
            "--num-train-epochs",
            "1",
            "--hidden-size",
            "16",
            "--layers",
            "1",
            "--heads",
            "2",
        ]);
        Fixtures {
            bert,
            qa,
            masked_lm,
            sharded,
            gpt2,
            translation: run.join("best"),
            trained_mlm: mlm_run.join("best"),
            root,
        }
    }

    /// A copy of model directory `base` named `name`, changed by `edit`; its path.
    fn variant(&self, base: &Path, name: &str, edit: impl FnOnce(&Path)) -> String {
        let dir = self.root.join("variants").join(name);
        copy_dir(base, &dir);
        edit(&dir);
        dir.display().to_string()
    }

    /// A file `name` in the scratch directory with `bytes`; its path.
    fn file(&self, name: &str, bytes: impl AsRef<[u8]>) -> String {
        let path = self.root.join("files").join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        path.display().to_string()
    }

    /// A safetensors file of integer ids; its path.
    fn ids(&self, name: &str, tensors: &[(&str, Tensor)]) -> String {
        let path = self.root.join("files").join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let map: HashMap<String, Tensor> = tensors.iter().map(|(n, t)| (n.to_string(), t.clone())).collect();
        candle_core::safetensors::save(&map, &path).unwrap();
        path.display().to_string()
    }

    /// A scratch path for a command's output (a run directory, a written file).
    fn out(&self, name: &str) -> String {
        self.root.join("out").join(name).display().to_string()
    }
}

/// Sets (or, with `None`, removes) a key of `dir/config.json`.
fn set_config(dir: &Path, key: &str, value: Option<Value>) {
    let path = dir.join("config.json");
    let mut config: Map<String, Value> = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    match value {
        Some(v) => config.insert(key.to_string(), v),
        None => config.remove(key),
    };
    std::fs::write(path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
}

fn config(key: &'static str, value: Value) -> impl FnOnce(&Path) {
    move |dir| set_config(dir, key, Some(value))
}

/// Rewrites the header of a safetensors file, keeping its data bytes.
fn edit_header(path: &Path, edit: impl FnOnce(&mut Map<String, Value>)) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: Map<String, Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(&mut header);
    let text = serde_json::to_vec(&header).unwrap();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend(&bytes[8 + n..]);
    std::fs::write(path, out).unwrap();
}

/// Loads a safetensors file, lets `edit` change its tensors, and saves it again (a valid file).
fn edit_tensors(path: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let mut tensors = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, path).unwrap();
}

/// The tensor of a header whose data starts first (the one every offset shift disturbs).
fn first_tensor(header: &Map<String, Value>) -> String {
    header
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .min_by_key(|(_, v)| v["data_offsets"][0].as_u64().unwrap())
        .map(|(k, _)| k.clone())
        .unwrap()
}

fn weights(dir: &Path) -> PathBuf {
    dir.join("model.safetensors")
}

fn ids_tensor(values: &[i64], shape: &[usize]) -> Tensor {
    Tensor::from_vec(values.to_vec(), shape, &Device::Cpu).unwrap()
}

/// Every case of the table.
fn cases(f: &Fixtures) -> Vec<Case> {
    let mut cases = Vec::new();
    cases.extend(bert_directories(f));
    cases.extend(weight_files(f));
    cases.extend(shards_and_tokenizers(f));
    cases.extend(gpt2_directories(f));
    cases.extend(translation(f));
    cases.extend(pipelines(f));
    cases.extend(labelled_files(f));
    cases.extend(training(f));
    cases.extend(forward_inputs(f));
    cases.extend(other_commands(f));
    cases.extend(pytorch_files(f));
    cases.extend(table_files(f));
    cases
}

/// `qkv embed` over a BERT directory whose config.json lies or is malformed.
fn bert_directories(f: &Fixtures) -> Vec<Case> {
    let line = f.file("one.txt", "the cat sat\n");
    let embed =
        |dir: &str| vec!["embed".to_string(), "--model".into(), dir.to_string(), "--input".into(), line.clone()];
    let case = |name: &str, dir: String, needles: &[&str]| {
        let args = embed(&dir);
        fails(name, &args.iter().map(String::as_str).collect::<Vec<_>>(), needles)
    };
    let word = "embeddings.word_embeddings.weight";
    let mut cases = vec![
        case(
            "bert vocab 1e12",
            f.variant(&f.bert, "v12", config("vocab_size", json!(1_000_000_000_000u64))),
            &["config.json", "vocab_size = 1000000000000", word],
        ),
        case(
            "bert vocab 3e7",
            f.variant(&f.bert, "v3e7", config("vocab_size", json!(30_000_000))),
            &["vocab_size = 30000000", word, "[99, 32]"],
        ),
        case(
            "bert hidden_size",
            f.variant(&f.bert, "hidden", config("hidden_size", json!(64))),
            &["hidden_size = 64", word],
        ),
        case(
            "bert positions",
            f.variant(&f.bert, "positions", config("max_position_embeddings", json!(1_000_000_000))),
            &["max_position_embeddings = 1000000000", "position_embeddings"],
        ),
        case(
            "bert type vocab",
            f.variant(&f.bert, "types", config("type_vocab_size", json!(1_000_000))),
            &["type_vocab_size = 1000000", "token_type_embeddings"],
        ),
        case(
            "bert intermediate",
            f.variant(&f.bert, "inter", config("intermediate_size", json!(100_000_000))),
            &["intermediate_size = 100000000", "intermediate.dense.weight"],
        ),
        case(
            "bert layers 1000",
            f.variant(&f.bert, "layers", config("num_hidden_layers", json!(1000))),
            &["num_hidden_layers = 1000", "2 layer(s)"],
        ),
        case(
            "bert layers 1e9",
            f.variant(&f.bert, "layers9", config("num_hidden_layers", json!(1_000_000_000))),
            &["num_hidden_layers = 1000000000"],
        ),
        case(
            "bert heads not a divisor",
            f.variant(&f.bert, "heads", config("num_attention_heads", json!(5))),
            &["num_heads", "5"],
        ),
        case(
            "bert heads 0",
            f.variant(&f.bert, "heads0", config("num_attention_heads", json!(0))),
            &["num_heads", "0"],
        ),
        case("bert vocab 0", f.variant(&f.bert, "v0", config("vocab_size", json!(0))), &["vocab_size = 0", word]),
        case(
            "bert vocab negative",
            f.variant(&f.bert, "vneg", config("vocab_size", json!(-5))),
            &["config.json", "-5"],
        ),
        case(
            "bert vocab string",
            f.variant(&f.bert, "vstr", config("vocab_size", json!("many"))),
            &["config.json", "many"],
        ),
        case(
            "bert vocab float",
            f.variant(&f.bert, "vfloat", config("vocab_size", json!(99.5))),
            &["config.json", "99.5"],
        ),
        case(
            "bert hidden_act",
            f.variant(&f.bert, "act", config("hidden_act", json!("swish2"))),
            &["config.json", "swish2"],
        ),
        case(
            "bert relative positions",
            f.variant(&f.bert, "relkey", config("position_embedding_type", json!("relative_key"))),
            &["position_embedding_type", "relative_key"],
        ),
        case(
            "bert model_type",
            f.variant(&f.bert, "mtype", config("model_type", json!("gpt2"))),
            &["config.json", "model_type"],
        ),
        case(
            "bert untied",
            f.variant(&f.bert, "untied", config("tie_word_embeddings", json!(false))),
            &["config.json", "tie_word_embeddings"],
        ),
        case(
            "bert dropout 2",
            f.variant(&f.bert, "dropout", config("hidden_dropout_prob", json!(2.0))),
            &["hidden_dropout_prob"],
        ),
        case(
            "config not json",
            f.variant(&f.bert, "notjson", |d| {
                std::fs::write(d.join("config.json"), "{\"vocab_size\": 99,\n oops").unwrap()
            }),
            &["config.json:2"],
        ),
        case(
            "config empty",
            f.variant(&f.bert, "cempty", |d| std::fs::write(d.join("config.json"), "").unwrap()),
            &["config.json"],
        ),
        case(
            "config array",
            f.variant(&f.bert, "carray", |d| std::fs::write(d.join("config.json"), "[1, 2]").unwrap()),
            &["config.json"],
        ),
        case(
            "config missing",
            f.variant(&f.bert, "cmissing", |d| std::fs::remove_file(d.join("config.json")).unwrap()),
            &["cmissing", "no config.json"],
        ),
        case("model dir missing", f.root.join("nowhere").display().to_string(), &["nowhere"]),
        case("model dir is a file", line.clone(), &["one.txt", "Not a directory"]),
    ];
    if !running_as_root() {
        let locked = f.variant(&f.bert, "locked", |_| {});
        set_mode(Path::new(&locked), 0o000);
        cases.push(case("model dir permission denied", locked, &["locked", "ermission denied"]));
    }
    cases
}

/// `qkv embed` over damaged model.safetensors files.
fn weight_files(f: &Fixtures) -> Vec<Case> {
    let line = f.file("one.txt", "the cat sat\n");
    let case =
        |name: &str, dir: String, needles: &[&str]| fails(name, &["embed", "--model", &dir, "--input", &line], needles);
    let weights_bytes = std::fs::read(weights(&f.bert)).unwrap();
    let half = weights_bytes.len() / 2;
    vec![
        case(
            "weights missing",
            f.variant(&f.bert, "wmissing", |d| std::fs::remove_file(weights(d)).unwrap()),
            &["has no weights: none of model.safetensors"],
        ),
        case(
            "weights only pytorch",
            f.variant(&f.bert, "wbin", |d| std::fs::rename(weights(d), d.join("pytorch_model.bin")).unwrap()),
            &["pytorch_model.bin"],
        ),
        case(
            "weights truncated",
            f.variant(&f.bert, "wtrunc", |d| std::fs::write(weights(d), &weights_bytes[..half]).unwrap()),
            &["model.safetensors", "truncated?"],
        ),
        case(
            "weights empty",
            f.variant(&f.bert, "wempty", |d| std::fs::write(weights(d), b"").unwrap()),
            &["model.safetensors", "too short"],
        ),
        case(
            "weights header length",
            f.variant(&f.bert, "wlen", |d| std::fs::write(weights(d), u64::MAX.to_le_bytes()).unwrap()),
            &["model.safetensors", "header of 18446744073709551615 bytes"],
        ),
        case(
            "weights header not json",
            f.variant(&f.bert, "wjson", |d| {
                let mut bytes = 5u64.to_le_bytes().to_vec();
                bytes.extend(b"{abc}");
                std::fs::write(weights(d), bytes).unwrap();
            }),
            &["model.safetensors", "not a JSON object"],
        ),
        case(
            "weights text file",
            f.variant(&f.bert, "wtext", |d| std::fs::write(weights(d), "just some text, not tensors").unwrap()),
            &["model.safetensors", "not a safetensors file"],
        ),
        case(
            "offset end",
            f.variant(&f.bert, "oend", |d| {
                edit_header(&weights(d), |h| {
                    h["embeddings.token_type_embeddings.weight"]["data_offsets"][1] = json!(5636);
                })
            }),
            &["embeddings.token_type_embeddings.weight", "data_offsets"],
        ),
        case(
            "offset start",
            f.variant(&f.bert, "ostart", |d| {
                edit_header(&weights(d), |h| {
                    let name = first_tensor(h);
                    let end = h[&name]["data_offsets"][1].as_u64().unwrap();
                    h[&name]["data_offsets"] = json!([4, end]);
                })
            }),
            &["data_offsets start at byte 4, expected 0"],
        ),
        case(
            "offsets past the end",
            f.variant(&f.bert, "opast", |d| {
                edit_header(&weights(d), |h| {
                    h.insert(
                        "extra".into(),
                        json!({"dtype": "F32", "shape": [1000000], "data_offsets": [80000, 4080000]}),
                    );
                })
            }),
            &["model.safetensors"],
        ),
        case(
            "dtype unknown",
            f.variant(&f.bert, "dtype", |d| {
                edit_header(&weights(d), |h| {
                    h["embeddings.LayerNorm.weight"]["dtype"] = json!("F99");
                })
            }),
            &["embeddings.LayerNorm.weight", "bad header entry"],
        ),
        case(
            "dtype unreadable",
            f.variant(&f.bert, "dtypeu64", |d| {
                edit_header(&weights(d), |h| {
                    h["embeddings.LayerNorm.weight"]["dtype"] = json!("U64");
                    h["embeddings.LayerNorm.weight"]["shape"] = json!([16]);
                })
            }),
            &["embeddings.LayerNorm.weight", "U64"],
        ),
        case(
            "shape overflow",
            f.variant(&f.bert, "soverflow", |d| {
                edit_header(&weights(d), |h| {
                    h["embeddings.LayerNorm.weight"]["shape"] = json!([4294967296u64, 4294967296u64, 16]);
                })
            }),
            &["embeddings.LayerNorm.weight", "too large"],
        ),
        case(
            "shape transposed",
            f.variant(&f.bert, "stransposed", |d| {
                edit_header(&weights(d), |h| {
                    h["embeddings.word_embeddings.weight"]["shape"] = json!([32, 99]);
                })
            }),
            &["vocab_size = 99", "embeddings.word_embeddings.weight", "[32, 99]"],
        ),
        case(
            "tensor missing",
            f.variant(&f.bert, "tmissing", |d| {
                edit_tensors(&weights(d), |t| {
                    t.remove("encoder.layer.1.attention.self.query.weight");
                })
            }),
            &["encoder.layer.1.attention.self.query.weight", "missing"],
        ),
        case(
            "tensor wrong shape",
            f.variant(&f.bert, "tshape", |d| {
                edit_tensors(&weights(d), |t| {
                    t.insert(
                        "encoder.layer.0.output.dense.bias".into(),
                        Tensor::zeros(31, DType::F32, &Device::Cpu).unwrap(),
                    );
                })
            }),
            &["encoder.layer.0.output.dense.bias", "[31]", "[32]"],
        ),
        {
            let dir = f.variant(&f.bert, "tspare", |d| {
                edit_tensors(&weights(d), |t| {
                    t.insert("spare.weight".into(), Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap());
                })
            });
            succeeds(
                "unused tensor warns",
                &["embed", "--model", &dir, "--input", &line],
                &["spare.weight", "embedding"],
            )
        },
    ]
}

/// Sharded weights (`forward` on BertForPreTraining) and tokenizer files (`embed`).
fn shards_and_tokenizers(f: &Fixtures) -> Vec<Case> {
    let ids = f.ids("ids.safetensors", &[("input_ids", ids_tensor(&[2, 10, 11, 3], &[1, 4]))]);
    let out = f.out("forward.safetensors");
    let forward = |name: &str, dir: String, needles: &[&str]| {
        fails(name, &["forward", "--model", &dir, "--input", &ids, "--output", &out], needles)
    };
    let index = |d: &Path| d.join("model.safetensors.index.json");
    let edit_index = |edit: fn(&mut Value)| {
        move |d: &Path| {
            let path = d.join("model.safetensors.index.json");
            let mut value: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            edit(&mut value);
            std::fs::write(path, value.to_string()).unwrap();
        }
    };
    let line = f.file("one.txt", "the cat sat\n");
    let embed =
        |name: &str, dir: String, needles: &[&str]| fails(name, &["embed", "--model", &dir, "--input", &line], needles);
    vec![
        forward(
            "shard missing",
            f.variant(&f.sharded, "shmissing", |d| {
                std::fs::remove_file(d.join("model-00002-of-00002.safetensors")).unwrap()
            }),
            &["model.safetensors.index.json", "model-00002-of-00002.safetensors", "does not exist"],
        ),
        forward(
            "index not json",
            f.variant(&f.sharded, "shjson", move |d| std::fs::write(index(d), "{\"weight_map\": ").unwrap()),
            &["model.safetensors.index.json"],
        ),
        forward(
            "index without weight_map",
            f.variant(&f.sharded, "shnomap", move |d| std::fs::write(index(d), "{}").unwrap()),
            &["model.safetensors.index.json", "weight_map"],
        ),
        forward(
            "index names absent tensor",
            f.variant(
                &f.sharded,
                "shabsent",
                edit_index(|v| {
                    v["weight_map"]["bert.pooler.dense.extra"] = json!("model-00001-of-00002.safetensors");
                }),
            ),
            &["model-00001-of-00002.safetensors", "bert.pooler.dense.extra"],
        ),
        forward(
            "index escapes directory",
            f.variant(
                &f.sharded,
                "shescape",
                edit_index(|v| {
                    v["weight_map"]["bert.pooler.dense.bias"] = json!("../../x.safetensors");
                }),
            ),
            &["model.safetensors.index.json", "not a file name"],
        ),
        forward(
            "shard truncated",
            f.variant(&f.sharded, "shtrunc", |d| {
                let path = d.join("model-00002-of-00002.safetensors");
                let bytes = std::fs::read(&path).unwrap();
                std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
            }),
            &["model-00002-of-00002.safetensors", "truncated?"],
        ),
        forward(
            "shard disagrees with config",
            f.variant(&f.sharded, "shconfig", config("vocab_size", json!(1_000_000_000_000u64))),
            &["vocab_size = 1000000000000", "model-0000"],
        ),
        embed(
            "tokenizer missing",
            f.variant(&f.bert, "tokmissing", |d| {
                for name in ["tokenizer.json", "vocab.txt"] {
                    std::fs::remove_file(d.join(name)).unwrap();
                }
            }),
            &["tokmissing"],
        ),
        embed(
            "tokenizer not json",
            f.variant(&f.bert, "tokjson", |d| std::fs::write(d.join("tokenizer.json"), "{\"model\": [").unwrap()),
            &["tokenizer.json"],
        ),
        embed(
            "tokenizer empty object",
            f.variant(&f.bert, "tokempty", |d| std::fs::write(d.join("tokenizer.json"), "{}").unwrap()),
            &["tokenizer"],
        ),
        embed(
            "tokenizer truncated",
            f.variant(&f.bert, "toktrunc", |d| {
                let text = std::fs::read_to_string(d.join("tokenizer.json")).unwrap();
                std::fs::write(d.join("tokenizer.json"), &text[..text.len() / 2]).unwrap();
            }),
            &["tokenizer.json"],
        ),
        embed(
            // Found by fuzz/ (target tokenizer): tokenizers 0.23 panicked on a syntax error inside `decoder`.
            "tokenizer decoder with a syntax error",
            f.variant(&f.bert, "tokdecoder", |d| {
                let path = d.join("tokenizer.json");
                let text = std::fs::read_to_string(&path).unwrap();
                let broken = text.replacen(
                    "\"type\": \"WordPiece\",\n    \"prefix\"",
                    "type\": \"WordPiece\",\n    \"prefix\"",
                    1,
                );
                assert_ne!(broken, text, "the fixture's decoder changed: update this case");
                std::fs::write(path, broken).unwrap();
            }),
            &["tokenizer.json", "not a tokenizer.json"],
        ),
        embed(
            "tokenizer ids past the model",
            f.variant(&f.bert, "tokids", |d| {
                let path = d.join("tokenizer.json");
                let mut value: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
                value["model"]["vocab"]["the"] = json!(5000);
                std::fs::write(path, value.to_string()).unwrap();
            }),
            &["5000", "out of range"],
        ),
    ]
}

/// `qkv generate` over GPT-2 directories and with out-of-range options.
fn gpt2_directories(f: &Fixtures) -> Vec<Case> {
    let generate = |name: &str, dir: &str, extra: &[(&str, &str)], needles: &[&str]| {
        let base = [("--model", dir), ("--prompt", "ROMEO:"), ("--max-new-tokens", "2")];
        let args = [vec!["generate".to_string()], options(&base, extra)].concat();
        fails(name, &args.iter().map(String::as_str).collect::<Vec<_>>(), needles)
    };
    let g = |name: &str, key: &'static str, value: Value| f.variant(&f.gpt2, name, config(key, value));
    let gpt2 = f.gpt2.display().to_string();
    vec![
        generate(
            "gpt2 vocab 1e12",
            &g("gv12", "vocab_size", json!(1_000_000_000_000u64)),
            &[],
            &["vocab_size = 1000000000000", "wte.weight"],
        ),
        generate("gpt2 n_embd", &g("gembd", "n_embd", json!(64)), &[], &["n_embd = 64", "wte.weight"]),
        generate(
            "gpt2 n_positions",
            &g("gpos", "n_positions", json!(1_000_000_000)),
            &[],
            &["n_positions = 1000000000", "wpe.weight"],
        ),
        generate("gpt2 n_layer", &g("glayer", "n_layer", json!(50)), &[], &["n_layer = 50", "2 layer(s)"]),
        generate("gpt2 n_inner", &g("ginner", "n_inner", json!(1_000_000)), &[], &["n_inner = 1000000", "c_fc.weight"]),
        generate("gpt2 n_head", &g("ghead", "n_head", json!(3)), &[], &["num_heads", "3"]),
        generate("gpt2 model_type", &g("gtype", "model_type", json!("bert")), &[], &["config.json", "model_type"]),
        generate("gpt2 activation", &g("gact", "activation_function", json!("bogus")), &[], &["config.json", "bogus"]),
        generate(
            "gpt2 tokenizer missing",
            &f.variant(&f.gpt2, "gtok", |d| std::fs::remove_file(d.join("tokenizer.json")).unwrap()),
            &[],
            &["no tokenizer.json"],
        ),
        generate(
            "gpt2 weights truncated",
            &f.variant(&f.gpt2, "gtrunc", |d| {
                let bytes = std::fs::read(weights(d)).unwrap();
                std::fs::write(weights(d), &bytes[..bytes.len() - 1]).unwrap();
            }),
            &[],
            &["model.safetensors", "truncated?"],
        ),
        generate(
            "max-new-tokens",
            &gpt2,
            &[("--max-new-tokens", "100000")],
            &["max_new_tokens = 100000", "at most 4096"],
        ),
        generate("temperature 0", &gpt2, &[("--temperature", "0")], &["temperature"]),
        generate("top-p 2", &gpt2, &[("--top-p", "2")], &["top_p"]),
        generate("top-k 0", &gpt2, &[("--top-k", "0")], &["top_k"]),
        generate("repetition penalty", &gpt2, &[("--repetition-penalty", "-1")], &["repetition_penalty"]),
        fails("empty prompt", &["generate", "--model", &gpt2, "--prompt", ""], &["prompt", "no tokens"]),
        fails(
            "prompt ids past vocabulary",
            &["generate", "--model", &gpt2, "--prompt-ids", "100000", "--max-new-tokens", "2"],
            &["100000", "out of range"],
        ),
    ]
}

/// `qkv translate` over translation model directories, options and inputs.
fn translation(f: &Fixtures) -> Vec<Case> {
    let one = f.file("one.txt", "the cat sat\n");
    let model = f.translation.display().to_string();
    let translate = |name: &str, dir: &str, extra: &[&str], needles: &[&str]| {
        fails(name, &[&["translate", "--model", dir, "--input", &one][..], extra].concat(), needles)
    };
    let t = |name: &str, key: &'static str, value: Value| f.variant(&f.translation, name, config(key, value));
    let long_line = f.file("long-line.txt", "one two three ".repeat(80_000));
    let not_utf8 = f.file("latin1.txt", b"one\ntwo \xe9\n");
    vec![
        translate(
            "translation vocab 1e12",
            &t("tv12", "vocab_size", json!(1_000_000_000_000u64)),
            &[],
            &["config.json", "vocab_size = 1000000000000", "shared.weight"],
        ),
        translate("translation d_model", &t("tdm", "d_model", json!(32)), &[], &["d_model = 32", "shared.weight"]),
        translate(
            "translation encoder layers",
            &t("tel", "encoder_layers", json!(7)),
            &[],
            &["encoder_layers = 7", "1 layer(s)"],
        ),
        translate(
            "translation decoder layers",
            &t("tdl", "decoder_layers", json!(1_000_000)),
            &[],
            &["decoder_layers = 1000000"],
        ),
        translate(
            "translation ffn",
            &t("tffn", "encoder_ffn_dim", json!(1_000_000_000)),
            &[],
            &["encoder_ffn_dim = 1000000000", "fc1.weight"],
        ),
        translate(
            "translation eos id",
            &t("teos", "eos_token_id", json!(1_000_000)),
            &[],
            &["eos_token_id", "1000000"],
        ),
        translate(
            "translation learned positions",
            &t("tlearned", "position_encoding", json!("learned")),
            &[],
            &["embed_positions", "missing"],
        ),
        translate("translation norm", &t("tnorm", "norm_position", json!("middle")), &[], &["config.json", "middle"]),
        translate(
            "translation config missing",
            &f.variant(&f.translation, "tnoconfig", |d| std::fs::remove_file(d.join("config.json")).unwrap()),
            &[],
            &["no config.json"],
        ),
        translate(
            "translation tokenizer missing",
            &f.variant(&f.translation, "tnotok", |d| std::fs::remove_file(d.join("tokenizer.json")).unwrap()),
            &[],
            &["tokenizer.json"],
        ),
        translate(
            "translation weights missing",
            &f.variant(&f.translation, "tnoweights", |d| std::fs::remove_file(weights(d)).unwrap()),
            &[],
            &["model.safetensors"],
        ),
        translate("beam 1e6", &model, &["--beam", "1000000"], &["beam = 1000000", "at most 1024"]),
        translate("beam 0", &model, &["--beam", "0"], &["beam = 0"]),
        translate("max-len-a negative", &model, &["--max-len-a=-1"], &["max_len_a"]),
        translate("max-len-a nan", &model, &["--max-len-a", "NaN"], &["max_len_a"]),
        translate("alpha infinite", &model, &["--alpha", "inf"], &["length_penalty"]),
        // With EOS moved to the padding id the model never ends a sentence: only the 4096-token cap stops it.
        succeeds(
            "max-len-a 1e9 stops at the cap",
            &[
                "translate",
                "--model",
                &t("tnoeos", "eos_token_id", json!(0)),
                "--input",
                &one,
                "--beam",
                "1",
                "--max-len-a",
                "1000000000",
            ],
            &[],
        ),
        fails(
            "one long line",
            &["translate", "--model", &model, "--input", &long_line],
            &["subword tokens in a sentence", "at most 1024", "line 1"],
        ),
        fails("input missing", &["translate", "--model", &model, "--input", &f.out("absent.txt")], &["absent.txt"]),
        fails("input not utf-8", &["translate", "--model", &model, "--input", &not_utf8], &["latin1.txt:2", "UTF-8"]),
        fails(
            "input empty",
            &["translate", "--model", &model, "--input", &f.file("empty.txt", "")],
            &["empty.txt", "empty"],
        ),
        fails(
            "threads 1e5",
            &["--threads", "100000", "translate", "--model", &model, "--input", &one],
            &["threads = 100000", "at most 1024"],
        ),
        Case {
            env: vec![("QKV_THREADS", "100000".into())],
            ..fails("QKV_THREADS 1e5", &["translate", "--model", &model, "--input", &one], &["threads = 100000"])
        },
        fails(
            "threads not a number",
            &["--threads", "many", "translate", "--model", &model, "--input", &one],
            &["--threads", "many"],
        ),
    ]
}

/// fill-mask, qa, classify and embed on the BERT pipelines.
fn pipelines(f: &Fixtures) -> Vec<Case> {
    let (mlm, qa, bert) = (f.masked_lm.display().to_string(), f.qa.display().to_string(), f.bert.display().to_string());
    let context = f.file("context.txt", "the cat sat on the mat");
    let long_context = f.file("long-context.txt", "the cat sat on the mat and then it ran away. ".repeat(4_500));
    let latin1 = f.file("context-latin1.txt", b"caf\xe9");
    let qa_case = |name: &str, extra: &[&str], needles: &[&str]| {
        fails(name, &[&["qa", "--model", &qa][..], extra].concat(), needles)
    };
    let long_text = format!("{} [MASK]", "the ".repeat(100));
    let one = f.file("one.txt", "the cat sat\n");
    vec![
        succeeds(
            "fill-mask top-k 1e9",
            &["fill-mask", "--model", &mlm, "--top-k", "1000000000", "the [MASK] ."],
            &["the"],
        ),
        fails("fill-mask top-k 0", &["fill-mask", "--model", &mlm, "--top-k", "0", "the [MASK] ."], &["top_k = 0"]),
        fails("fill-mask without mask", &["fill-mask", "--model", &mlm, "the cat"], &["[MASK]"]),
        fails("fill-mask too long", &["fill-mask", "--model", &mlm, &long_text], &["103 tokens", "at most 40"]),
        fails(
            "fill-mask without head",
            &["fill-mask", "--model", &bert, "the [MASK]"],
            &["cls.predictions", "missing"],
        ),
        qa_case("qa empty question", &["--question", "", "--context", "the cat sat"], &["question", "non-empty"]),
        qa_case("qa empty context", &["--question", "who", "--context", ""], &["context", "non-empty"]),
        qa_case("qa blank question", &["--question", "   ", "--context", "the cat sat"], &["question"]),
        qa_case("qa context file missing", &["--question", "who", "--context-file", &f.out("nope.txt")], &["nope.txt"]),
        qa_case(
            "qa context file not utf-8",
            &["--question", "who", "--context-file", &latin1],
            &["context-latin1.txt"],
        ),
        qa_case(
            "qa max-seq-len 4",
            &["--question", "who sat there", "--context-file", &context, "--max-seq-len", "4"],
            &["max_seq_len"],
        ),
        qa_case("qa top-k 0", &["--question", "who", "--context-file", &context, "--top-k", "0"], &["top_k"]),
        succeeds(
            "qa huge top-k and answer length",
            &[
                "qa",
                "--model",
                &qa,
                "--question",
                "who",
                "--context-file",
                &context,
                "--top-k",
                "100000000000000",
                "--max-answer-len",
                "1000000000000",
            ],
            &["cat"],
        ),
        succeeds(
            "qa long context",
            &["qa", "--model", &qa, "--question", "who ran", "--context-file", &long_context],
            &["["],
        ),
        Case {
            stdin: b"the movie\n".to_vec(),
            ..fails("classify without head", &["classify", "--model", &bert], &["classifier.weight", "missing"])
        },
        succeeds(
            "embed masked-LM run",
            &["embed", "--model", &f.trained_mlm.display().to_string(), "--input", &one],
            &["embedding"],
        ),
        fails(
            "embed batch-size 0",
            &["embed", "--model", &bert, "--input", &one, "--batch-size", "0"],
            &["batch_size = 0"],
        ),
        fails("embed input missing", &["embed", "--model", &bert, "--input", &f.out("missing.txt")], &["missing.txt"]),
        fails(
            "embed input not utf-8",
            &["embed", "--model", &bert, "--input", &f.file("latin1.txt", b"one\ntwo \xe9\n")],
            &["latin1.txt:2"],
        ),
    ]
}

/// `qkv sts` and `qkv finetune classify` on CSV and TSV files.
fn labelled_files(f: &Fixtures) -> Vec<Case> {
    let bert = f.bert.display().to_string();
    let sts = |name: &str, file: &str, text: &[u8], needles: &[&str]| {
        let path = f.file(file, text);
        fails(name, &["sts", "--model", &bert, "--pairs", &path], needles)
    };
    let good = f.file("good.csv", "a good one,1\nbad stuff,0\nnice,1\nawful,0\n");
    let finetune = |name: &str, file: &str, text: &[u8], needles: &[&str]| {
        let path = f.file(file, text);
        let out = f.out(&format!("finetune-{file}"));
        fails(
            name,
            &[
                "finetune", "classify", "--model", &bert, "--train", &path, "--dev", &good, "--out", &out, "--epochs",
                "1",
            ],
            needles,
        )
    };
    vec![
        sts(
            "sts crlf bad score",
            "crlf.csv",
            b"sentence1,sentence2,score\r\na,b,1\r\nc,d,2\r\ne,f,x\r\n",
            &["crlf.csv:4", "\"x\""],
        ),
        sts("sts lf bad score", "lf.csv", b"sentence1,sentence2,score\na,b,1\nc,d,2\ne,f,x\n", &["lf.csv:4", "\"x\""]),
        sts(
            "sts crlf short row",
            "crlf-short.csv",
            b"a,b,1\r\nc,d,2\r\nonly one\r\n",
            &["crlf-short.csv:3", "1 field"],
        ),
        sts(
            "sts unclosed quote",
            "quote.csv",
            b"sentence1,sentence2,score\na,b,1\n\"c,d,2\ne,f,3\n",
            &["quote.csv:3", "quoting error", "never closed"],
        ),
        sts(
            "sts crlf unclosed quote",
            "quote-crlf.csv",
            b"a,b,1\r\n\"c,d,2\r\ne,f,3\r\n",
            &["quote-crlf.csv:2", "quoting error"],
        ),
        sts(
            "sts merged rows",
            "merged.csv",
            b"a,b,1\n\"c,d,2\ne\" f,g,3\n",
            &["merged.csv:2", "quoting error", "line 3"],
        ),
        sts("sts nan score", "nan.csv", b"a,b,1\nc,d,NaN\n", &["nan.csv:2", "NaN"]),
        sts("sts infinite score", "inf.csv", b"a,b,1\nc,d,inf\n", &["inf.csv:2", "inf"]),
        sts("sts empty file", "empty.csv", b"", &["empty.csv", "no sentence pairs"]),
        sts("sts header only", "header.csv", b"sentence1,sentence2,score\n", &["header.csv", "no sentence pairs"]),
        sts("sts not utf-8", "latin1.csv", b"a,b,1\ncaf\xe9,d,2\n", &["latin1.csv:2", "UTF-8"]),
        sts("sts tsv crlf", "pairs.tsv", b"a\tb\t1\r\nc\td\tlow\r\n", &["pairs.tsv:2", "low"]),
        fails("sts file missing", &["sts", "--model", &bert, "--pairs", &f.out("absent.csv")], &["absent.csv"]),
        finetune(
            "finetune merged rows",
            "ft-merged.csv",
            b"a good one,1\n\"bad stuff,0\nnice\" one,1\nawful,0\n",
            &["ft-merged.csv:2", "quoting error"],
        ),
        finetune(
            "finetune crlf short row",
            "ft-crlf.csv",
            b"a good one,1\r\nbad stuff,0\r\nno label here\r\nawful,0\r\n",
            &["ft-crlf.csv:3", "1 field"],
        ),
        finetune("finetune empty label", "ft-label.csv", b"a good one,1\nbad stuff,\n", &["ft-label.csv:2", "label"]),
        finetune("finetune tsv short row", "ft.tsv", b"fine\t1\nno label\n", &["ft.tsv:2", "1 field"]),
        finetune(
            "finetune unclosed quote",
            "ft-unclosed.csv",
            b"a good one,1\nbad stuff,0\n\"nice,1\n",
            &["ft-unclosed.csv:3", "quoting error"],
        ),
        fails(
            "finetune dev missing",
            &[
                "finetune",
                "classify",
                "--model",
                &bert,
                "--train",
                &good,
                "--dev",
                &f.out("nodev.csv"),
                "--out",
                &f.out("ft-nodev"),
                "--epochs",
                "1",
            ],
            &["nodev.csv"],
        ),
        fails(
            "finetune epochs 0",
            &[
                "finetune",
                "classify",
                "--model",
                &bert,
                "--train",
                &good,
                "--dev",
                &good,
                "--out",
                &f.out("ft-epochs"),
                "--epochs",
                "0",
            ],
            &["num_train_epochs = 0"],
        ),
        fails(
            "finetune config lies",
            &[
                "finetune",
                "classify",
                "--model",
                &f.variant(&f.bert, "ftv12", config("vocab_size", json!(1_000_000_000_000u64))),
                "--train",
                &good,
                "--dev",
                &good,
                "--out",
                &f.out("ft-v12"),
                "--epochs",
                "1",
            ],
            &["vocab_size = 1000000000000", "embeddings.word_embeddings.weight"],
        ),
        fails(
            "finetune config too large without weights",
            &[
                "finetune",
                "classify",
                "--model",
                &f.variant(&f.bert, "ftnoweights", |d| {
                    set_config(d, "vocab_size", Some(json!(1_000_000_000_000u64)));
                    std::fs::remove_file(weights(d)).unwrap();
                }),
                "--train",
                &good,
                "--dev",
                &good,
                "--out",
                &f.out("ft-noweights"),
                "--epochs",
                "1",
            ],
            &["config.json", "vocab_size = 1000000000000", "at most 16777216"],
        ),
        fails(
            "finetune model beyond memory",
            &[
                "finetune",
                "classify",
                "--model",
                &f.variant(&f.bert, "ftmemory", |d| {
                    set_config(d, "vocab_size", Some(json!(10_000_000)));
                    set_config(d, "hidden_size", Some(json!(200_000)));
                    set_config(d, "num_attention_heads", Some(json!(1)));
                    std::fs::remove_file(weights(d)).unwrap();
                }),
                "--train",
                &good,
                "--dev",
                &good,
                "--out",
                &f.out("ft-memory"),
                "--epochs",
                "1",
            ],
            &["config.json", "memory", "TB"],
        ),
    ]
}

/// `qkv train translation` and `qkv train mlm` on bad data and options.
fn training(f: &Fixtures) -> Vec<Case> {
    let data = f.root.join("data");
    let (src, tgt) = (data.join("src.txt").display().to_string(), data.join("tgt.txt").display().to_string());
    let translation = |name: &str, train_source: &str, extra: &[(&str, &str)], needles: &[&str]| {
        let out = f.out(&format!("train-{}", name.replace(' ', "-")));
        let base = [
            ("--out", out.as_str()),
            ("--train-source", train_source),
            ("--train-target", &tgt),
            ("--valid-source", &src),
            ("--valid-target", &tgt),
            ("--num-train-epochs", "1"),
            ("--layers", "1"),
            ("--d-model", "16"),
            ("--heads", "2"),
            ("--d-ff", "32"),
            ("--vocab-size", "60"),
        ];
        let args = [vec!["train".to_string(), "translation".into()], options(&base, extra)].concat();
        fails(name, &args.iter().map(String::as_str).collect::<Vec<_>>(), needles)
    };
    let short = f.file("short.txt", "one\ntwo\n");
    let blank = f.file(
        "blank.txt",
        (1..=40).map(|i| if i == 7 { String::new() } else { format!("x {i}") }).collect::<Vec<_>>().join("\n"),
    );
    let mlm = |name: &str, text: &str, extra: &[(&str, &str)], needles: &[&str]| {
        let out = f.out(&format!("mlm-{}", name.replace(' ', "-")));
        let base = [
            ("--text", text),
            ("--out", out.as_str()),
            ("--num-train-epochs", "1"),
            ("--hidden-size", "16"),
            ("--layers", "1"),
            ("--heads", "2"),
            ("--vocab-size", "60"),
        ];
        let args = [vec!["train".to_string(), "mlm".into()], options(&base, extra)].concat();
        fails(name, &args.iter().map(String::as_str).collect::<Vec<_>>(), needles)
    };
    let mlm_text = data.join("mlm.txt").display().to_string();
    let five = f.file("five.txt", "the cat sat on the mat\nthe dog ran\na bird flew\nfish swim\ncows moo\n");
    vec![
        translation(
            "vocab-size 1e9",
            &src,
            &[("--vocab-size", "1000000000")],
            &["vocab_size = 1000000000", "at most 16777216"],
        ),
        translation("d-model 1e6", &src, &[("--d-model", "1000000"), ("--heads", "1")], &["d_model = 1000000"]),
        translation("layers 1e5", &src, &[("--layers", "100000")], &["encoder_layers = 100000", "at most 1024"]),
        translation("heads not a divisor", &src, &[("--heads", "3")], &["num_heads", "3"]),
        translation(
            "head-dim without projections",
            &src,
            &[("--attention-projections", "none"), ("--head-dim", "4")],
            &["head_dim", "4", "d_model / num_heads = 8"],
        ),
        translation("line counts differ", &short, &[], &["short.txt", "line-aligned"]),
        translation("empty source line", &blank, &[], &["blank.txt:7", "empty line"]),
        translation("source missing", &f.out("nosrc.txt"), &[], &["nosrc.txt"]),
        translation("max-len 0", &src, &[("--max-len", "0")], &["max_len"]),
        translation("dropout 1.5", &src, &[("--dropout", "1.5")], &["dropout"]),
        translation("lr-factor negative", &src, &[("--lr-factor", "-1")], &["lr_factor"]),
        mlm("mlm five lines", &five, &[], &["five.txt", "5 non-empty line(s)", "at least 10 lines"]),
        mlm("mlm validation fraction 0", &mlm_text, &[("--validation-fraction", "0")], &["validation_fraction = 0"]),
        mlm(
            "mlm vocab-size 1e9",
            &mlm_text,
            &[("--vocab-size", "1000000000")],
            &["vocab_size = 1000000000", "at most 16777216"],
        ),
        mlm("mlm probability 1.5", &mlm_text, &[("--mlm-probability", "1.5")], &["mlm_probability"]),
        mlm("mlm empty text", &f.file("empty.txt", ""), &[], &["empty.txt", "empty"]),
        mlm(
            "mlm hidden size 1e6",
            &mlm_text,
            &[("--hidden-size", "1000000"), ("--heads", "1")],
            &["hidden_size = 1000000"],
        ),
    ]
}

/// `qkv forward` on bad input-id files.
fn forward_inputs(f: &Fixtures) -> Vec<Case> {
    let (bert, gpt2) = (f.bert.display().to_string(), f.gpt2.display().to_string());
    let out = f.out("forward-out.safetensors");
    let forward = |name: &str, model: &str, input: &str, needles: &[&str]| {
        fails(name, &["forward", "--model", model, "--input", input, "--output", &out], needles)
    };
    let ids = |name: &str, tensors: &[(&str, Tensor)]| f.ids(name, tensors);
    let empty = ids("empty-ids.safetensors", &[("input_ids", ids_tensor(&[], &[1, 0]))]);
    let long: Vec<i64> = (0..50).map(|i| 5 + i % 50).collect();
    let truncated = {
        let path = ids("truncated-ids.safetensors", &[("input_ids", ids_tensor(&[2, 10, 11, 3], &[1, 4]))]);
        let bytes = std::fs::read(&path).unwrap();
        f.file("truncated-ids.safetensors", &bytes[..bytes.len() - 3])
    };
    vec![
        forward("ids [1, 0]", &bert, &empty, &["input_ids", "[1, 0]"]),
        forward("gpt2 ids [1, 0]", &gpt2, &empty, &["input_ids", "[1, 0]"]),
        forward(
            "ids [0]",
            &bert,
            &ids("flat-ids.safetensors", &[("input_ids", ids_tensor(&[], &[0]))]),
            &["input_ids", "[0]"],
        ),
        forward(
            "ids rank 3",
            &bert,
            &ids("rank3-ids.safetensors", &[("input_ids", ids_tensor(&[1, 2], &[1, 1, 2]))]),
            &["input_ids", "[1, 1, 2]"],
        ),
        forward(
            "ids past vocabulary",
            &bert,
            &ids("big-ids.safetensors", &[("input_ids", ids_tensor(&[5, 1000], &[1, 2]))]),
            &["1000", "out of range"],
        ),
        forward(
            "negative ids",
            &bert,
            &ids("neg-ids.safetensors", &[("input_ids", ids_tensor(&[5, -3], &[1, 2]))]),
            &["-3", "out of range"],
        ),
        forward(
            "float ids",
            &bert,
            &ids("float-ids.safetensors", &[("input_ids", Tensor::new(&[[1f32, 2.0]], &Device::Cpu).unwrap())]),
            &["input_ids", "F32"],
        ),
        forward(
            "no input_ids",
            &bert,
            &ids("no-ids.safetensors", &[("tokens", ids_tensor(&[1, 2], &[1, 2]))]),
            &["input_ids"],
        ),
        forward(
            "mask shape",
            &bert,
            &ids(
                "mask-ids.safetensors",
                &[("input_ids", ids_tensor(&[2, 10, 3], &[1, 3])), ("attention_mask", ids_tensor(&[1, 1], &[1, 2]))],
            ),
            &["attention_mask", "[1, 2]"],
        ),
        forward(
            "segments shape",
            &bert,
            &ids(
                "segment-ids.safetensors",
                &[("input_ids", ids_tensor(&[2, 10, 3], &[1, 3])), ("token_type_ids", ids_tensor(&[0], &[1, 1]))],
            ),
            &["token_type_ids", "[1, 1]"],
        ),
        forward(
            "ids longer than positions",
            &bert,
            &ids("long-ids.safetensors", &[("input_ids", ids_tensor(&long, &[1, 50]))]),
            &["50 tokens", "max_position_embeddings = 40"],
        ),
        forward("ids file truncated", &bert, &truncated, &["truncated-ids.safetensors", "truncated?"]),
        forward(
            "ids file is text",
            &bert,
            &f.file("text-ids.safetensors", "input_ids = [1, 2]"),
            &["text-ids.safetensors", "not a safetensors file"],
        ),
        forward("ids file missing", &bert, &f.out("no-such-ids.safetensors"), &["no-such-ids.safetensors"]),
    ]
}

/// `qkv average` and argument errors.
fn other_commands(f: &Fixtures) -> Vec<Case> {
    let bert = f.bert.display().to_string();
    let other_vocab = f.variant(&f.bert, "swapped-vocab", |d| {
        let path = d.join("tokenizer.json");
        let mut value: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let vocab = value["model"]["vocab"].as_object_mut().unwrap();
        let (a, b) = (vocab["the"].clone(), vocab["movie"].clone());
        vocab.insert("the".into(), b);
        vocab.insert("movie".into(), a);
        std::fs::write(path, value.to_string()).unwrap();
    });
    let empty_run = f.root.join("empty-run");
    std::fs::create_dir_all(&empty_run).unwrap();
    vec![
        fails(
            "average different tokenizers",
            &["average", "--inputs", &bert, &other_vocab, "--out", &f.out("avg-vocab")],
            &["swapped-vocab/tokenizer.json", "differs"],
        ),
        fails(
            "average different shapes",
            &["average", "--inputs", &bert, &f.qa.display().to_string(), "--out", &f.out("avg-shape")],
            &["model.safetensors", "tensor"],
        ),
        fails(
            "average run without checkpoints",
            &["average", "--run", &empty_run.display().to_string(), "--out", &f.out("avg-run")],
            &["empty-run", "no step checkpoints"],
        ),
        fails(
            "average missing input",
            &["average", "--inputs", &bert, &f.out("absent-model"), "--out", &f.out("avg-missing")],
            &["absent-model"],
        ),
        succeeds(
            "average same vocabulary",
            &["average", "--inputs", &bert, &bert, "--out", &f.out("avg-ok")],
            &["averaged 2"],
        ),
        fails("unknown subcommand", &["transmogrify"], &["transmogrify"]),
        fails("unknown option", &["embed", "--model", &bert, "--frobnicate"], &["--frobnicate"]),
        fails("device gpu", &["--device", "cuda", "embed", "--model", &bert], &["device", "cuda"]),
    ]
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(true)
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Runs one case under the time and memory bounds; the reason it failed, if it did.
fn check(case: &Case) -> Option<String> {
    let mut command = qkv();
    command.args(&case.args).envs(case.env.iter().map(|(k, v)| (k, v))).env("RUST_BACKTRACE", "0");
    command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe; it runs in the child between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit { rlim_cur: MEMORY_LIMIT, rlim_max: MEMORY_LIMIT };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let started = Instant::now();
    let mut child = command.spawn().unwrap();
    let stdin = case.stdin.clone();
    let mut pipe = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || pipe.write_all(&stdin));
    // Drain both pipes while waiting, so a chatty run cannot block on a full pipe.
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut out, &mut text).map(|_| text)
    });
    let err_reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut err, &mut text).map(|_| text)
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > TIME_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            return Some(format!("still running after {TIME_LIMIT:?}: killed"));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = writer.join();
    let stdout = String::from_utf8_lossy(&reader.join().unwrap().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap().unwrap()).into_owned();
    let code = match status.code() {
        Some(code) => code,
        None => return Some(format!("killed by a signal ({status:?}); stderr: {stderr}")),
    };
    if stderr.contains("panicked") || code == 101 || code == 134 {
        return Some(format!("panicked or aborted (exit {code}): {stderr}"));
    }
    let (expected_codes, needles, text): (&[i32], &Vec<String>, String) = match &case.outcome {
        Outcome::Fails(needles) => (&[1, 2], needles, stderr.clone()),
        Outcome::Succeeds(needles) => (&[0], needles, format!("{stdout}{stderr}")),
    };
    if !expected_codes.contains(&code) {
        return Some(format!("exit {code}, expected {expected_codes:?}; stderr: {stderr}"));
    }
    let missing: Vec<&String> = needles.iter().filter(|n| !text.contains(n.as_str())).collect();
    if !missing.is_empty() {
        return Some(format!("output lacks {missing:?}; stderr: {stderr}"));
    }
    None
}

#[test]
fn bad_inputs_are_refused_clearly_within_bounds() {
    let fixtures = Fixtures::get();
    let cases = cases(fixtures);
    assert!(cases.len() >= 100, "{} cases", cases.len());
    let mut names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), cases.len(), "case names must be unique");
    // Two runs at a time: the cases are independent processes, and two cores are what CI has.
    let next = Mutex::new(cases.iter());
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| loop {
                let Some(case) = next.lock().unwrap().next() else { break };
                if let Some(reason) = check(case) {
                    failures.lock().unwrap().push(format!("{}: {reason}", case.name));
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    let locked = fixtures.root.join("variants/locked");
    if locked.exists() {
        set_mode(&locked, 0o755);
    }
    let _ = std::fs::remove_dir_all(&fixtures.root);
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

/// A torch.save-style zip holding `pickle` as data.pkl and `storage` as its one storage record.
fn torch_zip(pickle: &[u8], storage: &[u8]) -> Vec<u8> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut bytes);
    let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", stored).unwrap();
    zip.write_all(pickle).unwrap();
    zip.start_file("archive/data/0", stored).unwrap();
    zip.write_all(storage).unwrap();
    zip.finish().unwrap();
    bytes.into_inner()
}

/// `qkv embed` over BERT directories whose only weights are a broken or hostile pytorch_model.bin: each is refused
/// before candle's pickle reader allocates what the file claims.
fn pytorch_files(f: &Fixtures) -> Vec<Case> {
    let line = f.file("one.txt", "the cat sat\n");
    let case = |name: &str, bin: Vec<u8>, needles: &[&str]| {
        let dir = f.variant(&f.bert, &format!("bin-{name}"), |d| {
            std::fs::remove_file(weights(d)).unwrap();
            std::fs::write(d.join("pytorch_model.bin"), &bin).unwrap();
        });
        fails(&format!("bin {name}"), &["embed", "--model", &dir, "--input", &line], needles)
    };
    // A float tensor of 2^30 elements over an 8-byte storage.
    let forged = b"\x80\x02}(X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\n\
                   FloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x02tQK\x00J\x00\x00\x00\x40\x85K\x01\x85\x89\
                   ccollections\nOrderedDict\n)RtRu.";
    let system = b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00true\x85R.";
    let huge_string = b"\x80\x02X\xff\xff\xff\xff";
    let short_tuple = b"\x80\x02}(X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n)Ru.";
    vec![
        case("forged shape", torch_zip(forged, &[0; 8]), &["pytorch_model.bin", "tensor `w`", "runs past its 8 bytes"]),
        case("os.system", torch_zip(system, &[]), &["pytorch_model.bin", "`os.system`", "refused"]),
        case("huge string", torch_zip(huge_string, &[]), &["pytorch_model.bin", "BINUNICODE", "runs past the end"]),
        case("short tuple", torch_zip(short_tuple, &[]), &["pytorch_model.bin", "not a state dict"]),
        case("not a zip", b"\x00\x01\x02\x03 just bytes".to_vec(), &["pytorch_model.bin", "not a PyTorch checkpoint"]),
    ]
}

/// `qkv embed` and `qkv finetune classify` over broken JSON-lines and Parquet tables.
fn table_files(f: &Fixtures) -> Vec<Case> {
    let bert = f.bert.display().to_string();
    let embed = |name: &str, file: &str, bytes: &[u8], needles: &[&str]| {
        let path = f.file(file, bytes);
        fails(name, &["embed", "--model", &bert, "--input", &path], needles)
    };
    let good = f.file("good.jsonl", "{\"text\": \"a good one\", \"label\": 1}\n{\"text\": \"bad\", \"label\": 0}\n");
    let parquet =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../qkv/tests/fixtures/tables/pairs.parquet"));
    let parquet = parquet.unwrap();
    let finetune = |name: &str, file: &str, bytes: &[u8], needles: &[&str]| {
        let path = f.file(file, bytes);
        let out = f.out(&format!("finetune-{file}"));
        let args = [
            "finetune", "classify", "--model", &bert, "--train", &path, "--dev", &good, "--out", &out, "--epochs", "1",
        ];
        fails(name, &args, needles)
    };
    vec![
        embed(
            "embed jsonl invalid",
            "bad.jsonl",
            b"{\"text\": \"a\"}\n{\"text\": \n",
            &["bad.jsonl:2", "invalid JSON"],
        ),
        embed("embed parquet halved", "half.parquet", &parquet[..parquet.len() / 2], &["half.parquet", "Parquet"]),
        embed("embed parquet empty", "empty.parquet", b"", &["empty.parquet", "Parquet"]),
        finetune(
            "finetune jsonl float label",
            "float.jsonl",
            b"{\"text\": \"a\", \"label\": 0.5}\n",
            &["float.jsonl:1", "column `label`", "0.5"],
        ),
        finetune(
            "finetune jsonl no label",
            "nolabel.jsonl",
            b"{\"text\": \"a\"}\n",
            &["nolabel.jsonl", "no label column", "columns present: text"],
        ),
    ]
}
