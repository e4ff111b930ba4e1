//! Times the phases of building the sentiment140 dataset (development aid, not committed).
use std::time::Instant;
fn main() {
    let data = std::path::PathBuf::from(std::env::args().nth(1).expect("data dir"));
    let csv = data.join("sentiment140/training.sample.csv");
    let t = Instant::now();
    let tok = kiln_data::tokenizer::Tok::load(&data.join("gpt2-tokenizer")).expect("tok");
    println!("load tokenizer {:?}", t.elapsed());
    let text = std::fs::read_to_string(data.join("gpt2-tokenizer/merges.txt")).expect("m");
    let t = Instant::now();
    let m = kiln_data::pretok::Merges::from_merges_txt(|s| tok.token_id(s), &text);
    println!(
        "from_merges_txt via token_id {:?} {}",
        t.elapsed(),
        m.is_some()
    );
    let t = Instant::now();
    tok.prepare_batch();
    println!("prepare {:?}", t.elapsed());
    let t = Instant::now();
    let bytes = std::fs::read(&csv).expect("read");
    let s = kiln_data::sentiment::latin1_to_string(&bytes);
    println!("read+latin1 {:?} {}", t.elapsed(), s.len());
    let t = Instant::now();
    let rows = kiln_data::sentiment::read(&csv, &Default::default()).expect("rows");
    println!("sentiment::read {:?}", t.elapsed());
    let texts: Vec<&str> = rows.texts.iter().map(String::as_str).collect();
    let t = Instant::now();
    let sp = kiln_data::pretok::Splitter::default();
    let n: usize = texts.iter().map(|x| sp.split(x).len()).sum();
    println!("split only {:?} {n}", t.elapsed());
    let text2 = std::fs::read_to_string(data.join("gpt2-tokenizer/merges.txt")).expect("m");
    let m2 = kiln_data::pretok::Merges::from_merges_txt(|s| tok.token_id(s), &text2).expect("m");
    let mut fe = kiln_data::pretok::FastEncoder::new(&m2, &sp);
    let t = Instant::now();
    let a: usize = texts.iter().map(|x| fe.encode(x).len()).sum();
    println!("fast encoder cold {:?} {a}", t.elapsed());
    let t = Instant::now();
    let a: usize = texts.iter().map(|x| fe.encode(x).len()).sum();
    println!("fast encoder warm {:?} {a}", t.elapsed());
    let t = Instant::now();
    let ids = tok.encode_batch(&texts).expect("enc");
    println!("encode_batch {:?} {}", t.elapsed(), ids.len());
    let t = Instant::now();
    let out = tempfile::tempdir().expect("tmp");
    let h = tok.save(&out.path().join("t.json")).expect("save");
    println!("save tokenizer {:?} {}", t.elapsed(), &h[..6]);
    let t = Instant::now();
    let labels = std::collections::BTreeMap::from([
        (kiln_data::sentiment::Polarity::Negative, "bad".to_owned()),
        (kiln_data::sentiment::Polarity::Positive, "good".to_owned()),
    ]);
    kiln_data::dataset::build_sentiment_rows(
        &csv,
        rows,
        tok,
        &labels,
        &Default::default(),
        out.path(),
    )
    .expect("build");
    println!("build_sentiment_rows {:?}", t.elapsed());
}
