//! Tokenizer throughput, the bora side of `bench/tokenizer_speed.py`.
//!
//! `cargo run --release -p bora-tokenizer --example tokenize_bench -- TOKENIZER TEXT_FILE [REPEATS]`
//! encodes the whole file `REPEATS` times (default 3) and prints one JSON line: token count, a
//! checksum of the ids (so the script can check they equal the reference library's), the best
//! time and MB/s.

use std::path::Path;
use std::time::Instant;

use bora_tokenizer::Tokenizer;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: tokenize_bench TOKENIZER TEXT_FILE [REPEATS]");
        std::process::exit(2);
    }
    let tokenizer = Tokenizer::from_file(Path::new(&args[1])).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(1)
    });
    let text = std::fs::read_to_string(&args[2]).unwrap_or_else(|e| {
        eprintln!("{}: {e}", args[2]);
        std::process::exit(1)
    });
    let repeats: usize = args.get(3).and_then(|r| r.parse().ok()).unwrap_or(3);
    let mut best = f64::INFINITY;
    let mut ids = Vec::new();
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        ids = tokenizer.encode(&text);
        best = best.min(start.elapsed().as_secs_f64());
    }
    // Position-weighted sum, mirrored in bench/tokenizer_speed.py.
    let checksum = ids.iter().enumerate().fold(0u64, |acc, (i, &id)| {
        acc.wrapping_add((i as u64 + 1).wrapping_mul(u64::from(id)))
    });
    println!(
        "{{\"tokens\": {}, \"checksum\": {checksum}, \"seconds\": {best:.6}, \"mb_per_s\": {:.3}}}",
        ids.len(),
        text.len() as f64 / 1e6 / best
    );
}
