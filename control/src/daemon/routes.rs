//! From the config and the announce policy to the BGP speaker: its peers, and the routes
//! (one host prefix per announced VIP address, with that VIP's MED and communities).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bgp::fsm::State;
use bgp::speaker::{self, PeerConfig, PeerStatus, Routes, Snapshot};
use bgp::wire::Prefix;

use crate::config::{Bgp, Peer, VipBgp};
use crate::sources::ServiceSet;

/// How often a session that failed is retried at first (doubling up to the FSM's maximum).
const CONNECT_RETRY: Duration = Duration::from_secs(5);

/// The speaker's configuration for `[bgp]`, with a listener for the passive peers
/// ([`listeners`]).
pub fn speaker_config(bgp: &Bgp) -> speaker::Config {
    let peers: Vec<PeerConfig> = bgp
        .peers
        .iter()
        .map(|p| {
            let mut pc = PeerConfig::new(p.address, bgp.local_as, p.remote_as, bgp.router_id);
            pc.port = p.port;
            pc.local_address = p.local_address;
            pc.session.hold_time = u16::try_from(p.hold_time.as_secs()).unwrap_or(u16::MAX);
            pc.session.min_hold_time = u16::try_from(p.min_hold_time.as_secs()).unwrap_or(u16::MAX);
            pc.session.passive = p.passive;
            pc.session.connect_retry = CONNECT_RETRY;
            pc.next_hop_v4 = p.next_hop.v4;
            pc.next_hop_v6 = p.next_hop.v6;
            pc.md5_password = p.md5_password.clone();
            pc
        })
        .collect();
    speaker::Config {
        peers,
        listen: listeners(&bgp.peers),
    }
}

/// Where passive peers are awaited: on each one's `port`, at its `local_address`, or on
/// every address (one dual-stack `[::]` socket) without one. A port that some peer
/// awaits on every address gets only that socket, which takes the others' connections
/// too: a specific address cannot be bound beside it. The speaker tells peers apart by
/// their source address, whichever socket they reach.
fn listeners(peers: &[Peer]) -> Vec<SocketAddr> {
    let passive = || peers.iter().filter(|p| p.passive);
    let anywhere: BTreeSet<u16> = passive()
        .filter(|p| p.local_address.is_none())
        .map(|p| p.port)
        .collect();
    let mut listen: Vec<SocketAddr> = anywhere
        .iter()
        .map(|&port| SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))
        .collect();
    for p in passive() {
        if let Some(local) = p.local_address {
            let addr = SocketAddr::new(local, p.port);
            if !anywhere.contains(&p.port) && !listen.contains(&addr) {
                listen.push(addr);
            }
        }
    }
    listen
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

/// The sessions that still carry a route, or hold bytes (the withdrawal) that their
/// peer's TCP has not acknowledged, by `snapshot`, once every route was withdrawn by
/// the speaker's command of generation `generation` ([`speaker::Speaker::generation`]).
/// `None` while the snapshot is older than that command, since the speaker carries out
/// commands on its own thread: such a snapshot shows the sessions as they were before
/// it, and one in OpenConfirm there may have come up and been sent the old routes, or
/// one Established with none may have been sent some, all before the withdrawal. In a
/// snapshot of that generation or later, only Established sessions can carry
/// anything: the others are sent no route when they come up, the speaker having none.
pub fn unwithdrawn(snapshot: &Snapshot, generation: u64) -> Option<Vec<&PeerStatus>> {
    (snapshot.generation >= generation).then(|| {
        snapshot
            .peers
            .iter()
            .filter(|p| p.state == State::Established)
            .filter(|p| p.prefixes_advertised > 0 || p.unacked_bytes > 0)
            .collect()
    })
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

    /// `[bgp]` with the given peers (each its extra lines), through the config parser.
    fn bgp(peers: &[&str]) -> Bgp {
        let mut text = "[dataplane]\nupstream_interface = \"eth0\"\n[bgp]\nlocal_as = 65001\nrouter_id = \"192.0.2.1\"\n".to_owned();
        for (i, p) in peers.iter().enumerate() {
            text += &format!(
                "[[bgp.peers]]\naddress = \"192.0.2.{}\"\nremote_as = 65000\n{p}\n",
                100 + i
            );
        }
        config::parse(&text, Path::new("t.toml"))
            .unwrap_or_else(|e| panic!("{e}"))
            .bgp
            .unwrap()
    }

    #[test]
    fn a_next_hop_per_family_reaches_the_speaker() {
        let sc = speaker_config(&bgp(&[
            "next_hop = [\"2001:db8::1\", \"192.0.2.1\"]",
            "next_hop = \"2001:db8::2\"",
        ]));
        let both = &sc.peers[0];
        assert_eq!(both.next_hop_v4, Some("192.0.2.1".parse().unwrap()));
        assert_eq!(both.next_hop_v6, Some("2001:db8::1".parse().unwrap()));
        // One family given: the other takes the session's address.
        assert_eq!(sc.peers[1].next_hop_v4, None);
        assert_eq!(
            sc.peers[1].next_hop_v6,
            Some("2001:db8::2".parse().unwrap())
        );
    }

    #[test]
    fn min_hold_time_reaches_the_session() {
        let sc = speaker_config(&bgp(&["min_hold_time = \"30s\"", ""]));
        assert_eq!(sc.peers[0].session.min_hold_time, 30);
        assert_eq!(sc.peers[1].session.min_hold_time, 0);
    }

    #[test]
    fn passive_peers_are_awaited_where_configured() {
        let sock = |s: &str| s.parse::<SocketAddr>().unwrap();
        // Active peers need no listener, whatever their port.
        assert!(speaker_config(&bgp(&["port = 1179"])).listen.is_empty());
        assert_eq!(
            speaker_config(&bgp(&["passive = true"])).listen,
            [sock("[::]:179")]
        );
        // Each passive peer on its port, at its local address.
        assert_eq!(
            speaker_config(&bgp(&[
                "passive = true\nport = 1179\nlocal_address = \"192.0.2.1\"",
                "passive = true\nlocal_address = \"192.0.2.1\"",
                "passive = true\nport = 1179\nlocal_address = \"192.0.2.1\"",
                "passive = true\nport = 2179\nlocal_address = \"192.0.2.2\"",
                "port = 3179",
            ]))
            .listen,
            [
                sock("192.0.2.1:1179"),
                sock("192.0.2.1:179"),
                sock("192.0.2.2:2179")
            ]
        );
        // A port awaited on every address takes the specific ones' connections.
        assert_eq!(
            speaker_config(&bgp(&[
                "passive = true\nlocal_address = \"192.0.2.1\"",
                "passive = true",
                "passive = true\nport = 1179",
            ]))
            .listen,
            [sock("[::]:179"), sock("[::]:1179")]
        );
    }

    fn session(state: State, prefixes: usize, unacked_bytes: usize) -> PeerStatus {
        PeerStatus {
            address: IpAddr::from([192, 0, 2, 254]),
            remote_as: 65000,
            state,
            uptime: None,
            last_error: None,
            stats: Default::default(),
            prefixes_advertised: prefixes,
            unacked_bytes,
            advertised: Vec::new(),
            negotiated: None,
        }
    }

    /// A snapshot taken before the speaker carried out the withdrawal is no answer: its
    /// sessions (one about to be Established and sent the old routes, one Established
    /// and not sent any yet) look withdrawn, and the daemon used to log "every route
    /// withdrawn, and acknowledged" from it and start the drain while the routes were
    /// still to be sent. From the withdrawal's generation on, Established sessions with
    /// a route or unacknowledged bytes are waited for, and the others are not.
    #[test]
    fn a_withdrawal_is_judged_by_a_snapshot_that_shows_it() {
        let before = Snapshot {
            generation: 6,
            peers: vec![
                session(State::OpenConfirm, 0, 0),
                session(State::Established, 0, 0),
            ],
        };
        assert_eq!(unwithdrawn(&before, 7), None);
        let after = Snapshot {
            generation: 7,
            ..before.clone()
        };
        assert_eq!(unwithdrawn(&after, 7), Some(vec![]));
        let sessions = vec![
            session(State::Established, 1, 0),
            session(State::Established, 0, 120),
            session(State::Established, 0, 0),
            session(State::OpenConfirm, 0, 57),
            session(State::Active, 0, 0),
        ];
        let later = Snapshot {
            generation: 9,
            peers: sessions.clone(),
        };
        let pending = unwithdrawn(&later, 7).unwrap();
        assert_eq!(pending, [&sessions[0], &sessions[1]]);
    }

    /// The speaker really awaits a passive peer at its local address and port: a
    /// connection from the peer's address there gets the speaker's OPEN.
    #[test]
    fn a_passive_peer_is_answered_on_its_port() {
        use std::io::Read;
        // Loopback, which the config refuses for peers; speaker_config does not check.
        let lo = IpAddr::from([127, 0, 0, 1]);
        let port = std::net::TcpListener::bind((lo, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut b = bgp(&["passive = true"]);
        b.peers[0].address = lo;
        b.peers[0].local_address = Some(lo);
        b.peers[0].port = port;
        let sc = speaker_config(&b);
        assert_eq!(sc.listen, [SocketAddr::new(lo, port)]);
        let mut speaker = speaker::Speaker::spawn(sc).unwrap();
        let mut conn = std::net::TcpStream::connect((lo, port)).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut header = [0u8; 19];
        conn.read_exact(&mut header).unwrap();
        assert_eq!(header[..16], [0xff; 16], "not a BGP message: {header:?}");
        assert_eq!(header[18], 1, "not an OPEN: {header:?}");
        speaker.shutdown("test over");
    }
}
