//! Criterion benches for Maglev: building a table (off the hot path, but on every backend
//! change) and looking up a flow hash (on every new flow).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dataplane::maglev::{Backend, MaglevTable, DEFAULT_TABLE_SIZE};

fn backends(n: u32) -> Vec<Backend> {
    (1..=n)
        .map(|i| Backend {
            addr: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | i)),
            weight: 1,
        })
        .collect()
}

fn build(c: &mut Criterion) {
    let mut g = c.benchmark_group("maglev_build");
    g.sample_size(50);
    for n in [100u32, 1000] {
        let set = backends(n);
        g.bench_with_input(BenchmarkId::new("m65537", n), &set, |b, set| {
            b.iter(|| MaglevTable::build(black_box(set), DEFAULT_TABLE_SIZE, 0))
        });
    }
    g.finish();
}

fn lookup(c: &mut Criterion) {
    let t = MaglevTable::build(&backends(1000), DEFAULT_TABLE_SIZE, 0).expect("valid table");
    // A fixed spread of flow hashes, so the table is read at random like real traffic.
    let hashes: Vec<u64> = (0..4096u64)
        .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .collect();
    let mut g = c.benchmark_group("maglev_lookup");
    g.throughput(Throughput::Elements(hashes.len() as u64));
    g.bench_function("n1000_m65537", |b| {
        b.iter(|| {
            let mut acc = 0u32;
            for &h in &hashes {
                acc = acc.wrapping_add(t.lookup(black_box(h)).unwrap_or(0));
            }
            acc
        })
    });
    g.finish();
}

criterion_group!(benches, build, lookup);
criterion_main!(benches);
