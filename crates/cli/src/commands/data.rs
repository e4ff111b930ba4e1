//! `kiln data inspect DIR`: a dataset's manifest and a few decoded rows.

use anyhow::{Context, Result};
use kiln_data::shard::{Manifest, ShardReader};
use kiln_data::tokenizer::Tok;

use crate::args::DataCommand;

pub fn run(command: &DataCommand) -> Result<()> {
    match command {
        DataCommand::Inspect { dir, split, rows } => {
            let m = Manifest::load(dir)?;
            println!(
                "dataset {} ({:?}, schema v{})",
                dir.display(),
                m.kind,
                m.schema_version
            );
            for s in &m.sources {
                println!(
                    "  source {} ({} bytes, blake3 {})",
                    s.source,
                    s.bytes,
                    &s.blake3[..16]
                );
            }
            println!(
                "  tokenizer {} entries ({} added), blake3 {}",
                m.vocab_size,
                m.added_tokens,
                &m.tokenizer_hash[..16]
            );
            println!("  rows read {}, truncated {}", m.rows_read, m.truncated);
            for (reason, n) in &m.rejected {
                println!("  rejected {n}: {reason}");
            }
            for (name, l) in &m.label_map {
                println!("  label {name}: {:?} (id {})", l.token, l.id);
            }
            for (name, s) in &m.splits {
                let labels = s
                    .label_counts
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                println!(
                    "  split {name}: {} rows, {} tokens, {} shard(s){}",
                    s.rows,
                    s.tokens,
                    s.shards.len(),
                    if labels.is_empty() {
                        String::new()
                    } else {
                        format!(" ({labels})")
                    }
                );
            }
            let tok =
                Tok::from_json(&dir.join("tokenizer.json")).context("the dataset's tokenizer")?;
            let mut reader = ShardReader::open(dir, split, *rows, None)?;
            if let Some(batch) = reader.next() {
                for (i, ex) in batch?.iter().enumerate() {
                    println!("\n{split} row {i}: {} tokens", ex.input_ids.len());
                    if let Some(label) = ex.label {
                        println!(
                            "  label {label} {:?}",
                            tok.id_token(label).unwrap_or_default()
                        );
                    }
                    println!("  text: {:?}", tok.decode(&ex.input_ids)?);
                    if let Some(labels) = &ex.labels {
                        // Runs of masked tokens in [brackets]: the model does not learn to predict them.
                        let mut shown = String::new();
                        for (masked, ids) in runs(&ex.input_ids, labels) {
                            let text = tok.decode(&ids)?;
                            if masked {
                                shown.push_str(&format!("[{text}]"))
                            } else {
                                shown.push_str(&text)
                            }
                        }
                        let trained = labels.iter().filter(|&&l| l != -100).count();
                        println!(
                            "  labels: {trained} trained, {} masked (masked tokens in [brackets]):",
                            labels.len() - trained
                        );
                        println!("  {shown:?}");
                    }
                }
            }
            Ok(())
        }
    }
}

/// Consecutive tokens grouped by whether they are masked (label −100).
fn runs(ids: &[u32], labels: &[i32]) -> Vec<(bool, Vec<u32>)> {
    let mut out: Vec<(bool, Vec<u32>)> = Vec::new();
    for (&id, &label) in ids.iter().zip(labels) {
        let masked = label == -100;
        match out.last_mut() {
            Some((m, run)) if *m == masked => run.push(id),
            _ => out.push((masked, vec![id])),
        }
    }
    out
}
