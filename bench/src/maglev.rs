//! `dsrgate-bench maglev`: how long a Maglev table takes to build, how evenly it spreads
//! slots, and how many slots move when one backend is removed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use anyhow::Context;
use dataplane::maglev::{Backend, MaglevTable, DEFAULT_TABLE_SIZE};

#[derive(clap::Args)]
pub struct Args {
    /// Number of backends (weight 1 each; 10.0.0.0/8 addresses, or IPv6 past 2^24).
    #[arg(long, default_value_t = 1000)]
    backends: u32,
    /// Table size M (a prime).
    #[arg(long, default_value_t = DEFAULT_TABLE_SIZE)]
    table_size: u32,
    /// Hash seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Timed builds; the median is reported.
    #[arg(long, default_value_t = 51)]
    reps: usize,
    /// How many different single-backend removals to measure (evenly spaced over the sorted
    /// set); the JSON reports their median, the table also the best and worst.
    #[arg(long, default_value_t = 16)]
    removals: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct Report {
    backends: u32,
    table_size: u32,
    build_ms_median: f64,
    max_over_mean: f64,
    changed_slots_on_remove: usize,
    ideal_changed_slots: f64,
}

fn backend(i: u32) -> Backend {
    let addr = if i < 1 << 24 {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | i))
    } else {
        IpAddr::V6(Ipv6Addr::from(0xfd00_u128 << 112 | i as u128))
    };
    Backend { addr, weight: 1 }
}

pub fn run(a: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.backends >= 2,
        "--backends must be at least 2 (one is removed)"
    );
    anyhow::ensure!(
        a.reps >= 1 && a.removals >= 1,
        "--reps and --removals must be at least 1"
    );
    let set: Vec<Backend> = (1..=a.backends).map(backend).collect();
    let m = a.table_size;
    let build = |s: &[Backend]| MaglevTable::build(s, m, a.seed).context("building the table");

    let full = build(&set)?;
    let mut times: Vec<f64> = Vec::with_capacity(a.reps);
    for _ in 0..a.reps {
        let t0 = Instant::now();
        let t = build(&set)?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(t == full, "two builds of one set differ");
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];

    let mut counts = vec![0usize; set.len()];
    for s in 0..m {
        if let Some(b) = full.slot(s) {
            counts[b as usize] += 1;
        }
    }
    let mean = m as f64 / set.len() as f64;
    let max_over_mean = *counts.iter().max().unwrap_or(&0) as f64 / mean;
    let min_over_mean = *counts.iter().min().unwrap_or(&0) as f64 / mean;

    let k = a.removals.min(set.len());
    let mut moved: Vec<usize> = (0..k)
        .map(|r| {
            let mut less = set.clone();
            less.remove(r * set.len() / k);
            build(&less).map(|t| t.changed_slots(&full))
        })
        .collect::<anyhow::Result<_>>()?;
    moved.sort_unstable();
    let median_moved = moved[moved.len() / 2];

    let report = Report {
        backends: a.backends,
        table_size: m,
        build_ms_median: median,
        max_over_mean,
        changed_slots_on_remove: median_moved,
        ideal_changed_slots: mean,
    };
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!(
        "Maglev, N={} backends, M={} slots, seed {}",
        a.backends, m, a.seed
    );
    println!(
        "  build time       median {:.3} ms  (min {:.3}, max {:.3}, {} builds)",
        median,
        times[0],
        times[times.len() - 1],
        times.len()
    );
    println!(
        "  slots/backend    mean {:.1}  max/mean {:.4}  min/mean {:.4}",
        mean, max_over_mean, min_over_mean
    );
    println!(
        "  remove one       changed slots: median {} (best {}, worst {}, {:.3}% of M) over {} removals; ideal {:.1}",
        median_moved,
        moved[0],
        moved[moved.len() - 1],
        100.0 * moved[moved.len() - 1] as f64 / m as f64,
        moved.len(),
        mean
    );
    Ok(())
}
