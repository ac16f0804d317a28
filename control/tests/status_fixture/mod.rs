//! The [`Status`] the API and dashboard tests serve: one VIP with one backend, one BGP
//! peer, the steering program on one uplink (its MTU within the limit), one worker, a
//! synced Kubernetes watch; `packets` sets the traffic counters.

use control::status::{
    BackendStatus, BindMode, Health, KubernetesStatus, NextHopStatus, PeerState, PeerStatus,
    Protocol, Status, SteeringStatus, UplinkMtu, VipStatus, WorkerStatus, XdpMode,
};

pub fn a_status(packets: u64) -> Status {
    Status {
        version: "9.9.9".into(),
        uptime_secs: 12,
        generation: 7,
        dataplane_problem: None,
        uplink_mtu: Some(UplinkMtu {
            interface: "eth0".into(),
            mtu: 1500,
            limit: 3758,
        }),
        vips: vec![VipStatus {
            name: "web".into(),
            address: "192.0.2.10".parse().unwrap(),
            protocol: Protocol::Tcp,
            port: 443,
            announced: true,
            reason: "announced".into(),
            generation: 7,
            table_size: 13,
            packets,
            bytes: packets * 100,
            backends: vec![BackendStatus {
                address: "198.51.100.11".parse().unwrap(),
                health: Health::Up,
                health_reason: None,
                weight: 2,
                slots: 13,
                next_hop: NextHopStatus {
                    resolved: true,
                    via: Some("198.51.100.11".parse().unwrap()),
                    ifindex: Some(2),
                    mac: Some("02:00:00:00:00:0b".into()),
                    error: None,
                },
                tunnel_source: true,
                packets,
                bytes: packets * 120,
            }],
        }],
        untracked_backends: 2,
        untracked_vips: 0,
        peers: vec![PeerStatus {
            address: "198.51.100.1".parse().unwrap(),
            remote_as: 65000,
            state: PeerState::Established,
            uptime_secs: Some(10),
            last_error: None,
            prefixes_announced: 1,
            messages_in: 5,
            messages_out: 6,
        }],
        steering: vec![SteeringStatus {
            interface: "eth0".into(),
            redirected: packets,
            no_socket: 1,
            passed: 20,
            dropped: 2,
            shed: 3,
        }],
        workers: vec![WorkerStatus {
            interface: "eth0".into(),
            queue: 0,
            core: Some(0),
            xdp_mode: XdpMode::Native,
            bind_mode: BindMode::Copy,
            rx_packets: packets,
            tx_packets: packets,
            completed_packets: packets,
            drops: [("truncated".to_owned(), 4), ("rx_ring_full".to_owned(), 5)].into(),
            flow_entries: 3,
            flow_capacity: 1024,
            flow_evictions: 0,
            shed_starts: 1,
            fill_ring_empty: 0,
        }],
        kubernetes: Some(KubernetesStatus {
            synced: true,
            last_event_unix: Some(1_800_000_000),
            error: None,
            error_since_unix: None,
            errors: 1,
        }),
    }
}
