//! Tokenizers: GPT-2's byte-level BPE built from `vocab.json` + `merges.txt` exactly as
//! Hugging Face's `GPT2TokenizerFast` builds it, `tokenizer.json` files, training a byte-level
//! BPE on a corpus, and added special tokens.

use std::path::{Path, PathBuf};

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainer};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::byte_level::ByteLevel as ByteLevelProcessor;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{Error, Result};
use crate::specials::{self, Specials};

/// A token's byte span in the encoded text: `(start, end)`.
pub type Span = (usize, usize);

/// GPT-2's end-of-text token, also its padding token.
pub const GPT2_EOS: &str = "<|endoftext|>";

/// A tokenizer with the facts kiln needs about it.
#[derive(Clone)]
pub struct Tok {
    inner: Tokenizer,
    /// Where it came from (a file or directory), for messages.
    pub origin: PathBuf,
    /// Set when the tokenizer is a plain GPT-2-style byte-level BPE, so
    /// [`Tok::encode_batch`] can use the fast path of [`crate::pretok`]; the merges are built
    /// with the model from GPT-2's files, or read from the model on first use.
    fast: Option<(
        crate::pretok::Splitter,
        std::sync::Arc<std::sync::OnceLock<Option<crate::pretok::Merges>>>,
    )>,
    /// The special tokens its configuration files name (empty for a bare `tokenizer.json`
    /// or GPT-2's `vocab.json` + `merges.txt`).
    specials: Specials,
}

impl std::fmt::Debug for Tok {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tok")
            .field("origin", &self.origin)
            .field("vocab", &self.vocab_size())
            .finish()
    }
}

/// Checks every `Precompiled` normalizer in `normalizer` (a `Sequence` nests them): the
/// tokenizers library reads them with `expect`, panicking on a bad one.
fn check_precompiled(normalizer: &serde_json::Value) -> std::result::Result<(), String> {
    match normalizer["type"].as_str() {
        Some("Precompiled") => {
            serde_json::from_value::<tokenizers::normalizers::precompiled::Precompiled>(
                normalizer.clone(),
            )
            .map_err(|e| format!("bad Precompiled normalizer: {e}"))?;
        }
        Some("Sequence") => {
            for n in normalizer["normalizers"].as_array().into_iter().flatten() {
                check_precompiled(n)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn tk_err(path: &Path) -> impl Fn(tokenizers::Error) -> Error + '_ {
    move |e| Error::Tokenizer {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

/// GPT-2's `vocab.json` (token → id) and `merges.txt` (one `a b` pair per line by rank; a
/// `#version` line is skipped), read as the tokenizers library reads them, with errors that
/// name the file (and the line of a bad merge).
fn read_gpt2_files(
    vocab: &Path,
    merges: &Path,
) -> Result<(tokenizers::models::bpe::Vocab, Vec<(String, String)>)> {
    let invalid = |path: &Path, message: String| Error::Tokenizer {
        path: path.to_owned(),
        message,
    };
    let bytes = std::fs::read(vocab).map_err(crate::error::io("cannot read", vocab))?;
    let VocabFile(map) = serde_json::from_slice(&bytes)
        .map_err(|e| invalid(vocab, format!("not a token -> id JSON object: {e}")))?;
    let text = std::fs::read_to_string(merges).map_err(crate::error::io("cannot read", merges))?;
    let mut pairs = Vec::with_capacity(map.len());
    for (i, line) in text.lines().enumerate() {
        if line.starts_with("#version") {
            continue;
        }
        match line.split_once(' ') {
            Some((a, b)) if !b.contains(' ') => pairs.push((a.to_owned(), b.to_owned())),
            _ => {
                return Err(invalid(
                    merges,
                    format!("line {}: {line:?} is not two tokens", i + 1),
                ));
            }
        }
    }
    Ok((map, pairs))
}

/// A `vocab.json` object read straight into the library's map (no intermediate JSON tree).
struct VocabFile(tokenizers::models::bpe::Vocab);

impl<'de> serde::Deserialize<'de> for VocabFile {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = VocabFile;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of token -> id")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut access: A,
            ) -> std::result::Result<VocabFile, A::Error> {
                let mut map = tokenizers::models::bpe::Vocab::default();
                map.reserve(access.size_hint().unwrap_or(0));
                while let Some((token, id)) = access.next_entry::<String, u32>()? {
                    map.insert(token, id);
                }
                Ok(VocabFile(map))
            }
        }
        d.deserialize_map(Visit)
    }
}

impl Tok {
    /// Loads a tokenizer from `path`: a `tokenizer.json` file, or a directory holding either
    /// `tokenizer.json` or GPT-2's `vocab.json` + `merges.txt`, with the special tokens that
    /// `tokenizer_config.json` / `special_tokens_map.json` beside it name.
    ///
    /// # Errors
    /// [`Error::TokenizerMissing`] naming the path looked for; [`Error::Tokenizer`] when a file
    /// is not a valid tokenizer, or names a special token its vocabulary lacks.
    pub fn load(path: &Path) -> Result<Self> {
        let mut tok = Self::load_tokenizer(path)?;
        let dir = if path.is_dir() {
            path
        } else {
            path.parent().unwrap_or(Path::new("."))
        };
        tok.read_specials(dir)?;
        Ok(tok)
    }

    /// Takes the special tokens that `tokenizer_config.json` / `special_tokens_map.json` in
    /// `dir` name (those files that exist), for a tokenizer built from its files one by one.
    ///
    /// # Errors
    /// A file that is not valid, or a named token the vocabulary lacks.
    pub fn read_specials(&mut self, dir: &Path) -> Result<()> {
        self.specials = Specials::read(dir)?;
        self.check_specials()
    }

    /// [`Tok::load`], then `add_prefix_space` set as given (`None`: as the file has it).
    ///
    /// # Errors
    /// As [`Tok::load`] and [`Tok::with_add_prefix_space`].
    pub fn load_with(path: &Path, add_prefix_space: Option<bool>) -> Result<Self> {
        let tok = Self::load(path)?;
        match add_prefix_space {
            Some(on) => tok.with_add_prefix_space(on),
            None => Ok(tok),
        }
    }

    fn load_tokenizer(path: &Path) -> Result<Self> {
        if path.is_dir() {
            let json = path.join("tokenizer.json");
            if json.is_file() {
                return Self::from_json(&json);
            }
            let vocab = path.join("vocab.json");
            let merges = path.join("merges.txt");
            for f in [&vocab, &merges] {
                if !f.is_file() {
                    return Err(Error::TokenizerMissing { path: f.clone() });
                }
            }
            return Self::gpt2(&vocab, &merges);
        }
        if !path.is_file() {
            return Err(Error::TokenizerMissing {
                path: path.to_owned(),
            });
        }
        Self::from_json(path)
    }

    /// Loads a `tokenizer.json`.
    ///
    /// # Errors
    /// When the file is missing or invalid.
    pub fn from_json(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::TokenizerMissing {
                path: path.to_owned(),
            });
        }
        let bytes = std::fs::read(path).map_err(crate::error::io("cannot read", path))?;
        let invalid = |message: String| Error::Tokenizer {
            path: path.to_owned(),
            message,
        };
        // The tokenizers library panics on some malformed files (a syntax error inside
        // `decoder`, a bad `Precompiled` normalizer), so the file is checked first.
        let json: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| invalid(format!("not a JSON file: {e}")))?;
        check_precompiled(&json["normalizer"]).map_err(invalid)?;
        let text = std::str::from_utf8(&bytes).map_err(|e| invalid(e.to_string()))?;
        let inner: Tokenizer = text.parse().map_err(tk_err(path))?;
        Ok(Self::wrap(inner, path.to_owned()))
    }

    /// GPT-2's byte-level BPE from `vocab.json` and `merges.txt`, configured as Hugging Face's
    /// `GPT2TokenizerFast`: no prefix space, the GPT-2 split regex, `<|endoftext|>` as a
    /// special token.
    ///
    /// # Errors
    /// When a file is missing or invalid.
    pub fn gpt2(vocab: &Path, merges: &Path) -> Result<Self> {
        for f in [vocab, merges] {
            if !f.is_file() {
                return Err(Error::TokenizerMissing { path: f.to_owned() });
            }
        }
        // The files are read here rather than by `BPE::from_file`, which parses vocab.json
        // into a tree of JSON values first (most of its 70 ms), and the merges the fast path
        // needs are built from the same parse.
        let (vocab_map, pairs) = read_gpt2_files(vocab, merges)?;
        let fast_merges = crate::pretok::Merges::from_pairs(|t| vocab_map.get(t).copied(), &pairs);
        let bpe = BPE::builder()
            .vocab_and_merges(vocab_map, pairs)
            .build()
            .map_err(tk_err(merges))?;
        let mut inner = Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        inner.with_post_processor(Some(ByteLevelProcessor::new(true, false, true)));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        inner.add_special_tokens(&[AddedToken::from(GPT2_EOS, true)]);
        let tok = Self::wrap(inner, vocab.parent().unwrap_or(vocab).to_owned());
        if let Some((_, cell)) = &tok.fast {
            // A fresh cell: it cannot have been set yet.
            let _ = cell.set(fast_merges);
        }
        Ok(tok)
    }

    /// Trains a byte-level BPE with `vocab_size` entries (special tokens included) on `texts`,
    /// with `<|endoftext|>` as its first special token.
    ///
    /// # Errors
    /// When training fails (e.g. an empty corpus).
    pub fn train<I, S>(texts: I, vocab_size: usize, min_frequency: u64) -> Result<Self>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
    {
        let origin = PathBuf::from("<trained>");
        let mut inner = Tokenizer::new(BPE::default());
        inner.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        inner.with_post_processor(Some(ByteLevelProcessor::new(true, false, true)));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        let mut trainer: TrainerWrapper = BpeTrainer::builder()
            .vocab_size(vocab_size)
            .min_frequency(min_frequency)
            .show_progress(false)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .special_tokens(vec![AddedToken::from(GPT2_EOS, true)])
            .build()
            .into();
        inner.train(&mut trainer, texts).map_err(tk_err(&origin))?;
        Ok(Self::wrap(inner, origin))
    }

    /// Wraps a library tokenizer, deciding whether the fast batch path applies: no
    /// normalizer, a BPE model, and GPT-2's byte-level pre-tokenizer (regex on, no prefix
    /// space).
    fn wrap(inner: Tokenizer, origin: PathBuf) -> Self {
        let pre = inner
            .get_pre_tokenizer()
            .and_then(|p| serde_json::to_value(p).ok());
        let gpt2_pre = pre.is_some_and(|p| {
            p["type"] == "ByteLevel" && p["add_prefix_space"] == false && p["use_regex"] == true
        });
        let bpe =
            matches!(inner.get_model(), tokenizers::ModelWrapper::BPE(b) if b.dropout.is_none());
        let fast = gpt2_pre && bpe && inner.get_normalizer().is_none();
        Self {
            inner,
            origin,
            fast: fast.then(|| (crate::pretok::Splitter::default(), Default::default())),
            specials: Specials::default(),
        }
    }

    fn check_specials(&self) -> Result<()> {
        let s = &self.specials;
        for (name, token) in [
            ("bos", &s.bos),
            ("eos", &s.eos),
            ("pad", &s.pad),
            ("unk", &s.unk),
        ] {
            if let Some(t) = token
                && self.token_id(t).is_none()
            {
                return Err(Error::Tokenizer {
                    path: self.origin.clone(),
                    message: format!(
                        "its configuration names {t:?} as the {name} token, which is not in its vocabulary"
                    ),
                });
            }
        }
        Ok(())
    }

    /// The tokenizer with `add_prefix_space` set (see
    /// [`specials::set_add_prefix_space`]): with it on, `"good"` encodes as `" good"` does.
    ///
    /// # Errors
    /// When the tokenizer has no pre-tokenizer or normalizer the option applies to.
    pub fn with_add_prefix_space(self, on: bool) -> Result<Self> {
        let invalid = |message: String| Error::Tokenizer {
            path: self.origin.clone(),
            message,
        };
        let mut json: serde_json::Value =
            serde_json::from_str(&self.to_json()?).map_err(|e| invalid(e.to_string()))?;
        specials::set_add_prefix_space(&mut json, on).map_err(&invalid)?;
        let inner: Tokenizer = json
            .to_string()
            .parse()
            .map_err(|e: tokenizers::Error| invalid(e.to_string()))?;
        let mut tok = Self::wrap(inner, self.origin.clone());
        tok.specials = self.specials;
        // The option changes the pre-tokenizer, not the model: its merges stay valid.
        if let (Some((_, cell)), Some((_, built))) = (&mut tok.fast, &self.fast) {
            *cell = built.clone();
        }
        Ok(tok)
    }

    /// The special tokens its configuration names.
    pub fn specials(&self) -> &Specials {
        &self.specials
    }

    /// Adds special tokens (e.g. instruction templates that must stay single tokens) and
    /// returns how many were new, so the model can resize its embeddings.
    pub fn add_special_tokens(&mut self, tokens: &[String]) -> usize {
        let tokens: Vec<AddedToken> = tokens
            .iter()
            .map(|t| AddedToken::from(t.clone(), true))
            .collect();
        self.inner.add_special_tokens(&tokens)
    }

    /// Names `bos` and/or `eos` as this tokenizer's BOS and EOS (kept with datasets made from
    /// it), adding each as a special token when the vocabulary lacks it; returns how many
    /// were new.
    pub fn set_bos_eos(&mut self, bos: Option<&str>, eos: Option<&str>) -> usize {
        let mut added = 0;
        for (token, slot) in [(bos, &mut self.specials.bos), (eos, &mut self.specials.eos)] {
            if let Some(t) = token {
                if self.inner.token_to_id(t).is_none() {
                    added += self.inner.add_special_tokens(&[AddedToken::from(t, true)]);
                }
                *slot = Some(t.to_owned());
            }
        }
        added
    }

    /// Number of entries, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of an exact vocabulary entry (byte-level form, e.g. `Ġgood`) or added token.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The vocabulary entry of an id.
    pub fn id_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The end-of-sequence token: the configured `eos_token`, else GPT-2's `<|endoftext|>`
    /// when the vocabulary has it.
    pub fn eos_token(&self) -> Option<&str> {
        match &self.specials.eos {
            Some(t) => Some(t),
            None => self.token_id(GPT2_EOS).map(|_| GPT2_EOS),
        }
    }

    /// The end-of-sequence id (see [`Tok::eos_token`]; GPT-2: 50256).
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_token().and_then(|t| self.token_id(t))
    }

    /// The beginning-of-sequence id: the configured `bos_token`, else the end-of-sequence
    /// id (GPT-2 uses `<|endoftext|>` for both).
    pub fn bos_id(&self) -> Option<u32> {
        match &self.specials.bos {
            Some(t) => self.token_id(t),
            None => self.eos_id(),
        }
    }

    /// The padding id: the configured `pad_token`, else the end-of-sequence id.
    pub fn pad_id(&self) -> Option<u32> {
        match &self.specials.pad {
            Some(t) => self.token_id(t),
            None => self.eos_id(),
        }
    }

    /// Encodes text (special tokens in the text are recognised; nothing is added around it).
    ///
    /// # Errors
    /// When the tokenizer fails.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .inner
            .encode_fast(text, false)
            .map_err(tk_err(&self.origin))?
            .get_ids()
            .to_vec())
    }

    /// Encodes text and returns ids with each token's byte span in `text`.
    ///
    /// # Errors
    /// When the tokenizer fails.
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<u32>, Vec<Span>)> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(tk_err(&self.origin))?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    /// Prepares the fast batch path (reads the merges from the model of a `tokenizer.json`;
    /// a tokenizer loaded from GPT-2's files has them already) so a caller can do it on
    /// another thread while it reads data; [`Tok::encode_batch`] does it on first use
    /// otherwise. Returns whether the fast path applies.
    pub fn prepare_batch(&self) -> bool {
        self.fast_path().is_some()
    }

    fn fast_path(&self) -> Option<(&crate::pretok::Splitter, &crate::pretok::Merges)> {
        match (&self.fast, self.inner.get_model()) {
            (Some((splitter, merges)), tokenizers::ModelWrapper::BPE(bpe)) => merges
                .get_or_init(|| crate::pretok::Merges::from_bpe(bpe))
                .as_ref()
                .map(|m| (splitter, m)),
            _ => None,
        }
    }

    /// Encodes many texts in parallel; ids equal [`Tok::encode`]'s for each text.
    ///
    /// GPT-2-style tokenizers take the fast path of [`crate::pretok`] (texts holding an added
    /// token go through the library); others use the library's batch encoder.
    ///
    /// # Errors
    /// When the tokenizer fails.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        use rayon::prelude::*;
        let Some((splitter, merges)) = self.fast_path() else {
            let encs = self
                .inner
                .encode_batch_fast(texts.to_vec(), false)
                .map_err(tk_err(&self.origin))?;
            return Ok(encs.into_iter().map(|e| e.get_ids().to_vec()).collect());
        };
        let added: Vec<String> = self
            .inner
            .get_added_tokens_decoder()
            .values()
            .map(|t| t.content.clone())
            .collect();
        let chunk = texts
            .len()
            .div_ceil(rayon::current_num_threads().max(1))
            .max(1);
        let parts: Vec<Result<Vec<Vec<u32>>>> = texts
            .par_chunks(chunk)
            .map(|part| {
                let mut fast = crate::pretok::FastEncoder::new(merges, splitter);
                part.iter()
                    .map(|text| {
                        if added.iter().any(|a| text.contains(a.as_str())) {
                            self.encode(text)
                        } else {
                            Ok(fast.encode(text))
                        }
                    })
                    .collect()
            })
            .collect();
        let mut out = Vec::with_capacity(texts.len());
        for part in parts {
            out.extend(part?);
        }
        Ok(out)
    }

    /// Decodes ids to text (special tokens kept).
    ///
    /// # Errors
    /// When an id is outside the vocabulary.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(tk_err(&self.origin))
    }

    /// The `tokenizer.json` text.
    ///
    /// # Errors
    /// When serialization fails.
    pub fn to_json(&self) -> Result<String> {
        self.inner.to_string(true).map_err(tk_err(&self.origin))
    }

    /// Writes `tokenizer.json` to `path` (and, when the tokenizer names special tokens,
    /// [`specials::MAP_FILE`] beside it) and returns the blake3 of what it wrote: what a
    /// dataset records to say which tokenizer made it.
    ///
    /// # Errors
    /// When writing fails.
    pub fn save(&self, path: &Path) -> Result<String> {
        // Compact JSON: a 50k-entry vocabulary pretty-printed takes twice as long to write.
        let json = self.inner.to_string(false).map_err(tk_err(&self.origin))?;
        let mut hasher = blake3::Hasher::new();
        hasher.update(json.as_bytes());
        std::fs::write(path, json).map_err(crate::error::io("cannot write", path))?;
        if !self.specials.is_empty() {
            let map = self.specials.to_json();
            hasher.update(map.as_bytes());
            let map_path = path.with_file_name(specials::MAP_FILE);
            std::fs::write(&map_path, map).map_err(crate::error::io("cannot write", &map_path))?;
        }
        Ok(hasher.finalize().to_hex().to_string())
    }

    /// Resolves a label to one token id: an exact vocabulary entry (`good`, `Ġgood`) first,
    /// otherwise text that must encode to exactly one token (`" good"`).
    ///
    /// # Errors
    /// [`Error::Label`] when the label is neither.
    pub fn label_id(&self, label: &str) -> Result<u32> {
        if let Some(id) = self.token_id(label) {
            return Ok(id);
        }
        let ids = self.encode(label)?;
        match ids.as_slice() {
            [id] => Ok(*id),
            [] => Err(Error::Label {
                label: label.to_owned(),
                message: "is empty".into(),
            }),
            many => Err(Error::Label {
                label: label.to_owned(),
                message: format!(
                    "is not a vocabulary entry and encodes to {} tokens {:?}; a label must be one token",
                    many.len(),
                    many
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GPT-2-style tokenizer directory: the 256 byte characters, a few merges.
    fn gpt2_files(dir: &Path, merges: &str) -> (PathBuf, PathBuf) {
        let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
        alphabet.sort_unstable();
        let mut vocab: Vec<String> = alphabet.iter().map(char::to_string).collect();
        vocab.extend(["Ġt", "he", "Ġthe", "in", "Ġin", GPT2_EOS].map(String::from));
        let map: serde_json::Map<String, serde_json::Value> = vocab
            .into_iter()
            .enumerate()
            .map(|(i, t)| (t, serde_json::json!(i)))
            .collect();
        let (v, m) = (dir.join("vocab.json"), dir.join("merges.txt"));
        std::fs::write(&v, serde_json::Value::Object(map).to_string()).expect("write vocab");
        std::fs::write(&m, merges).expect("write merges");
        (v, m)
    }

    const MERGES: &str = "#version: 0.2\nĠ t\nh e\nĠt he\ni n\nĠ in\n";

    #[test]
    fn gpt2_files_build_the_model_the_library_reads_from_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (v, m) = gpt2_files(dir.path(), MERGES);
        let tok = Tok::gpt2(&v, &m).expect("loads");
        let library = BPE::from_file(&v.to_string_lossy(), &m.to_string_lossy())
            .build()
            .expect("the library reads the files");
        let tokenizers::ModelWrapper::BPE(ours) = tok.inner.get_model() else {
            panic!("not a BPE model");
        };
        assert_eq!(
            serde_json::to_value(ours).expect("serializes"),
            serde_json::to_value(&library).expect("serializes")
        );
        let texts = [
            "the thin thing in the inn",
            "  then\n\nthe",
            "x<|endoftext|>the",
        ];
        let batch = tok.encode_batch(&texts).expect("batch");
        for (text, ids) in texts.iter().zip(&batch) {
            assert_eq!(ids, &tok.encode(text).expect("encodes"), "{text:?}");
        }
        // " the" is one token, " thin" is " t" + "h" + "in".
        assert_eq!(tok.encode(" the").expect("encodes"), [258]);
        assert_eq!(
            tok.encode(" thin").expect("encodes"),
            [256, b'h' as u32 - 33, 259]
        );
    }

    #[test]
    fn bad_gpt2_files_are_refused_naming_the_file_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (v, m) = gpt2_files(dir.path(), "#version: 0.2\nĠ t\nh e x\n");
        let err = Tok::gpt2(&v, &m)
            .expect_err("three tokens on a line")
            .to_string();
        assert!(
            err.contains("merges.txt") && err.contains("line 3"),
            "{err}"
        );

        let (v, m) = gpt2_files(dir.path(), "Ġ t\nq z\n");
        let err = Tok::gpt2(&v, &m)
            .expect_err("qz is not in the vocabulary")
            .to_string();
        assert!(err.contains("merges.txt") && err.contains("qz"), "{err}");

        std::fs::write(&v, "[1, 2]").expect("write");
        let err = Tok::gpt2(&v, &m).expect_err("not an object").to_string();
        assert!(
            err.contains("vocab.json") && err.contains("object"),
            "{err}"
        );
        std::fs::write(&v, "{\"a\": 1, \"b\": ").expect("write");
        let err = Tok::gpt2(&v, &m).expect_err("truncated").to_string();
        assert!(err.contains("vocab.json"), "{err}");
    }
}
