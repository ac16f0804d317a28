//! From the config and the announce policy to the BGP speaker: its peers, and the routes
//! (one host prefix per announced VIP address, with that VIP's MED and communities).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bgp::speaker::{self, PeerConfig, Routes};
use bgp::wire::Prefix;

use crate::config::{Bgp, VipBgp};
use crate::sources::ServiceSet;

/// How often a session that failed is retried at first (doubling up to the FSM's maximum).
const CONNECT_RETRY: Duration = Duration::from_secs(5);

/// The speaker's configuration for `[bgp]`. Passive peers need a listener: one dual-stack
/// socket on port 179.
pub fn speaker_config(bgp: &Bgp) -> speaker::Config {
    let peers: Vec<PeerConfig> = bgp
        .peers
        .iter()
        .map(|p| {
            let mut pc = PeerConfig::new(p.address, bgp.local_as, p.remote_as, bgp.router_id);
            pc.port = p.port;
            pc.local_address = p.local_address;
            pc.session.hold_time = u16::try_from(p.hold_time.as_secs()).unwrap_or(u16::MAX);
            pc.session.passive = p.passive;
            pc.session.connect_retry = CONNECT_RETRY;
            match p.next_hop {
                Some(IpAddr::V4(a)) => pc.next_hop_v4 = Some(a),
                Some(IpAddr::V6(a)) => pc.next_hop_v6 = Some(a),
                None => {}
            }
            pc.md5_password = p.md5_password.clone();
            pc
        })
        .collect();
    let listen = if bgp.peers.iter().any(|p| p.passive) {
        vec![SocketAddr::from((Ipv6Addr::UNSPECIFIED, 179))]
    } else {
        Vec::new()
    };
    speaker::Config { peers, listen }
}

/// The routes for the announced addresses. Several services on one address share its
/// prefix: the lowest MED any of them sets, and the union of their communities.
pub fn routes(announced: impl Iterator<Item = IpAddr>, services: &ServiceSet) -> Routes {
    announced
        .map(|addr| {
            let mut bgp = VipBgp::default();
            for v in services.vips.iter().filter(|v| v.addr == addr) {
                bgp.merge(&v.bgp);
            }
            (Prefix::host(addr), bgp.route_attributes())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, Community};
    use std::path::Path;

    #[test]
    fn example_config_maps_to_peers_and_attributes() {
        let text = include_str!("../../../dsrgate.example.toml");
        let c = config::parse(text, Path::new("dsrgate.example.toml")).unwrap();
        let sc = speaker_config(c.bgp.as_ref().unwrap());
        assert_eq!(sc.peers.len(), 1);
        assert!(sc.listen.is_empty());
        let p = &sc.peers[0];
        assert_eq!(p.session.hold_time, 90);
        assert_eq!(p.next_hop_v4, Some("192.0.2.1".parse().unwrap()));

        let mut services = crate::sources::static_list::service_set(&c);
        let web: IpAddr = "203.0.113.10".parse().unwrap();
        services.vips[1].addr = web; // a second service on the same address
        services.vips[1].bgp.med = Some(5);
        services.vips[1].bgp.communities = vec![Community(1)];
        let r = routes([web].into_iter(), &services);
        let attrs = &r[&Prefix::host(web)];
        assert_eq!(attrs.med, Some(5));
        assert_eq!(attrs.communities.len(), 3);
        assert_eq!(attrs.large_communities.len(), 1);
    }
}
