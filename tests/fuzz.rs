//! A bounded fuzz harness for every parser of input from outside the
//! program: token-file headers, meta.json, config TOML (a `--config` file
//! and a run's config.toml), a checkpoint's state.json, safetensors files
//! and LAMBADA jsonl. Each parser gets mutations of a valid input (bit
//! flips, interesting bytes, cuts, splices, numbers replaced by extreme
//! ones, and for JSON and TOML whole values replaced in the parsed tree)
//! and must answer with a value or an error, never a panic.
//!
//! The cases are drawn from a seeded generator, so a failure is
//! reproducible: it prints the seed and case and writes the input to the
//! temp folder. `DYNTIE_FUZZ_SEED` changes the seed, `DYNTIE_FUZZ_SCALE`
//! multiplies the number of cases (1 by default: a few seconds in all).
//!
//! No fuzzing crate: a structure-aware mutator of valid inputs is the part
//! that finds bugs in validation code, and it is a page of code here;
//! `proptest`'s shrinking would add little for inputs this small.

use dyntie::checkpoint::{parse_safetensors, safetensors_bytes, NamedTensor};
use dyntie::config::{BackendKind, RunConfig};
use dyntie::cpu::CpuBackend;
use dyntie::data::{lambada_examples_from_text, tokfile, Meta, TokenFile, Tokenizer};
use dyntie::rng::HostRng;
use dyntie::train::{checkpoint_dirs, memory, parse_state_text, Trainer};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dyntie-fuzz-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn seed() -> u64 {
    std::env::var("DYNTIE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed)
}

fn cases(n: usize) -> usize {
    let scale: usize = std::env::var("DYNTIE_FUZZ_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    n * scale.max(1)
}

/// Numbers that break careless code: zero, negative, the edges of the
/// integer types, beyond them, not-a-number, infinities, denormals.
const NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "-0",
    "255",
    "65536",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999999",
    "1e308",
    "1e309",
    "-1e309",
    "1e-320",
    "nan",
    "inf",
    "-inf",
    "0.5",
    "2.5",
];

/// Bytes that mean something to the formats under test.
const BYTES: &[u8] = b"\0\xff\x7f\x80\"{}[],:=.-+e0123456789 \n\t\\'#";

/// One random change to `input`.
fn mutate(input: &[u8], other: &[u8], rng: &mut HostRng) -> Vec<u8> {
    let mut v = input.to_vec();
    let pos = |rng: &mut HostRng, len: usize| rng.below(len.max(1) as u64) as usize;
    match rng.below(9) {
        0 if !v.is_empty() => {
            let i = pos(rng, v.len());
            v[i] ^= 1 << rng.below(8);
        }
        1 if !v.is_empty() => {
            let i = pos(rng, v.len());
            v[i] = BYTES[pos(rng, BYTES.len())];
        }
        2 => {
            let i = pos(rng, v.len() + 1).min(v.len());
            let n = 1 + pos(rng, 8);
            let bytes: Vec<u8> = (0..n).map(|_| BYTES[pos(rng, BYTES.len())]).collect();
            v.splice(i..i, bytes);
        }
        3 if !v.is_empty() => {
            let i = pos(rng, v.len());
            let n = 1 + pos(rng, 64.min(v.len() - i));
            v.drain(i..(i + n).min(v.len()));
        }
        4 => v.truncate(pos(rng, v.len() + 1)),
        5 if !v.is_empty() && !other.is_empty() => {
            // Splice: a piece of another valid input in the middle of this one.
            let i = pos(rng, v.len());
            let j = pos(rng, other.len());
            let n = pos(rng, 256.min(other.len() - j)) + 1;
            v.splice(i..i, other[j..(j + n).min(other.len())].iter().copied());
        }
        6 | 7 => {
            // A number literal replaced by an extreme one.
            let starts: Vec<usize> = (0..v.len())
                .filter(|&i| v[i].is_ascii_digit() && (i == 0 || !v[i - 1].is_ascii_digit()))
                .collect();
            if !starts.is_empty() {
                let i = starts[pos(rng, starts.len())];
                let end = (i..v.len())
                    .find(|&k| !(v[k].is_ascii_digit() || b".eE-+".contains(&v[k])))
                    .unwrap_or(v.len());
                let n = NUMBERS[pos(rng, NUMBERS.len())].as_bytes().to_vec();
                v.splice(i..end, n);
            }
        }
        _ => {
            let i = pos(rng, v.len());
            let n = pos(rng, 32.min(v.len() - i.min(v.len())));
            let piece: Vec<u8> = v[i..(i + n).min(v.len())].to_vec();
            v.splice(i..i, piece);
        }
    }
    v
}

/// Replaces one value in a JSON tree by an odd one.
fn mutate_json(value: &mut serde_json::Value, rng: &mut HostRng) {
    use serde_json::Value;
    let odd = |rng: &mut HostRng| -> Value {
        let pick = rng.below(10);
        match pick {
            0 => Value::Null,
            1 => Value::from(-1),
            2 => Value::from(u64::MAX),
            3 => Value::from(1e300),
            4 => Value::from(""),
            5 => Value::Array(vec![]),
            6 => Value::Object(Default::default()),
            7 => Value::Bool(true),
            8 => Value::from(0),
            _ => Value::from(4_294_967_296u64),
        }
    };
    // Down a random path, replacing (or removing) where it stops.
    let stop = rng.below(4) == 0;
    match value {
        Value::Array(a) if !a.is_empty() && !stop => {
            let i = rng.below(a.len() as u64) as usize;
            if rng.below(8) == 0 {
                a.remove(i);
            } else {
                mutate_json(&mut a[i], rng);
            }
        }
        Value::Object(o) if !o.is_empty() && !stop => {
            let i = rng.below(o.len() as u64) as usize;
            let key = o.keys().nth(i).unwrap().clone();
            if rng.below(8) == 0 {
                o.remove(&key);
            } else {
                mutate_json(o.get_mut(&key).unwrap(), rng);
            }
        }
        _ => *value = odd(rng),
    }
}

/// Replaces one value in a TOML table by an odd one.
fn mutate_toml(table: &mut toml::Table, rng: &mut HostRng) {
    use toml::Value;
    let odd = |rng: &mut HostRng| -> Value {
        match rng.below(9) {
            0 => Value::Integer(-1),
            1 => Value::Integer(i64::MAX),
            2 => Value::Integer(0),
            3 => Value::Float(f64::NAN),
            4 => Value::Float(f64::INFINITY),
            5 => Value::Float(1e30),
            6 => Value::String("x".into()),
            7 => Value::Boolean(true),
            _ => Value::Integer(1 << 40),
        }
    };
    let keys: Vec<String> = table.keys().cloned().collect();
    if keys.is_empty() {
        return;
    }
    let key = &keys[rng.below(keys.len() as u64) as usize];
    match table.get_mut(key) {
        Some(Value::Table(t)) if rng.below(4) != 0 => mutate_toml(t, rng),
        Some(v) => {
            if rng.below(10) == 0 {
                table.remove(key);
            } else {
                *v = odd(rng);
            }
        }
        None => {}
    }
}

/// Runs `parse` on `n` mutations of `seeds`; a panic fails the test with
/// the seed, the case and the input (also written to a file).
fn fuzz(name: &str, seeds: &[Vec<u8>], n: usize, mut parse: impl FnMut(&[u8], &mut HostRng)) {
    let seed = seed();
    let mut rng = HostRng::derive(seed, name.len() as u64 * 7919 + name.as_bytes()[0] as u64);
    for case in 0..cases(n) {
        let base = &seeds[rng.below(seeds.len() as u64) as usize];
        let other = &seeds[rng.below(seeds.len() as u64) as usize];
        let mut input = base.clone();
        for _ in 0..1 + rng.below(3) {
            input = mutate(&input, other, &mut rng);
        }
        let mut case_rng = HostRng::new(rng.next_u64());
        let result = catch_unwind(AssertUnwindSafe(|| parse(&input, &mut case_rng)));
        if result.is_err() {
            let file = std::env::temp_dir().join(format!("dyntie-fuzz-{name}-{case}.bin"));
            let _ = std::fs::write(&file, &input);
            panic!(
                "{name}: the parser panicked on case {case} (DYNTIE_FUZZ_SEED={seed}); \
                 input in {}:\n{}",
                file.display(),
                String::from_utf8_lossy(&input[..input.len().min(2000)])
            );
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn token_file_headers() {
    let dir = scratch("tokfile");
    let path = dir.join("train.bin");
    let mut seeds = Vec::new();
    for (vocab, tokens) in [(256usize, vec![1u32, 2, 255, 0]), (70_000, vec![69_999, 3])] {
        tokfile::write_tokens(&path, &tokens, vocab).unwrap();
        seeds.push(std::fs::read(&path).unwrap());
    }
    fuzz("tokfile", &seeds, 600, |bytes, _| {
        std::fs::write(&path, bytes).unwrap();
        if let Ok(f) = TokenFile::open(&path) {
            // A file that opens reads back every token it claims.
            let _ = f.window(0, f.len());
        }
    });
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn meta_json() {
    let meta = r#"{
  "format_version": 1,
  "dataset": "text",
  "tokenizer": "byte",
  "vocab_size": 256,
  "tokens": {"train": 2263, "valid": 128, "test": 149},
  "sources": [{"path": "data/samples/text/input.txt", "bytes": 2540,
               "sha256": "0d4bd9a3b5e4b7ec7cbd0c3b8d5dbdd0a6d3c1b1f1f0a0e0d0c0b0a090807060"}],
  "token_sha256": {"train": "aa", "valid": "bb", "test": "cc"}
}"#;
    let seeds = vec![meta.as_bytes().to_vec()];
    let tree: serde_json::Value = serde_json::from_str(meta).unwrap();
    fuzz("meta", &seeds, 3000, |bytes, rng| {
        if let Ok(m) = Meta::parse(&text(bytes)) {
            let _ = m.content_id();
        }
        let mut t = tree.clone();
        mutate_json(&mut t, rng);
        if let Ok(m) = Meta::parse(&t.to_string()) {
            let _ = m.content_id();
        }
    });
}

/// What a run does with a configuration it reads: validate it, then count
/// its memory (which must not overflow whatever the sizes).
fn use_config(cfg: &RunConfig) {
    if cfg.validate().is_ok() {
        let _ = memory::need(cfg, 50257);
    }
}

#[test]
fn config_toml() {
    let mut seeds: Vec<Vec<u8>> = ["tiny", "paper", "gpt2"]
        .iter()
        .map(|p| RunConfig::preset(p).unwrap().to_toml().into_bytes())
        .collect();
    seeds.push(b"[train]\nlr = 0.01\n[model]\nn_layer = 3\n".to_vec());
    let tree: toml::Table = toml::from_str(&text(&seeds[0])).unwrap();
    fuzz("config", &seeds, 2000, |bytes, rng| {
        let s = text(bytes);
        // A run's config.toml, and a --config file over a preset.
        if let Ok(cfg) = RunConfig::from_toml_str(&s) {
            use_config(&cfg);
        }
        let mut cfg = RunConfig::preset("small").unwrap();
        if cfg.merge_toml_str(&s).is_ok() {
            use_config(&cfg);
        }
        let mut t = tree.clone();
        mutate_toml(&mut t, rng);
        if let Ok(text) = toml::to_string(&t) {
            if let Ok(cfg) = RunConfig::from_toml_str(&text) {
                use_config(&cfg);
            }
        }
    });
}

#[test]
fn state_json() {
    // A real checkpoint of a dynamic run mid-episode.
    let dir = scratch("state");
    let mut cfg = RunConfig::preset("tiny").unwrap();
    cfg.backend = BackendKind::Cpu;
    cfg.model.n_layer = 3;
    cfg.model.n_embd = 16;
    cfg.model.n_head = 2;
    cfg.model.n_ctx = 8;
    cfg.train.batch = 2;
    cfg.train.steps = 5;
    cfg.tying.agent_k = 2;
    cfg.data.synthetic_tokens = 2000;
    let run = dir.join("run");
    let mut t = Trainer::create(cfg, Arc::new(CpuBackend::new()), &run, false).unwrap();
    t.verbose = false;
    t.run().unwrap();
    let state = std::fs::read(checkpoint_dirs(&run)[0].join("state.json")).unwrap();
    let tree: serde_json::Value = serde_json::from_slice(&state).unwrap();
    let seeds = vec![state];
    fuzz("state", &seeds, 400, |bytes, rng| {
        let _ = parse_state_text(&text(bytes), 3);
        let mut t = tree.clone();
        for _ in 0..1 + rng.below(3) {
            mutate_json(&mut t, rng);
        }
        let _ = parse_state_text(&t.to_string(), 3);
    });
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn safetensors_files() {
    let tensors = [
        NamedTensor::new("wte", vec![3, 4], (0..12).map(|x| x as f32).collect()),
        NamedTensor::new("slot.0.ln1.bias", vec![4], vec![0.5; 4]),
        NamedTensor::new("empty", vec![0], vec![]),
    ];
    let seeds = vec![
        safetensors_bytes(&tensors).unwrap(),
        safetensors_bytes(&tensors[1..2]).unwrap(),
    ];
    let path = Path::new("model.safetensors");
    fuzz("safetensors", &seeds, 3000, |bytes, rng| {
        let _ = parse_safetensors(bytes, path);
        // The header is JSON after an 8-byte length: mutate it as JSON too.
        if bytes.len() >= 8 {
            let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
            if let Some(header) = bytes.get(8..8 + n.min(bytes.len() - 8)) {
                if let Ok(mut tree) = serde_json::from_slice::<serde_json::Value>(header) {
                    mutate_json(&mut tree, rng);
                    let h = tree.to_string().into_bytes();
                    let mut v = (h.len() as u64).to_le_bytes().to_vec();
                    v.extend_from_slice(&h);
                    v.extend_from_slice(&bytes[8 + header.len()..]);
                    let _ = parse_safetensors(&v, path);
                }
            }
        }
    });
}

#[test]
fn lambada_jsonl() {
    let sample = std::fs::read("data/samples/lambada/lambada_test.jsonl").unwrap();
    let seeds = vec![
        sample,
        b"{\"text\": \"a b\"}\n{\"text\": \"  \\u00e9t\\u00e9 \\ud83d\\ude00\"}\n".to_vec(),
    ];
    let file = Path::new("lambada_test.jsonl");
    let byte = Tokenizer::Byte;
    let gpt2 = Tokenizer::gpt2();
    fuzz("lambada", &seeds, 1500, |bytes, rng| {
        let tok = if rng.below(4) == 0 { &gpt2 } else { &byte };
        if let Ok(examples) = lambada_examples_from_text(file, &text(bytes), tok) {
            for e in examples {
                assert!(!e.target.is_empty(), "a target word has tokens");
            }
        }
    });
}
