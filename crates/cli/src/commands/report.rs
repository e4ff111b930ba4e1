//! `kiln report EXPERIMENT_ID`: the sweep's HTML report and Markdown summary.

use std::path::Path;

use anyhow::{Context, Result};
use kiln_eval::Lm;
use kiln_eval::decode::GenerateOptions;
use kiln_model::Flex;
use kiln_store::Store;

use crate::Cli;

const PROBES: &[&str] = &[
    "The food was good but the service was terrible. I feel",
    "This weekend I plan to",
];

pub async fn run(
    cli: &Cli,
    experiment: i64,
    metric: Option<&str>,
    out: Option<&Path>,
) -> Result<()> {
    let store = Store::open_read_only(&cli.store)
        .await
        .with_context(|| format!("opening the results store {}", cli.store_label()))?;
    let mut report = kiln_report::gather(&store, experiment, metric).await?;
    store.close().await;
    // The best trial's model: the last model directory its run wrote.
    let model_dir = report.best.and_then(|i| {
        report.trials[i]
            .artifacts
            .iter()
            .rev()
            .map(|(_, p)| p)
            .find(|p| p.ends_with("model/model.safetensors"))
            .and_then(|p| p.parent().map(Path::to_path_buf))
    });
    if let Some(dir) = model_dir.filter(|d| d.join("tokenizer.json").is_file()) {
        match Lm::<Flex>::load(&dir, &Default::default()) {
            Ok(lm) => {
                for probe in PROBES {
                    if let Ok(rows) = lm.top_k(probe, 8) {
                        report.top_k.push((
                            (*probe).to_owned(),
                            rows.into_iter().map(|r| (r.token, r.prob)).collect(),
                        ));
                    }
                    let opts = GenerateOptions {
                        max_new_tokens: 20,
                        temperature: 0.0,
                        ..GenerateOptions::default()
                    };
                    if let Ok((_, text)) = lm.generate(probe, &opts) {
                        report.samples.push(((*probe).to_owned(), text));
                    }
                }
            }
            Err(e) => eprintln!(
                "warning: the best trial's model {} does not load: {e}",
                dir.display()
            ),
        }
    }
    let dir = out.map_or_else(|| cli.results.join("reports"), Path::to_path_buf);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let stem = format!("{}-{experiment}", report.name);
    let html = dir.join(format!("{stem}.html"));
    let md = dir.join(format!("{stem}.md"));
    let markdown = kiln_report::markdown(&report);
    for (path, text) in [(&html, kiln_report::html(&report)), (&md, markdown.clone())] {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{markdown}");
    eprintln!("report: {} (and {})", html.display(), md.display());
    Ok(())
}
