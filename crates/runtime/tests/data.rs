use std::collections::BTreeSet;
use std::sync::Arc;
use tperf_runtime::data::{
    Batch, Corpus, DataError, Loader, LoaderState, SyntheticLoader, TextLoader,
};
use tperf_runtime::tokenizer::Tokenizer;

/// A corpus whose token at position i is i: every batch row says where it came from.
fn counting(n: u32, val_fraction: f64) -> Arc<Corpus> {
    Arc::new(Corpus::from_tokens(
        "counting",
        "byte",
        (0..n).collect(),
        val_fraction,
    ))
}

fn rows(batch: &Batch) -> Vec<(&[i32], &[i32])> {
    batch
        .tokens
        .chunks(batch.t)
        .zip(batch.targets.chunks(batch.t))
        .collect()
}

#[test]
fn the_last_tenth_is_held_out() {
    let text = "abcdefghij".repeat(10);
    let c = Corpus::from_text("mem", &text, &Tokenizer::byte(), 0.1).unwrap();
    assert_eq!(c.train.len(), 90);
    assert_eq!(c.val.len(), 10);
    assert_eq!(c.val, Tokenizer::byte().encode("abcdefghij"));
    let none = Corpus::from_text("mem", &text, &Tokenizer::byte(), 0.0).unwrap();
    assert_eq!((none.train.len(), none.val.len()), (100, 0));
}

#[test]
fn rows_are_contiguous_windows_and_targets_the_next_token() {
    let mut l = TextLoader::new(counting(1001, 0.0), 4, 10, 7).unwrap();
    assert_eq!(l.windows(), 100);
    for _ in 0..30 {
        let batch = l.next_batch();
        assert_eq!((batch.b, batch.t, batch.tokens.len()), (4, 10, 40));
        for (tokens, targets) in rows(&batch) {
            assert_eq!(tokens[0] % 10, 0, "windows start at multiples of T");
            for i in 0..10 {
                assert_eq!(tokens[i], tokens[0] + i as i32);
                assert_eq!(targets[i], tokens[i] + 1);
            }
        }
    }
}

#[test]
fn an_epoch_visits_every_window_once() {
    let mut l = TextLoader::new(counting(1001, 0.0), 5, 10, 3).unwrap();
    let mut starts = Vec::new();
    for _ in 0..20 {
        starts.extend(rows(&l.next_batch()).iter().map(|(t, _)| t[0]));
    }
    let distinct: BTreeSet<i32> = starts.iter().copied().collect();
    assert_eq!(starts.len(), 100);
    assert_eq!(distinct.len(), 100);
    // And the order is shuffled, not sequential.
    assert_ne!(starts, (0..100).map(|w| w * 10).collect::<Vec<_>>());
}

#[test]
fn batches_are_deterministic_in_the_seed() {
    let draw = |seed| {
        let mut l = TextLoader::new(counting(1001, 0.1), 3, 8, seed).unwrap();
        (0..10).map(|_| l.next_batch()).collect::<Vec<_>>()
    };
    assert_eq!(draw(1), draw(1));
    assert_ne!(draw(1), draw(2));
}

#[test]
fn a_restored_loader_continues_exactly_across_epochs() {
    let corpus = counting(1001, 0.1);
    // 90 windows of T = 10 in the training split; batches of 7 cross epoch boundaries.
    let mut a = TextLoader::new(corpus.clone(), 7, 10, 11).unwrap();
    for _ in 0..17 {
        a.next_batch();
    }
    // The state travels as JSON in a checkpoint.
    let saved: LoaderState =
        serde_json::from_str(&serde_json::to_string(&a.state()).unwrap()).unwrap();
    let want: Vec<Batch> = (0..40).map(|_| a.next_batch()).collect();

    // A new process: a loader built from scratch with another seed, then restored.
    let mut b = TextLoader::new(corpus, 7, 10, 999).unwrap();
    b.restore(&saved).unwrap();
    let got: Vec<Batch> = (0..40).map(|_| b.next_batch()).collect();
    assert_eq!(got, want);
    assert_eq!(b.state(), a.state());
}

#[test]
fn restoring_onto_other_data_or_another_seq_is_refused() {
    let l = TextLoader::new(counting(1001, 0.1), 4, 10, 1).unwrap();
    let state = l.state();
    let mut other = TextLoader::new(counting(1002, 0.1), 4, 10, 1).unwrap();
    let err = other.restore(&state).unwrap_err().to_string();
    assert!(err.contains("training data differs"), "{err}");
    let mut longer = TextLoader::new(counting(1001, 0.1), 4, 20, 1).unwrap();
    let err = longer.restore(&state).unwrap_err().to_string();
    assert!(
        err.contains("--seq 10") && err.contains("--seq 20"),
        "{err}"
    );
    let mut synth = SyntheticLoader::new(4, 10, 256, 1).unwrap();
    assert!(matches!(synth.restore(&state), Err(DataError::Resume(_))));
}

#[test]
fn evaluation_reads_the_validation_split_the_same_way_every_time() {
    let l = TextLoader::new(counting(1001, 0.1), 2, 10, 5).unwrap();
    let eval = l.eval_batches(3);
    assert_eq!(eval, l.eval_batches(3));
    assert_eq!(eval.len(), 3);
    let first_val_token = 1001 - 100;
    for batch in &eval {
        for (tokens, targets) in rows(batch) {
            assert!(
                tokens[0] >= first_val_token,
                "a training token in validation"
            );
            assert_eq!(targets[9], tokens[9] + 1);
        }
    }
    let none = TextLoader::new(counting(1001, 0.0), 2, 10, 5).unwrap();
    assert!(none.eval_batches(3).is_empty());
}

#[test]
fn synthetic_batches_are_in_range_deterministic_and_resumable() {
    let mut a = SyntheticLoader::new(4, 16, 50, 9).unwrap();
    let first = a.next_batch();
    assert!(first.tokens.iter().all(|&t| (0..50).contains(&t)));
    assert_eq!(first.targets[..15], first.tokens[1..16]);
    let state = a.state();
    let want: Vec<Batch> = (0..5).map(|_| a.next_batch()).collect();
    let mut b = Loader::Synthetic(SyntheticLoader::new(4, 16, 50, 0).unwrap());
    b.restore(&state).unwrap();
    assert_eq!((0..5).map(|_| b.next_batch()).collect::<Vec<_>>(), want);
    // Evaluation batches are fixed and are not training batches.
    let eval = a.eval_batches(2);
    assert_eq!(eval, a.eval_batches(2));
    assert!(!want.contains(&eval[0]));
    assert_eq!(
        first,
        SyntheticLoader::new(4, 16, 50, 9).unwrap().next_batch()
    );
}

#[test]
fn a_file_loads_tokenizes_and_splits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.txt");
    let text = "Hello world.".repeat(50);
    std::fs::write(&path, &text).unwrap();
    let c = Corpus::load(&path, &Tokenizer::gpt2(), 0.1).unwrap();
    let all = Tokenizer::gpt2().encode(&text);
    assert_eq!(c.total_tokens(), 150); // "Hello", " world", "." per repeat
    assert_eq!(c.val.len(), 15);
    assert_eq!(c.val[..], all[135..]);
    let l = Loader::Text(TextLoader::new(Arc::new(c), 2, 8, 0).unwrap());
    assert_eq!((l.batch(), l.seq()), (2, 8));
}

#[test]
fn data_file_errors_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let tok = Tokenizer::byte();

    let missing = dir.path().join("nope.txt");
    let err = Corpus::load(&missing, &tok, 0.1).unwrap_err();
    assert!(matches!(err, DataError::NotFound { .. }));
    assert!(err.to_string().contains("does not exist"));

    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let err = Corpus::load(&empty, &tok, 0.1).unwrap_err();
    assert!(err.to_string().ends_with("is empty"), "{err}");

    let binary = dir.path().join("bin.dat");
    std::fs::write(&binary, b"text then \xFF\xFE junk").unwrap();
    let err = Corpus::load(&binary, &tok, 0.1).unwrap_err();
    assert!(
        matches!(err, DataError::NotUtf8 { offset: 10, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("not valid UTF-8"));

    let short = dir.path().join("short.txt");
    std::fs::write(&short, "abc").unwrap();
    let c = Arc::new(Corpus::load(&short, &tok, 0.0).unwrap());
    let err = TextLoader::new(c, 1, 8, 0).unwrap_err().to_string();
    assert!(
        err.starts_with("the data file has 3 tokens; --seq 8 needs at least 9"),
        "{err}"
    );

    // Enough tokens overall, but 10% of 20 is too few to validate on with T = 8.
    let c = Arc::new(Corpus::from_tokens("mem", "byte", (0..20).collect(), 0.1));
    let err = TextLoader::new(c, 1, 8, 0).unwrap_err().to_string();
    assert!(err.contains("validation split has 2"), "{err}");

    assert!(matches!(
        Corpus::load(&short, &tok, 1.0),
        Err(DataError::BadValFraction(_))
    ));
    let c = counting(100, 0.0);
    assert!(matches!(
        TextLoader::new(c, 0, 8, 0),
        Err(DataError::Zero { field: "batch" })
    ));
}
