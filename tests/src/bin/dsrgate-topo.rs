//! `dsrgate-topo up <spec> | down <prefix>`: builds or removes a namespace topology with
//! the same code the integration tests use, for the lab (`vagrant/lab.sh`).
//!
//! Specs: `lab` (issue 6, prefix `lab-`) and `test` (one gateway, three nodes, static VIP
//! routes; prefix `dsr-`). `up` leaves the topology in place; `down` deletes every
//! namespace with the prefix and kills the processes inside.

use anyhow::{bail, Result};
use dsrgate_tests::netns::{self, Topology};

fn spec(name: &str) -> Result<(Topology, &'static str)> {
    Ok(match name {
        "lab" => (netns::lab_topology(), "lab-"),
        "test" => (netns::dsr_test_topology(), "dsr-"),
        other => bail!("unknown topology {other:?} (known: lab, test)"),
    })
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["up", name] => {
            let (topo, prefix) = spec(name)?;
            let existing = netns::list_namespaces()?;
            let wanted: Vec<String> = topo
                .namespaces
                .iter()
                .map(|n| format!("{prefix}{}", n.name))
                .collect();
            let present = wanted.iter().filter(|n| existing.contains(n)).count();
            if present == wanted.len() {
                println!("{name}: already up ({})", wanted.join(" "));
                return Ok(());
            }
            if present > 0 {
                bail!("{name} is partly up; run `dsrgate-topo down {prefix}` first");
            }
            topo.build(prefix)?.keep();
            println!("{name}: up ({})", wanted.join(" "));
        }
        ["down", prefix] => {
            let gone = netns::destroy_prefix(prefix)?;
            println!("removed {} namespaces: {}", gone.len(), gone.join(" "));
        }
        _ => bail!("usage: dsrgate-topo up <lab|test> | dsrgate-topo down <prefix>"),
    }
    Ok(())
}
