mod common;

use common::{fill, model, snapshot, tiny_config, HostBackend};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::path::{Path, PathBuf};
use tperf_core::backend::Backend;
use tperf_core::schedule::Precision;
use tperf_runtime::checkpoint::{self, CheckpointError, Contents, RunInfo};
use tperf_runtime::data::LoaderState;

fn run_info(step: u64) -> RunInfo {
    RunInfo {
        step,
        seed: 42,
        loader: Some(LoaderState::Synthetic {
            seed: 42,
            seq: 8,
            vocab: 256,
            batches: step,
        }),
        tokenizer: "byte".into(),
        flags: Default::default(),
    }
}

/// A training model with distinct values everywhere, saved with its optimizer state.
fn saved_checkpoint(dir: &Path) -> PathBuf {
    let mut be = HostBackend::new();
    let m = model(&mut be, &tiny_config(), Precision::Fp32, true);
    fill(&mut be, &m, 1.0);
    let path = dir.join("ckpt.safetensors");
    checkpoint::save(
        &path,
        &mut be,
        &m,
        &run_info(7),
        Contents::WeightsAndOptimizer,
    )
    .unwrap();
    path
}

/// A fresh training model, the place a failed load must leave untouched.
fn fresh() -> (HostBackend, tperf_core::schedule::Transformer) {
    let mut be = HostBackend::new();
    let m = model(&mut be, &tiny_config(), Precision::Fp32, true);
    fill(&mut be, &m, -5.0);
    be.writes = 0;
    (be, m)
}

/// Loads `path` into a fresh model, expecting failure; checks that nothing was written.
fn load_fails(path: &Path) -> CheckpointError {
    let (mut be, m) = fresh();
    let before = snapshot(&mut be, &m);
    let err = checkpoint::load(path, &mut be, &m, Contents::WeightsAndOptimizer).unwrap_err();
    assert_eq!(be.writes, 0, "a failed load wrote into the backend");
    assert_eq!(snapshot(&mut be, &m), before);
    err
}

type Stored = (String, Dtype, Vec<usize>, Vec<u8>);

/// Rewrites a checkpoint's tensors through `edit`, keeping its metadata.
fn rewrite(path: &Path, edit: impl FnOnce(&mut Vec<Stored>)) {
    let bytes = std::fs::read(path).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<Stored> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, header.metadata().clone(), path).unwrap();
}

#[test]
fn weights_and_moments_round_trip_with_their_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let path = saved_checkpoint(dir.path());
    let mut src = HostBackend::new();
    let src_model = model(&mut src, &tiny_config(), Precision::Fp32, true);
    fill(&mut src, &src_model, 1.0);

    let (mut be, m) = fresh();
    let meta = checkpoint::load(&path, &mut be, &m, Contents::WeightsAndOptimizer).unwrap();
    assert_eq!(snapshot(&mut be, &m), snapshot(&mut src, &src_model));
    assert_eq!(meta.run, run_info(7));
    assert_eq!(meta.config, tiny_config());
    assert_eq!(meta.precision, "fp32");
    assert!(meta.optimizer_state);
    assert_eq!(meta.tperf_version, tperf_runtime::TPERF_VERSION);
    assert_eq!(checkpoint::read_metadata(&path).unwrap(), meta);

    // The tensors are plain named f32 safetensors that other tools can read.
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let wte = st.tensor("wte").unwrap();
    assert_eq!((wte.dtype(), wte.shape()), (Dtype::F32, &[256usize, 8][..]));
    assert!(st.tensor("h1.mlp.fc.w.adam_v").is_ok());
    assert!(st.tensor("wte.grad").is_err(), "gradients are not saved");
}

#[test]
fn master_weights_also_fill_the_low_precision_copies() {
    let dir = tempfile::tempdir().unwrap();
    let path = saved_checkpoint(dir.path());
    let mut be = HostBackend::new();
    let m = model(&mut be, &tiny_config(), Precision::Bf16, true);
    checkpoint::load(&path, &mut be, &m, Contents::WeightsAndOptimizer).unwrap();
    for p in m.weights.all_params() {
        let copy = p.copy.as_ref().expect("a mixed policy keeps copies");
        assert_eq!(be.read_f32(copy).unwrap(), be.read_f32(&p.master).unwrap());
    }
}

#[test]
fn weights_only_checkpoints_serve_inference_but_not_resumption() {
    let dir = tempfile::tempdir().unwrap();
    let mut be = HostBackend::new();
    let train = model(&mut be, &tiny_config(), Precision::Fp32, true);
    fill(&mut be, &train, 3.0);
    let path = dir.path().join("weights.safetensors");
    checkpoint::save(&path, &mut be, &train, &run_info(1), Contents::Weights).unwrap();
    assert!(!checkpoint::read_metadata(&path).unwrap().optimizer_state);

    let mut inf_be = HostBackend::new();
    let inf = model(&mut inf_be, &tiny_config(), Precision::Fp32, false);
    checkpoint::load(&path, &mut inf_be, &inf, Contents::Weights).unwrap();
    let wte = inf.weights.token_embedding.master.clone();
    let want = be.read_f32(&train.weights.token_embedding.master).unwrap();
    assert_eq!(inf_be.read_f32(&wte).unwrap(), want);

    // A full checkpoint loads into an inference model too: the moments are skipped.
    let full = saved_checkpoint(dir.path());
    checkpoint::load(&full, &mut inf_be, &inf, Contents::Weights).unwrap();

    let err = load_fails(&path);
    assert!(
        matches!(err, CheckpointError::NoSavedOptimizerState { .. }),
        "{err}"
    );
    let err =
        checkpoint::load(&full, &mut inf_be, &inf, Contents::WeightsAndOptimizer).unwrap_err();
    assert!(
        matches!(err, CheckpointError::NoModelOptimizerState { .. }),
        "{err}"
    );
    let err = checkpoint::save(
        &path,
        &mut inf_be,
        &inf,
        &run_info(1),
        Contents::WeightsAndOptimizer,
    )
    .unwrap_err();
    assert!(
        matches!(err, CheckpointError::NoModelOptimizerState { .. }),
        "{err}"
    );
}

#[test]
fn a_missing_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let err = load_fails(&dir.path().join("none.safetensors"));
    assert!(matches!(err, CheckpointError::NotFound { .. }));
    assert!(err.to_string().starts_with("no checkpoint at"));
}

#[test]
fn a_truncated_file_is_not_a_valid_safetensors_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = saved_checkpoint(dir.path());
    let bytes = std::fs::read(&path).unwrap();
    for keep in [bytes.len() - 1, bytes.len() / 2, 100, 5, 0] {
        std::fs::write(&path, &bytes[..keep]).unwrap();
        let err = load_fails(&path);
        let msg = err.to_string();
        assert!(
            msg.contains("is not a valid safetensors file: "),
            "{keep}: {msg}"
        );
        if keep <= 100 {
            // Cut inside the header: reading the metadata alone fails too.
            assert!(checkpoint::read_metadata(&path).is_err());
        }
    }
}

#[test]
fn flipped_bytes_are_caught_in_the_header_and_in_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = saved_checkpoint(dir.path());
    let good = std::fs::read(&path).unwrap();

    // In the JSON header: '{' → '[' makes it unparseable.
    let mut bad = good.clone();
    bad[8] ^= b'{' ^ b'[';
    std::fs::write(&path, &bad).unwrap();
    let msg = load_fails(&path).to_string();
    assert!(msg.contains("is not a valid safetensors file"), "{msg}");

    // In the data: safetensors cannot see it, the checksum does.
    let mut bad = good.clone();
    let last = bad.len() - 3;
    bad[last] ^= 0x40;
    std::fs::write(&path, &bad).unwrap();
    let err = load_fails(&path);
    assert!(matches!(err, CheckpointError::Checksum { .. }), "{err}");
    assert!(err.to_string().contains("is corrupt: tensor '"), "{err}");
}

#[test]
fn a_different_model_names_the_first_differing_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = saved_checkpoint(dir.path());
    for (field, edit) in [
        (
            "d_model",
            &(|c: &mut tperf_core::config::ModelConfig| {
                c.d_model = 16;
                c.head_dim = 8;
            }) as &dyn Fn(&mut tperf_core::config::ModelConfig),
        ),
        ("n_layers", &|c| c.n_layers = 3),
        ("biases.qkv", &|c| c.biases.qkv = false),
        ("tied_embeddings", &|c| c.tied_embeddings = false),
    ] {
        let mut cfg = tiny_config();
        edit(&mut cfg);
        let mut be = HostBackend::new();
        let m = model(&mut be, &cfg, Precision::Fp32, true);
        let before = snapshot(&mut be, &m);
        let err = checkpoint::load(&path, &mut be, &m, Contents::WeightsAndOptimizer).unwrap_err();
        match &err {
            CheckpointError::ConfigMismatch { field: f, .. } => assert_eq!(f, field),
            other => panic!("{field}: {other}"),
        }
        assert!(err.to_string().contains("was saved from a different model"));
        assert_eq!(snapshot(&mut be, &m), before);
    }
    // The same architecture under another name loads.
    let mut renamed = tiny_config();
    renamed.name = "tiny-from-config-json".into();
    let mut be = HostBackend::new();
    let m = model(&mut be, &renamed, Precision::Fp32, true);
    assert!(checkpoint::load(&path, &mut be, &m, Contents::WeightsAndOptimizer).is_ok());
}

#[test]
fn a_missing_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = saved_checkpoint(dir.path());
    rewrite(&path, |ts| ts.retain(|(n, ..)| n != "h1.attn.proj.w"));
    let err = load_fails(&path);
    assert!(
        matches!(err, CheckpointError::MissingTensor { ref name, .. } if name == "h1.attn.proj.w")
    );
    assert!(err.to_string().contains("has no tensor 'h1.attn.proj.w'"));

    let path = saved_checkpoint(dir.path());
    rewrite(&path, |ts| ts.retain(|(n, ..)| n != "wpe.adam_m"));
    let err = load_fails(&path);
    assert!(matches!(err, CheckpointError::MissingTensor { ref name, .. } if name == "wpe.adam_m"));
}

#[test]
fn a_misshaped_tensor_is_named_with_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let path = saved_checkpoint(dir.path());
    // The same bytes (so the checksum holds), transposed shape.
    rewrite(&path, |ts| {
        for t in ts.iter_mut().filter(|t| t.0 == "h0.mlp.fc.w") {
            t.2 = vec![8, 16];
        }
    });
    let err = load_fails(&path);
    let msg = err.to_string();
    assert!(
        matches!(err, CheckpointError::ShapeMismatch { .. }),
        "{msg}"
    );
    assert!(
        msg.contains("'h0.mlp.fc.w' has shape [8, 16] in the checkpoint but [16, 8] in the model"),
        "{msg}"
    );
}

#[test]
fn a_non_f32_or_unknown_tensor_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = saved_checkpoint(dir.path());
    rewrite(&path, |ts| {
        for t in ts.iter_mut().filter(|t| t.0 == "ln_f.b") {
            // Same byte count: 8 f32 → 16 bf16 would change the shape, so use i32.
            t.1 = Dtype::I32;
        }
    });
    let err = load_fails(&path);
    assert!(matches!(err, CheckpointError::WrongDtype { .. }), "{err}");

    let path = saved_checkpoint(dir.path());
    rewrite(&path, |ts| {
        let extra = ts[0].clone();
        ts.push(("lora.a".into(), extra.1, extra.2, extra.3));
    });
    let err = load_fails(&path);
    assert!(
        matches!(err, CheckpointError::UnexpectedTensor { ref name, .. } if name == "lora.a"),
        "{err}"
    );
}

#[test]
fn a_safetensors_file_from_elsewhere_is_not_a_tperf_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hf.safetensors");
    let data = vec![0u8; 16];
    let view = TensorView::new(Dtype::F32, vec![4], &data).unwrap();
    safetensors::serialize_to_file([("w", view)], None, &path).unwrap();
    let err = load_fails(&path);
    assert!(matches!(err, CheckpointError::NotTperf { .. }), "{err}");
    assert!(checkpoint::read_metadata(&path).is_err());
}

#[test]
fn a_failed_save_leaves_the_previous_checkpoint_intact() {
    let dir = tempfile::tempdir().unwrap();
    let path = saved_checkpoint(dir.path());
    let good = std::fs::read(&path).unwrap();
    let files = || {
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(files(), ["ckpt.safetensors"]);

    // The backend fails partway through reading the weights.
    let mut be = HostBackend::new();
    let m = model(&mut be, &tiny_config(), Precision::Fp32, true);
    fill(&mut be, &m, 2.0);
    be.fail_reads_after = Some(10);
    let err = checkpoint::save(
        &path,
        &mut be,
        &m,
        &run_info(8),
        Contents::WeightsAndOptimizer,
    )
    .unwrap_err();
    assert!(matches!(err, CheckpointError::Backend { .. }), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), good);
    assert_eq!(files(), ["ckpt.safetensors"]);

    // Training diverged: a NaN in the weights must not replace the good checkpoint.
    be.fail_reads_after = None;
    let h1 = m.weights.layers[1].qkv.master.clone();
    let mut w = be.read_f32(&h1).unwrap();
    w[5] = f32::NAN;
    be.write_f32(&h1, &w).unwrap();
    let err = checkpoint::save(
        &path,
        &mut be,
        &m,
        &run_info(8),
        Contents::WeightsAndOptimizer,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("'h1.attn.qkv.w' holds NaN at index 5"),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), good);
    assert_eq!(files(), ["ckpt.safetensors"]);

    // The final rename fails (the destination is a non-empty directory): the temporary file
    // is removed.
    w[5] = 0.0;
    be.write_f32(&h1, &w).unwrap();
    let blocked = dir.path().join("blocked");
    std::fs::create_dir_all(blocked.join("inside")).unwrap();
    let err = checkpoint::save(
        &blocked,
        &mut be,
        &m,
        &run_info(8),
        Contents::WeightsAndOptimizer,
    )
    .unwrap_err();
    assert!(matches!(err, CheckpointError::Io { .. }), "{err}");
    assert_eq!(files(), ["blocked", "ckpt.safetensors"]);

    // And a good save replaces the checkpoint whole.
    checkpoint::save(
        &path,
        &mut be,
        &m,
        &run_info(8),
        Contents::WeightsAndOptimizer,
    )
    .unwrap();
    assert_eq!(checkpoint::read_metadata(&path).unwrap().run.step, 8);
    assert_eq!(files(), ["blocked", "ckpt.safetensors"]);
}

#[test]
fn saving_creates_the_run_directory() {
    let dir = tempfile::tempdir().unwrap();
    let mut be = HostBackend::new();
    let m = model(&mut be, &tiny_config(), Precision::Fp32, true);
    let path = dir.path().join("runs/a/ckpt.safetensors");
    checkpoint::save(&path, &mut be, &m, &run_info(0), Contents::Weights).unwrap();
    assert!(path.is_file());
}
