//! The static source: VIPs and backends straight from the config file.

use crate::config::{Config, EncapKind, HealthCheck, ProbeKind, DEFAULT_GUE_PORT};
use crate::health::{HealthSpec, Probe};

use super::{BackendSpec, Encap, Origin, ServiceSet, VipSpec};

/// The VIPs of `[[vips]]`, in canonical order. `config` must have passed
/// validation (every VIP has at least one port).
pub fn service_set(config: &Config) -> ServiceSet {
    let vips = config
        .vips
        .iter()
        .map(|v| {
            let ports = v.port_list();
            VipSpec {
                name: v.name.clone().unwrap_or_else(|| v.address.to_string()),
                origin: Origin::Static,
                addr: v.address,
                proto: v.protocol,
                hash: v.hash,
                encap: encap(v.encap, v.gue_port),
                min_healthy: v.min_healthy_backends,
                bgp: v.bgp.clone(),
                backends: v
                    .backends
                    .iter()
                    .map(|b| BackendSpec {
                        addr: b.address,
                        weight: b.weight,
                    })
                    .collect(),
                health: v
                    .health
                    .as_ref()
                    .map(|h| health(h, ports.first().copied().unwrap_or(0))),
                ports,
            }
        })
        .collect();
    let mut set = ServiceSet { vips };
    set.normalize();
    set
}

/// The tunnel of a VIP from its config fields.
pub(crate) fn encap(kind: EncapKind, gue_port: Option<u16>) -> Encap {
    match kind {
        EncapKind::Ipip => Encap::Ipip,
        EncapKind::Gue => Encap::Gue {
            port: gue_port.unwrap_or(DEFAULT_GUE_PORT),
        },
    }
}

fn health(h: &HealthCheck, first_port: u16) -> HealthSpec {
    let port = h.port.unwrap_or(first_port);
    let probe = match h.kind {
        ProbeKind::Tcp => Probe::Tcp { port },
        ProbeKind::Http => Probe::Http {
            port,
            path: h.path.clone().unwrap_or_else(|| "/".into()),
            weight_header: false,
        },
    };
    HealthSpec {
        probe,
        timing: h.timing(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, Protocol};
    use std::path::Path;

    #[test]
    fn example_config_becomes_a_service_set() {
        let text = include_str!("../../../dsrgate.example.toml");
        let c = config::parse(text, Path::new("dsrgate.example.toml")).unwrap();
        let set = service_set(&c);
        assert_eq!(set.vips.len(), 2);
        let web = &set.vips[0];
        assert_eq!(
            (web.name.as_str(), web.proto, web.ports.as_slice()),
            ("web", Protocol::Tcp, &[80, 443][..])
        );
        assert_eq!(
            web.backends.iter().map(|b| b.weight).collect::<Vec<_>>(),
            [2, 1]
        );
        assert_eq!(
            web.health.as_ref().unwrap().probe,
            Probe::Http {
                port: 80,
                path: "/healthz".into(),
                weight_header: false
            }
        );
        let dns = &set.vips[1];
        assert_eq!(dns.encap, Encap::Gue { port: 6080 });
        assert_eq!(dns.health.as_ref().unwrap().probe, Probe::Tcp { port: 53 });
        assert_eq!(set.health_targets().len(), 4);
    }
}
