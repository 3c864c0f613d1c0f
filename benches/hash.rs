//! MD5 throughput of the importer's own streaming hasher, `pipeline::hash::md5_file`, on one
//! file. Run: `cargo bench --bench hash -- FILE` (`bench/hash.sh` makes a 1 GiB file for it).
//!
//! Prints `hash: <bytes> bytes in <s>s = <MB/s> MB/s md5=<base64>`; MB is 10^6 bytes.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use visibuild_import::pipeline::hash::md5_file;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo test --all-targets` runs harness-less benches too; only measure under `cargo bench`.
    if !args.iter().any(|a| a == "--bench") {
        println!("hash bench: skipped (run it with `cargo bench --bench hash -- FILE`)");
        return Ok(());
    }
    let path: PathBuf = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HASH_BENCH_FILE").map(PathBuf::from))
        .context("name the file to hash: cargo bench --bench hash -- FILE")?;
    let started = Instant::now();
    let (size, md5) = md5_file(&mut std::fs::File::open(&path)?)?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "hash: {size} bytes in {secs:.3}s = {:.1} MB/s md5={md5}",
        size as f64 / secs / 1e6
    );
    Ok(())
}
