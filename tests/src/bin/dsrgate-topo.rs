//! `dsrgate-topo up <spec> [prefix] | down <prefix>`: builds or removes a namespace
//! topology with the same code the integration tests use, for the lab (`vagrant/lab.sh`).
//!
//! Specs: `lab` (issue 6, default prefix `lab-`) and `test` (one gateway, three nodes,
//! static VIP routes; default prefix `dsr-`). A prefix given to `up` builds a second,
//! separate instance (`tests/tests/lab.rs` runs its lab under its own). `up` leaves the
//! topology in place; `down` deletes every namespace with the prefix and kills the
//! processes inside.

use anyhow::{bail, ensure, Result};
use dsrgate_tests::netns::{self, Topology};

fn spec(name: &str) -> Result<(Topology, &'static str)> {
    Ok(match name {
        "lab" => (netns::lab_topology(), "lab-"),
        "test" => (netns::dsr_test_topology(), "dsr-"),
        other => bail!("unknown topology {other:?} (known: lab, test)"),
    })
}

fn up(name: &str, prefix: Option<&str>) -> Result<()> {
    let (topo, default_prefix) = spec(name)?;
    let prefix = prefix.unwrap_or(default_prefix);
    ensure!(
        !prefix.is_empty()
            && prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
        "bad prefix {prefix:?}: lower-case letters, digits and '-' only"
    );
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
        bail!(
            "{name} is partly up ({present} of {} namespaces {prefix}*); remove it first: \
             `vagrant/lab.sh down` for the lab (it also stops its processes and removes its \
             state), otherwise `dsrgate-topo down {prefix}`",
            wanted.len()
        );
    }
    topo.build(prefix)?.keep();
    println!("{name}: up ({})", wanted.join(" "));
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["up", name] => up(name, None)?,
        ["up", name, prefix] => up(name, Some(prefix))?,
        ["down", prefix] => {
            let gone = netns::destroy_prefix(prefix)?;
            println!("removed {} namespaces: {}", gone.len(), gone.join(" "));
        }
        _ => bail!("usage: dsrgate-topo up <lab|test> [prefix] | dsrgate-topo down <prefix>"),
    }
    Ok(())
}
