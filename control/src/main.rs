//! The `dsrgate` daemon and CLI.

mod decap;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "dsrgate",
    version,
    about = "Kernel-bypass L4 load balancer with Direct Server Return"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Node side: the XDP decapsulator for nodes without an ipip module.
    #[command(subcommand)]
    Decap(decap::DecapCmd),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Decap(cmd) => decap::run(cmd),
    }
}
