//! `dsrgate-bench maglev`: how long a Maglev table takes to build, how evenly it spreads
//! slots, and how many slots move when one backend is removed, beside Katran's
//! `MaglevHashV2` in the same run: its build time (a line-for-line port of its fill loop)
//! and the slots it moves over the same removals.

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
    /// The same median for [`katran_table`], over the same removals.
    katran_changed_slots_on_remove: usize,
    /// Median build time of [`katran_table`] for the same N and M, measured in this run:
    /// the baseline to compare `build_ms_median` with (as a ratio; the VM's speed varies
    /// from run to run).
    katran_build_ms_median: f64,
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
    let endpoints: Vec<u64> = (0..u64::from(a.backends)).collect();
    let katran_full = katran_table(&endpoints, m);
    // Ours and Katran's alternate, so that both see the same stretches of the VM.
    let mut times: Vec<f64> = Vec::with_capacity(a.reps);
    let mut katran_times: Vec<f64> = Vec::with_capacity(a.reps);
    for _ in 0..a.reps {
        let t0 = Instant::now();
        let t = build(&set)?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(t == full, "two builds of one set differ");
        let t0 = Instant::now();
        let t = katran_table(&endpoints, m);
        katran_times.push(t0.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(t == katran_full, "two Katran builds of one set differ");
    }
    times.sort_by(f64::total_cmp);
    katran_times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let katran_median = katran_times[katran_times.len() / 2];

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

    let mut katran_moved: Vec<usize> = (0..k)
        .map(|r| {
            let mut less = endpoints.clone();
            less.remove(r * endpoints.len() / k);
            let t = katran_table(&less, m);
            t.iter().zip(&katran_full).filter(|(x, y)| x != y).count()
        })
        .collect();
    katran_moved.sort_unstable();

    let report = Report {
        backends: a.backends,
        table_size: m,
        build_ms_median: median,
        max_over_mean,
        changed_slots_on_remove: median_moved,
        ideal_changed_slots: mean,
        katran_changed_slots_on_remove: katran_moved[katran_moved.len() / 2],
        katran_build_ms_median: katran_median,
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
        "  Katran's build   median {:.3} ms  (ours ÷ Katran's {:.3}, alternated in this run)",
        katran_median,
        median / katran_median
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
    println!(
        "  Katran's hash    changed slots: median {} (best {}, worst {}) over the same removals",
        katran_moved[katran_moved.len() / 2],
        katran_moved[0],
        katran_moved[katran_moved.len() - 1],
    );
    Ok(())
}

/// Katran's `MaglevHashV2` as a baseline: endpoint `h`'s offset and skip are the low 64 bits
/// of MurmurHash3_x64_128 over the little-endian words (h, 42) with seed 0, and
/// (h, 2718281828) with seed 2307 (the seeds and words of Katran's `MaglevBase`), and the
/// table is filled by Algorithm 1 of the paper, as ours is, the way `generateHashRing` does
/// it: 32-bit permutation words, a probe count per endpoint and `(offset + next × skip) mod
/// M` per probe, a cumulative weight per endpoint, and an `int` slot array with -1 for
/// empty. Endpoints are given sorted, all of weight 1. Returns each slot's endpoint.
fn katran_table(endpoints: &[u64], m: u32) -> Vec<u64> {
    let murmur = |h: u64, word: u64, seed: u32| -> u64 {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&h.to_le_bytes());
        bytes[8..].copy_from_slice(&word.to_le_bytes());
        // Reading from a byte slice cannot fail.
        murmur3::murmur3_x64_128(&mut &bytes[..], seed).unwrap_or_default() as u64
    };
    let m64 = u64::from(m);
    let n = endpoints.len();
    if n == 0 {
        return Vec::new();
    }
    let mut permutation = vec![0u32; 2 * n];
    for (i, &h) in endpoints.iter().enumerate() {
        permutation[2 * i] = (murmur(h, 42, 0) % m64) as u32;
        permutation[2 * i + 1] = (murmur(h, 2_718_281_828, 2307) % (m64 - 1) + 1) as u32;
    }
    let mut result = vec![-1i32; m as usize];
    let weights = vec![1u32; n];
    let max_weight = weights.iter().copied().max().unwrap_or(1);
    let mut next = vec![0u32; n];
    let mut cum_weight = vec![0u32; n];
    let mut runs = 0;
    'fill: loop {
        for i in 0..n {
            cum_weight[i] += weights[i];
            if cum_weight[i] >= max_weight {
                cum_weight[i] -= max_weight;
                let (offset, skip) = (permutation[2 * i], permutation[2 * i + 1]);
                // Katran's uint32_t arithmetic, wrapping included.
                let at = |next: u32| offset.wrapping_add(next.wrapping_mul(skip)) % m;
                let mut cur = at(next[i]);
                while result[cur as usize] >= 0 {
                    next[i] += 1;
                    cur = at(next[i]);
                }
                result[cur as usize] = i as i32;
                next[i] += 1;
                runs += 1;
                if runs == m {
                    break 'fill;
                }
            }
        }
    }
    result
        .into_iter()
        .filter_map(|e| usize::try_from(e).ok().map(|i| endpoints[i]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::katran_table;

    /// Expected values from Katran's own `MaglevHashV2` and `MurmurHash3_x64_64` C++ code,
    /// compiled with g++ -O2 on this machine, so the baseline is Katran's and not our guess.
    #[test]
    fn katran_baseline_matches_katrans_code() {
        assert_eq!(
            katran_table(&[0, 1, 2, 3, 4], 13),
            [4, 0, 2, 3, 1, 0, 3, 2, 4, 2, 1, 1, 0]
        );
        let all: Vec<u64> = (0..100).collect();
        let full = katran_table(&all, 65537);
        let less = katran_table(&all[1..], 65537);
        let moved = less.iter().zip(&full).filter(|(a, b)| a != b).count();
        assert_eq!(moved, 1020);
    }
}
