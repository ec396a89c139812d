use tperf_core::presets;
use tperf_runtime::tokenizer::{Tokenizer, TokenizerError, GPT2_EOT, GPT2_VOCAB};

const PARAGRAPH: &str =
    "The quick brown fox — naïve café, 数学 and 🙂 —\n\tjumps over 1234 lazy dogs.  ";

#[test]
fn gpt2_encodes_hello_world_as_openai_does() {
    let tok = Tokenizer::gpt2();
    assert_eq!(tok.encode("Hello world"), vec![15496, 995]);
    assert_eq!(tok.decode(&[15496, 995]), "Hello world");
    assert_eq!(tok.vocab_size(), GPT2_VOCAB);
    assert_eq!(tok.name(), "gpt2");
}

#[test]
fn both_tokenizers_round_trip_unicode_text() {
    for tok in [Tokenizer::gpt2(), Tokenizer::byte()] {
        let ids = tok.encode(PARAGRAPH);
        assert!(ids.iter().all(|&id| (id as usize) < tok.vocab_size()));
        assert_eq!(tok.decode(&ids), PARAGRAPH, "{}", tok.name());
    }
}

#[test]
fn byte_tokenizer_is_utf8_bytes() {
    let tok = Tokenizer::byte();
    assert_eq!(tok.encode("é!"), vec![0xC3, 0xA9, b'!' as u32]);
    assert_eq!(tok.vocab_size(), 256);
    assert_eq!(tok.eot(), None);
}

#[test]
fn decoding_never_fails_on_ids_a_model_can_sample() {
    let gpt2 = Tokenizer::gpt2();
    // A GPT-2 model padded to 50,304 rows can sample ids the tokenizer does not have.
    assert_eq!(gpt2.decode(&[15496, 50_300]), "Hello\u{FFFD}");
    // An emoji is several byte-level tokens; stopping inside it yields U+FFFD, not an error.
    let ids = gpt2.encode("🙂");
    assert!(ids.len() > 1);
    assert!(gpt2.decode(&ids[..1]).contains('\u{FFFD}'));
    assert_eq!(Tokenizer::byte().decode(&[0xC3, 300]), "\u{FFFD}\u{FFFD}");
}

#[test]
fn end_of_text_in_a_data_file_is_ordinary_text() {
    let tok = Tokenizer::gpt2();
    let ids = tok.encode("a<|endoftext|>b");
    assert!(!ids.contains(&GPT2_EOT));
    assert_eq!(tok.decode(&ids), "a<|endoftext|>b");
    assert_eq!(tok.decode(&[GPT2_EOT]), "<|endoftext|>");
}

#[test]
fn names_resolve_and_unknown_names_are_refused() {
    assert_eq!(Tokenizer::from_name("GPT2").unwrap().name(), "gpt2");
    assert_eq!(Tokenizer::from_name("r50k_base").unwrap().name(), "gpt2");
    assert_eq!(Tokenizer::from_name("byte").unwrap().name(), "byte");
    let err = Tokenizer::from_name("sentencepiece").unwrap_err();
    assert_eq!(err, TokenizerError::Unknown("sentencepiece".into()));
    assert!(err.to_string().contains("use gpt2"));
}

#[test]
fn a_model_vocabulary_smaller_than_the_tokenizer_is_refused() {
    let seed_lm = presets::find("small").unwrap().config; // V = 10,000
    let err = Tokenizer::gpt2().check_model(&seed_lm).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("10000") && msg.contains("50257"), "{msg}");
    assert!(msg.contains("--tokenizer byte"), "{msg}");
    assert!(Tokenizer::byte().check_model(&seed_lm).is_ok());
    let gpt2 = presets::find("gpt2-124m").unwrap().config;
    assert!(Tokenizer::gpt2().check_model(&gpt2).is_ok());
    let mut padded = gpt2.clone();
    padded.vocab_size = 50_304;
    assert!(Tokenizer::gpt2().check_model(&padded).is_ok());
    assert_eq!(Tokenizer::default_for(&gpt2).name(), "gpt2");
    assert_eq!(Tokenizer::default_for(&seed_lm).name(), "byte");
}

#[test]
fn gpt2_decodes_every_token_to_tiktokens_own_bytes() {
    // The decoding table is each token's bytes end to end; an offset off by one would still
    // decode the whole vocabulary at once correctly, so each token is checked alone.
    let bpe = tiktoken_rs::r50k_base_singleton();
    let tok = Tokenizer::gpt2();
    for id in 0..GPT2_VOCAB as u32 {
        let want: Vec<u8> = bpe._decode_native_and_split(vec![id]).flatten().collect();
        assert_eq!(
            tok.decode(&[id]),
            String::from_utf8_lossy(&want),
            "token {id}"
        );
    }
}
