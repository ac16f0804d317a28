//! `dsrgate decap attach|detach`: puts dsrgate's XDP decapsulator on a node interface
//! (for kernels without the `ipip`/`ip6tnl` modules) and takes it off again. The program
//! stays attached after the command exits.

use anyhow::{Context, Result};
use dataplane::bpf::{decap, DecapConfig};
use std::net::IpAddr;

#[derive(clap::Subcommand)]
pub enum DecapCmd {
    /// Attach the decapsulator to an interface (replacing an earlier one there).
    Attach {
        /// The node interface tunnel packets arrive on.
        #[arg(long)]
        iface: String,
        /// Also decapsulate GUE (UDP to this port).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        gue_port: Option<u16>,
        /// Tunnel endpoint address of this node (repeatable). Default: the interface's
        /// global addresses.
        #[arg(long = "address")]
        addresses: Vec<IpAddr>,
    },
    /// Remove the decapsulator from an interface.
    Detach {
        #[arg(long)]
        iface: String,
    },
}

pub fn run(cmd: DecapCmd) -> Result<()> {
    match cmd {
        DecapCmd::Attach {
            iface,
            gue_port,
            mut addresses,
        } => {
            if addresses.is_empty() {
                addresses = decap::interface_addresses(&iface)
                    .with_context(|| format!("listing the addresses of {iface}"))?;
                anyhow::ensure!(
                    !addresses.is_empty(),
                    "{iface} has no global address; pass --address"
                );
            }
            let cfg = DecapConfig {
                addresses,
                gue_port,
            };
            let mode = decap::attach(&iface, &cfg)?;
            let list: Vec<String> = cfg.addresses.iter().map(ToString::to_string).collect();
            match gue_port {
                Some(p) => println!(
                    "decap attached to {iface} ({mode} mode) for {}, GUE port {p}",
                    list.join(", ")
                ),
                None => println!(
                    "decap attached to {iface} ({mode} mode) for {}",
                    list.join(", ")
                ),
            }
        }
        DecapCmd::Detach { iface } => {
            decap::detach(&iface)?;
            println!("decap detached from {iface}");
        }
    }
    Ok(())
}
