//! Data layer: token files, every corpus layout from `data/samples/`, batching,
//! and (when present) the reference corpora under `../shared/data`.

use dyntie::data::tokfile::{write_tokens, TokenWriter, HEADER_BYTES};
use dyntie::data::*;
use dyntie::rng::HostRng;
use std::path::{Path, PathBuf};

/// A fresh scratch folder under cargo's per-test temp dir.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("data-tests")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn samples(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/samples")
        .join(sub)
}

/// The reference corpora folder, or None (with a skip message).
fn corpora(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("DYNTIE_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "skipping {test}: no reference corpora at {} (set DYNTIE_DATA)",
            dir.display()
        );
        None
    }
}

fn err_of<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
    format!("{:#}", r.unwrap_err())
}

#[test]
fn token_file_round_trips_in_both_widths() {
    let dir = scratch("roundtrip");
    for (vocab, width) in [(50257, 2), (256, 2), (70_000, 4)] {
        let toks: Vec<u32> = (0..1000u32).map(|i| (i * 7919) % vocab as u32).collect();
        let path = dir.join(format!("v{vocab}.bin"));
        write_tokens(&path, &toks, vocab).unwrap();
        let f = TokenFile::open(&path).unwrap();
        assert_eq!((f.width(), f.vocab_size(), f.len()), (width, vocab, 1000));
        assert_eq!(f.window(0, 1000), toks);
        assert_eq!(f.window(990, 10), toks[990..]);
        assert!(!dir.join(format!("v{vocab}.bin.tmp")).exists());
    }
    let path = dir.join("empty.bin");
    write_tokens(&path, &[], 256).unwrap();
    assert!(TokenFile::open(&path).unwrap().is_empty());
}

#[test]
fn writer_rejects_out_of_range_ids() {
    let dir = scratch("writer-range");
    let e = err_of(write_tokens(&dir.join("x.bin"), &[1, 2, 300], 256));
    assert!(e.contains("position 2"), "{e}");
}

#[test]
fn streaming_writer_appends_and_cleans_up() {
    let dir = scratch("stream");
    let path = dir.join("s.bin");
    let mut w = TokenWriter::create(&path, 1000).unwrap();
    w.push(&[1, 2, 3]).unwrap();
    w.push(&[]).unwrap();
    w.push(&[4, 5]).unwrap();
    let e = err_of(w.push(&[6, 1000]));
    assert!(e.contains("position 6"), "{e}");
    assert_eq!(w.finish().unwrap(), 5);
    assert_eq!(
        TokenFile::open(&path).unwrap().window(0, 5),
        [1, 2, 3, 4, 5]
    );
    // An unfinished writer leaves neither the file nor its temp file.
    let lost = dir.join("lost.bin");
    let mut w = TokenWriter::create(&lost, 1000).unwrap();
    w.push(&[1]).unwrap();
    drop(w);
    assert!(!lost.exists() && !dir.join("lost.bin.tmp").exists());
}

type Corrupt = Box<dyn Fn(&mut Vec<u8>)>;

#[test]
fn every_bad_header_is_a_clear_error() {
    let dir = scratch("bad-headers");
    let good = dir.join("good.bin");
    write_tokens(&good, &[1, 2, 3, 4], 256).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let id_at_2: Corrupt =
        Box::new(|b| b[HEADER_BYTES + 4..HEADER_BYTES + 6].copy_from_slice(&300u16.to_le_bytes()));
    let cases: Vec<(&str, Corrupt, &str)> = vec![
        ("empty", Box::new(|b| b.clear()), "too short"),
        ("short", Box::new(|b| b.truncate(10)), "too short"),
        ("magic", Box::new(|b| b[0] = b'X'), "bad magic"),
        ("version", Box::new(|b| b[8] = 9), "version 9"),
        ("width", Box::new(|b| b[12] = 3), "width 3"),
        (
            "vocab",
            Box::new(|b| b[16..20].copy_from_slice(&0u32.to_le_bytes())),
            "vocabulary size 0",
        ),
        (
            "truncated",
            Box::new(|b| b.truncate(b.len() - 1)),
            "truncated",
        ),
        ("longer", Box::new(|b| b.extend([0, 0])), "truncated"),
        ("count", Box::new(|b| b[24] = 5), "header says 5 tokens"),
        ("id", id_at_2, "token id 300 at position 2"),
    ];
    for (name, corrupt, expect) in cases {
        let mut b = bytes.clone();
        corrupt(&mut b);
        let path = dir.join(format!("{name}.bin"));
        std::fs::write(&path, &b).unwrap();
        let e = err_of(TokenFile::open(&path));
        assert!(e.contains(expect), "{name}: {e}");
        assert!(e.contains(&path.display().to_string()), "{name}: {e}");
        assert!(e.contains("dyntie prepare"), "{name}: {e}");
    }
    assert!(err_of(TokenFile::open(&dir.join("missing.bin"))).contains("missing.bin"));
}

fn prepared(corpus: &str, input: &Path, tok: &str, name: &str) -> Dataset {
    let out = scratch(name);
    let tokenizer = tok.parse::<Tokenizer>().unwrap();
    let corpus_kind = corpus.parse::<Corpus>().unwrap();
    let s = prepare(
        corpus_kind,
        input,
        &out,
        &tokenizer,
        &PrepareOptions::default(),
    )
    .unwrap();
    let ds = Dataset::open(&out).unwrap();
    assert_eq!(ds.name, corpus);
    assert_eq!(ds.train.len() as u64, s.meta.tokens.train);
    assert_eq!(ds.test.len() as u64, s.meta.tokens.test);
    assert_eq!(ds.vocab_size, tokenizer.vocab_size());
    assert!(s.meta.sources.iter().all(|f| f.sha256.len() == 64));
    ds
}

fn all(src: &TokenSource) -> Vec<u32> {
    src.window(0, src.len())
}

#[test]
fn wikitext_tokens_prepare_like_encoding_each_file_whole() {
    let dir = samples("wikitext");
    for tok in ["gpt2", "byte"] {
        let ds = prepared("wikitext-2", &dir, tok, &format!("wt-{tok}"));
        let t = tok.parse::<Tokenizer>().unwrap();
        for (split, src) in [
            ("train", &ds.train),
            ("valid", &ds.valid),
            ("test", &ds.test),
        ] {
            let text = std::fs::read_to_string(dir.join(format!("wiki.{split}.tokens"))).unwrap();
            assert_eq!(all(src), t.encode(&text), "{tok} {split}");
            assert_eq!(t.decode(&all(src)).unwrap(), text);
        }
    }
    // The newline ending a heading line is its own GPT-2 token.
    let ds = prepared("wikitext-103", &dir, "gpt2", "wt103");
    assert!(all(&ds.train).contains(&198));
}

#[test]
fn wikitext_raw_variant_is_found() {
    let dir = samples("wikitext-raw");
    let ds = prepared("wikitext-2", &dir, "gpt2", "wt-raw");
    let text = std::fs::read_to_string(dir.join("wiki.valid.raw")).unwrap();
    assert_eq!(ds.tokenizer.unwrap().decode(&all(&ds.valid)).unwrap(), text);
}

#[test]
fn lambada_stream_and_examples() {
    let dir = samples("lambada");
    let ds = prepared("lambada", &dir, "gpt2", "lambada");
    assert!(ds.train.is_empty() && ds.valid.is_empty());
    let test = all(&ds.test);
    assert_eq!(test.iter().filter(|&&t| t == 50256).count(), 3);
    assert_eq!(*test.last().unwrap(), 50256);

    let gpt2 = Tokenizer::gpt2();
    let ex = lambada_examples(&dir, &gpt2).unwrap();
    assert_eq!(ex.len(), 3);
    assert_eq!(gpt2.decode(&ex[1].target).unwrap(), " dog");
    assert_eq!(gpt2.decode(&ex[2].target).unwrap(), " train");
    let ctx = gpt2.decode(&ex[0].context).unwrap();
    assert!(ctx.ends_with("to reveal the"), "{ctx}");
    // Context + target is the passage again.
    let mut whole = ex[0].context.clone();
    whole.extend(&ex[0].target);
    assert_eq!(&test[..whole.len()], &whole[..]);
}

#[test]
fn lm1b_shards_map_to_splits() {
    let dir = samples("lm1b");
    let ds = prepared("lm1b", &dir, "gpt2", "lm1b");
    let t = Tokenizer::gpt2();
    let split_text = |src: &TokenSource| t.decode(&all(src)).unwrap();
    assert_eq!(
        split_text(&ds.test),
        "Rain is expected across the region tomorrow .<|endoftext|>"
    );
    assert!(split_text(&ds.valid).starts_with("The museum"));
    let train = split_text(&ds.train);
    assert_eq!(train.matches("<|endoftext|>").count(), 4);
    assert!(train.starts_with("The market") && train.contains("<|endoftext|>A new library"));
}

#[test]
fn text_file_splits_on_lines_by_ratio() {
    let file = samples("text/input.txt");
    let ds = prepared("text", &file, "byte", "text");
    let text = std::fs::read_to_string(&file).unwrap();
    let parts: Vec<String> = [&ds.train, &ds.valid, &ds.test]
        .map(|s| Tokenizer::Byte.decode(&all(s)).unwrap())
        .to_vec();
    assert_eq!(parts.concat(), text);
    for p in &parts {
        assert!(p.ends_with('\n') && !p.is_empty());
    }
    let frac = parts[0].len() as f64 / text.len() as f64;
    assert!((0.88..0.93).contains(&frac), "{frac}");
}

#[test]
fn prepare_errors_name_the_problem() {
    let out = scratch("errors");
    let t = Tokenizer::Byte;
    let opts = PrepareOptions::default();
    let e = err_of(prepare(
        Corpus::WikiText2,
        &out.join("nope"),
        &out,
        &t,
        &opts,
    ));
    assert!(e.contains("does not exist"), "{e}");
    let e = err_of(prepare(
        Corpus::WikiText2,
        &samples("lambada"),
        &out,
        &t,
        &opts,
    ));
    assert!(e.contains("wiki.train.tokens"), "{e}");
    let e = err_of(prepare(Corpus::Lm1b, &samples("wikitext"), &out, &t, &opts));
    assert!(e.contains("training-monolingual"), "{e}");
    let lm1b = out.join("lm1b");
    let shards = lm1b.join("training-monolingual.tokenized.shuffled");
    std::fs::create_dir_all(&shards).unwrap();
    std::fs::write(shards.join("news.en-00001-of-00100"), "A sentence .\n").unwrap();
    let e = err_of(prepare(Corpus::Lm1b, &lm1b, &out.join("o"), &t, &opts));
    assert!(e.contains("heldout-00000-of-00050: missing"), "{e}");
    let bad = out.join("latin1.txt");
    std::fs::write(&bad, b"caf\xe9\nok\n").unwrap();
    let e = err_of(prepare(Corpus::Text, &bad, &out.join("o"), &t, &opts));
    assert!(
        e.contains("not valid UTF-8") && e.contains("offset 3"),
        "{e}"
    );
    let json = out.join("bad.jsonl");
    std::fs::write(&json, "{\"text\": \"a b\"}\nnot json\n").unwrap();
    let e = err_of(prepare(Corpus::Lambada, &json, &out.join("o"), &t, &opts));
    assert!(e.contains("bad.jsonl:2"), "{e}");
    assert!(err_of("c4".parse::<Corpus>()).contains("wikitext-2"));
    assert!(err_of(Dataset::open(&out)).contains("dyntie prepare"));
}

#[test]
fn batcher_is_deterministic_and_resumes_from_saved_rng() {
    let cfg = SyntheticConfig {
        train_tokens: 5000,
        ..Default::default()
    };
    let ds = Dataset::synthetic(cfg).unwrap();
    let mut a = TrainBatcher::new(ds.train.clone(), 4, 16, HostRng::new(9)).unwrap();
    let mut b = TrainBatcher::new(ds.train.clone(), 4, 16, HostRng::new(9)).unwrap();
    let first: Vec<Batch> = (0..5).map(|_| a.next_batch()).collect();
    assert_eq!(first, (0..5).map(|_| b.next_batch()).collect::<Vec<_>>());
    // Save the RNG through JSON, as a checkpoint would, and resume.
    let saved = serde_json::to_string(a.rng()).unwrap();
    let expect: Vec<Batch> = (0..5).map(|_| a.next_batch()).collect();
    let mut c = TrainBatcher::new(ds.train.clone(), 4, 16, HostRng::new(0)).unwrap();
    c.set_rng(serde_json::from_str(&saved).unwrap());
    assert_eq!(expect, (0..5).map(|_| c.next_batch()).collect::<Vec<_>>());
    assert_ne!(first[0], expect[0]);
}

#[test]
fn batcher_reads_token_files() {
    let dir = scratch("batch-file");
    let toks: Vec<u32> = (0..300).collect();
    write_tokens(&dir.join("t.bin"), &toks, 70_000).unwrap();
    let src = TokenSource::from_file("train", TokenFile::open(&dir.join("t.bin")).unwrap());
    let mut b = TrainBatcher::new(src, 3, 10, HostRng::new(5)).unwrap();
    let batch = b.next_batch();
    assert_eq!(batch.inputs.len(), 30);
    for r in 0..3 {
        let row = &batch.inputs[r * 10..r * 10 + 10];
        assert!(row.windows(2).all(|w| w[1] == w[0] + 1));
        assert_eq!(batch.targets[r * 10 + 9], row[9] + 1);
    }
}

#[test]
fn eval_windows_cover_every_token_once() {
    for (n, t, rows) in [(101, 10, 3), (100, 10, 4), (11, 10, 2), (57, 7, 1)] {
        let src = TokenSource::from_vec("valid", (0..n).collect());
        let w = EvalWindows::new(src, t).unwrap();
        let mut seen = vec![0u32; n as usize];
        let mut batches = 0;
        for b in w.batches(rows) {
            batches += 1;
            assert_eq!(b.inputs.len(), b.rows * t);
            for (i, &tg) in b.inputs.iter().zip(&b.targets) {
                if tg != IGNORE_INDEX {
                    assert_eq!(tg, i + 1);
                    seen[tg as usize] += 1;
                }
            }
        }
        assert_eq!(seen[0], 0);
        assert!(seen[1..].iter().all(|&c| c == 1), "n={n} t={t}");
        assert_eq!(w.n_targets(), n as usize - 1);
        assert_eq!(batches, w.len().div_ceil(rows));
    }
}

#[test]
fn short_split_is_a_clear_error() {
    let src = TokenSource::from_vec("valid", vec![1; 16]);
    let e = err_of(EvalWindows::new(src.clone(), 16));
    assert!(
        e.contains("valid split has 16 tokens") && e.contains("16 + 1"),
        "{e}"
    );
    assert!(EvalWindows::new(src.clone(), 15).is_ok());
    assert!(err_of(TrainBatcher::new(src, 1, 16, HostRng::new(0))).contains("valid split"));
}

#[test]
fn synthetic_dataset_has_requested_sizes() {
    let cfg = SyntheticConfig {
        train_tokens: 3000,
        valid_tokens: 500,
        test_tokens: 400,
        ..Default::default()
    };
    let ds = Dataset::synthetic(cfg.clone()).unwrap();
    assert_eq!(
        (ds.train.len(), ds.valid.len(), ds.test.len()),
        (3000, 500, 400)
    );
    assert!(ds.tokenizer.is_none());
    assert_eq!(all(&ds.train), all(&Dataset::synthetic(cfg).unwrap().train));
}

#[test]
fn wikitext2_word_statistics() {
    let Some(dir) = corpora("wikitext2_word_statistics") else {
        return;
    };
    let wt = dir.join("wikitext-2");
    let count = |s: &str| count_words(&wt.join(format!("wiki.{s}.tokens"))).unwrap();
    assert_eq!(
        count("train"),
        WordCount {
            lines: 36_718,
            tokens: 2_088_628
        }
    );
    assert_eq!(count("valid").tokens, 217_646);
    assert_eq!(count("test").tokens, 245_569);
}

#[test]
fn tiny_shakespeare_gpt2_count() {
    let Some(dir) = corpora("tiny_shakespeare_gpt2_count") else {
        return;
    };
    let file = dir.join("tiny-shakespeare/input.txt");
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(Tokenizer::gpt2().encode(&text).len(), 338_025);
    // Split on line starts: the three parts tokenize to the same total here.
    let out = scratch("shakespeare");
    let opts = PrepareOptions::default();
    let s = prepare(Corpus::Text, &file, &out, &Tokenizer::gpt2(), &opts).unwrap();
    let c = &s.meta.tokens;
    assert_eq!(c.train + c.valid + c.test, 338_025);
}

#[test]
fn wikitext2_gpt2_prepare_round_trips() {
    let Some(dir) = corpora("wikitext2_gpt2_prepare_round_trips") else {
        return;
    };
    let wt = dir.join("wikitext-2");
    let out = scratch("wikitext-2");
    let gpt2 = Tokenizer::gpt2();
    let s = prepare(
        Corpus::WikiText2,
        &wt,
        &out,
        &gpt2,
        &PrepareOptions::default(),
    )
    .unwrap();
    eprintln!(
        "prepared wikitext-2 with gpt2 in {:.2} s: {:?}",
        s.seconds, s.meta.tokens
    );
    // The README's "about 2.45 M" GPT-2 tokens for wiki.train.tokens.
    assert!((2_400_000..2_500_000).contains(&s.meta.tokens.train));
    let ds = Dataset::open(&out).unwrap();
    let text = std::fs::read_to_string(wt.join("wiki.valid.tokens")).unwrap();
    assert_eq!(gpt2.decode(&all(&ds.valid)).unwrap(), text);
}

#[test]
fn lambada_reference_examples() {
    let Some(dir) = corpora("lambada_reference_examples") else {
        return;
    };
    let gpt2 = Tokenizer::gpt2();
    let ex = lambada_examples(&dir.join("lambada"), &gpt2).unwrap();
    assert_eq!(ex.len(), 5153);
    for e in &ex {
        assert!(!e.context.is_empty());
        let target = gpt2.decode(&e.target).unwrap();
        assert!(target.starts_with(' ') && target[1..].split_whitespace().count() == 1);
    }
}
