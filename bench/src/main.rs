//! `dsrgate-bench`: benchmarks that print human-readable tables, or JSON with `--json`.

use clap::Parser;

mod forward;
mod maglev;
mod pipeline;
mod pktgen;
mod plot;

#[derive(Parser)]
#[command(name = "dsrgate-bench", about = "dsrgate benchmarks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Maglev table build time, balance and disruption.
    Maglev(maglev::Args),
    /// Per-packet cost of the pipeline for hot and cold flows, SYNs and passes.
    Pipeline(pipeline::Args),
    /// Forwarding throughput over veth: dsrgate vs. bare AF_XDP (with and without an IP-in-IP
    /// header) vs. kernel forwarding.
    Forward(forward::Args),
    /// Load a gateway on real hardware with the kernel's pktgen: offered vs. delivered.
    Pktgen(pktgen::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Maglev(a) => maglev::run(a),
        Cmd::Pipeline(a) => pipeline::run(a),
        Cmd::Forward(a) => forward::run(a),
        Cmd::Pktgen(a) => pktgen::run(a),
    }
}
