//! The `dsrgate` daemon and CLI.

use clap::Parser;

#[derive(Parser)]
#[command(name = "dsrgate", version, about = "Kernel-bypass L4 load balancer with Direct Server Return")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand)]
enum Cmd {}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {}
}
