//! `kiln tokenize --tokenizer T "text"`: ids and tokens of a text.

use std::path::Path;

use anyhow::{Context, Result};
use kiln_data::tokenizer::Tok;

pub fn run(tokenizer: &Path, add_prefix_space: Option<bool>, text: &str, json: bool) -> Result<()> {
    let tok = Tok::load_with(tokenizer, add_prefix_space)
        .with_context(|| format!("loading the tokenizer {}", tokenizer.display()))?;
    let ids = tok.encode(text)?;
    let tokens: Vec<String> = ids
        .iter()
        .map(|&id| tok.id_token(id).unwrap_or_default())
        .collect();
    if json {
        println!("{}", serde_json::json!({"ids": ids, "tokens": tokens}));
    } else {
        println!("{} token(s)", ids.len());
        for (id, token) in ids.iter().zip(&tokens) {
            println!("{id:>8}  {token:?}");
        }
    }
    Ok(())
}
