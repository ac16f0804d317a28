//! Golden bytes for every message type, both ways: decoding real peers' messages, and
//! encoding ours to exact, hand-checked octets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bgp::wire::{
    frame, AsSegment, AsSegmentKind, Capability, Context, DecodeError, ErrorAction, Family,
    GracefulRestart, LargeCommunity, Message, MpReach, MpUnreach, Notification, Open, OpenError,
    Origin, PathAttribute, Prefix, RouteRefresh, Update, UpdateErrorKind,
};

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn p(s: &str) -> Prefix {
    s.parse().unwrap()
}

fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
    Message::parse(bytes, Context::FOUR_OCTET)
}

fn roundtrip(bytes: &[u8], expected: &Message) {
    assert_eq!(&decode(bytes).unwrap(), expected);
    assert_eq!(expected.to_bytes(Context::FOUR_OCTET).unwrap(), bytes);
}

/// BIRD 2.0.12's OPEN, captured here from a real session (AS 65000, router id
/// 10.99.0.1, hold time 9, IPv4 and IPv6 channels). All capabilities share one
/// optional parameter; two of them have zero length.
const BIRD_OPEN: &str = "
    ffffffffffffffffffffffffffffffff 003b 01   # marker, length 59, OPEN
    04 fde8 0009 0a630001                       # version 4, AS 65000, hold 9, id
    1e 02 1c                                    # opt len 30; capabilities, 28 octets
    01 04 0001 00 01                            # multiprotocol IPv4 unicast
    01 04 0002 00 01                            # multiprotocol IPv6 unicast
    02 00                                       # route refresh
    40 02 0078                                  # graceful restart, 120 s, no AFIs
    41 04 0000fde8                              # 4-octet AS 65000
    46 00                                       # enhanced route refresh (RFC 7313)
    47 00                                       # long-lived graceful restart, empty";

fn strip_comments(s: &str) -> String {
    s.lines()
        .map(|l| l.split('#').next().unwrap())
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn bird_open() {
    let bytes = hex(&strip_comments(BIRD_OPEN));
    let expected = Message::Open(Open {
        my_as: 65000,
        hold_time: 9,
        bgp_id: Ipv4Addr::new(10, 99, 0, 1),
        parameters: vec![vec![
            Capability::multiprotocol(Family::Ipv4Unicast),
            Capability::multiprotocol(Family::Ipv6Unicast),
            Capability::RouteRefresh,
            Capability::GracefulRestart(GracefulRestart {
                restarting: false,
                notification: false,
                restart_time: 120,
                families: vec![],
            }),
            Capability::FourOctetAs { asn: 65000 },
            Capability::Unknown {
                code: 70,
                value: vec![],
            },
            Capability::Unknown {
                code: 71,
                value: vec![],
            },
        ]],
    });
    roundtrip(&bytes, &expected);
    let Message::Open(open) = expected else {
        unreachable!()
    };
    assert_eq!(open.asn(), 65000);
    assert_eq!(
        open.families(),
        vec![Family::Ipv4Unicast, Family::Ipv6Unicast]
    );
    assert!(open.route_refresh());
}

/// FRR 8.4.4's OPEN (Debian 12's frr), captured: bgpd with `router bgp 65000`, router id
/// 10.0.0.1 and one neighbor, connecting to a listener in a network namespace. Every
/// capability sits in its own optional parameter, the Cisco route refresh code 128 next to
/// 2, and graceful restart has the R and N bits; only IPv4 unicast is activated.
const FRR_OPEN: &str = "
    ffffffffffffffffffffffffffffffff 005f 01   # length 95, OPEN
    04 fde8 00b4 0a000001                       # version 4, AS 65000, hold 180, id 10.0.0.1
    42                                          # opt len 66
    02 06 01 04 0001 00 01                      # multiprotocol IPv4 unicast
    02 02 80 00                                 # route refresh, Cisco pre-standard code
    02 02 02 00                                 # route refresh
    02 02 46 00                                 # enhanced route refresh
    02 06 41 04 0000fde8                        # 4-octet AS 65000
    02 02 06 00                                 # extended message (RFC 8654)
    02 06 45 04 0001 01 01                      # ADD-PATH: IPv4 unicast, receive
    02 07 49 05 03 667272 00                    # FQDN: hostname \"frr\", no domain
    02 04 40 02 c078                            # graceful restart: R, N, 120 s
    02 09 47 07 0001 01 80 000000               # long-lived GR: IPv4 unicast, F bit, 0 s";

#[test]
fn frr_open_one_capability_per_parameter() {
    let bytes = hex(&strip_comments(FRR_OPEN));
    let Message::Open(open) = decode(&bytes).unwrap() else {
        panic!("not an OPEN")
    };
    assert_eq!(open.parameters.len(), 10);
    assert!(open.parameters.iter().all(|p| p.len() == 1));
    assert_eq!(open.hold_time, 180);
    assert_eq!(open.asn(), 65000);
    assert_eq!(open.families(), vec![Family::Ipv4Unicast]);
    assert!(open.route_refresh());
    let gr = open.graceful_restart().unwrap();
    assert!(gr.restarting && gr.notification && gr.restart_time == 120);
    assert!(open.capabilities().any(|c| *c
        == Capability::Unknown {
            code: 128,
            value: vec![]
        }));
    // The grouping survives, so re-encoding gives the same octets.
    assert_eq!(
        Message::Open(open).to_bytes(Context::default()).unwrap(),
        bytes
    );
}

/// GoBGP 3.10's OPEN (Debian 12's gobgpd), captured: `as = 65000`, router id 10.0.0.1,
/// one neighbor, connecting to a listener in a network namespace. All capabilities in one
/// optional parameter: route refresh, FQDN (this machine's hostname "vm"), multiprotocol,
/// 4-octet AS, extended next hop (RFC 8950: IPv4 unicast over an IPv6 next hop).
const GOBGP_OPEN: &str = "
    ffffffffffffffffffffffffffffffff 003b 01   # length 59, OPEN
    04 fde8 005a 0a000001                       # version 4, AS 65000, hold 90, id 10.0.0.1
    1e 02 1c                                    # opt len 30; capabilities, 28 octets
    02 00                                       # route refresh
    49 04 02 766d 00                            # FQDN: hostname \"vm\", no domain
    01 04 0001 00 01                            # multiprotocol IPv4 unicast
    41 04 0000fde8                              # 4-octet AS 65000
    05 06 0001 0001 0002                        # extended next hop: IPv4/unicast via IPv6";

#[test]
fn gobgp_open() {
    let bytes = hex(&strip_comments(GOBGP_OPEN));
    let Message::Open(open) = decode(&bytes).unwrap() else {
        panic!("not an OPEN")
    };
    assert_eq!(open.parameters.len(), 1);
    assert_eq!(open.parameters[0].len(), 5);
    assert_eq!(open.families(), vec![Family::Ipv4Unicast]);
    assert!(open.route_refresh());
    assert!(open.graceful_restart().is_none());
    assert_eq!(
        Message::Open(open).to_bytes(Context::default()).unwrap(),
        bytes
    );
}

/// Our own OPEN: AS 65001, hold 9, graceful restart off.
#[test]
fn our_open_encodes_exactly() {
    let open = Open::new(
        65001,
        9,
        Ipv4Addr::new(10, 99, 0, 2),
        vec![
            Capability::multiprotocol(Family::Ipv4Unicast),
            Capability::multiprotocol(Family::Ipv6Unicast),
            Capability::RouteRefresh,
            Capability::FourOctetAs { asn: 65001 },
        ],
    );
    let bytes = hex("ffffffffffffffffffffffffffffffff 0033 01
        04 fde9 0009 0a630002 16 02 14
        01 04 0001 00 01  01 04 0002 00 01  02 00  41 04 0000fde9");
    roundtrip(&bytes, &Message::Open(open));
}

/// A 4-octet AS puts AS_TRANS (23456) in My Autonomous System (RFC 6793 §4.1).
#[test]
fn four_octet_as_uses_as_trans() {
    let open = Open::new(
        4_200_000_001,
        90,
        Ipv4Addr::new(192, 0, 2, 1),
        vec![Capability::FourOctetAs { asn: 4_200_000_001 }],
    );
    assert_eq!(open.my_as, 23456);
    let bytes = Message::Open(open).to_bytes(Context::default()).unwrap();
    let Message::Open(back) = decode(&bytes).unwrap() else {
        panic!()
    };
    assert_eq!(back.asn(), 4_200_000_001);
}

#[test]
fn keepalive() {
    roundtrip(
        &hex("ffffffffffffffffffffffffffffffff 0013 04"),
        &Message::Keepalive,
    );
}

/// BIRD's IPv4 UPDATE, captured: 198.51.100.0/24 from AS 65000, next hop 10.99.0.1.
#[test]
fn bird_ipv4_update() {
    let bytes = hex("ffffffffffffffffffffffffffffffff 002f 02
        0000 0014
        40 01 01 00                   # ORIGIN IGP
        40 02 06 02 01 0000fde8       # AS_PATH: sequence [65000]
        40 03 04 0a630001             # NEXT_HOP 10.99.0.1
        18 c63364                     # 198.51.100.0/24"
        .lines()
        .map(|l| l.split('#').next().unwrap())
        .collect::<String>()
        .as_str());
    let expected = Message::Update(Update {
        withdrawn: vec![],
        attributes: vec![
            PathAttribute::Origin(Origin::Igp),
            PathAttribute::AsPath(vec![AsSegment {
                kind: AsSegmentKind::Sequence,
                asns: vec![65000],
            }]),
            PathAttribute::NextHop(Ipv4Addr::new(10, 99, 0, 1)),
        ],
        nlri: vec![p("198.51.100.0/24")],
    });
    roundtrip(&bytes, &expected);
}

/// BIRD's IPv6 UPDATE, captured: MP_REACH_NLRI first (with the Extended Length flag
/// although it is short), a global and a link-local next hop.
#[test]
fn bird_ipv6_update() {
    let bytes = hex("ffffffffffffffffffffffffffffffff 0054 02 0000 003d
        90 0e 002c 0002 01 20 20010db8009900000000000000000001 fe80000000000000c4f1a8fffe4dda10
        00 30 20010db80005
        40 01 01 00  40 02 06 02 01 0000fde8");
    let expected = Update {
        withdrawn: vec![],
        attributes: vec![
            PathAttribute::MpReach(MpReach {
                family: Family::Ipv6Unicast,
                next_hops: vec![
                    IpAddr::V6("2001:db8:99::1".parse().unwrap()),
                    IpAddr::V6("fe80::c4f1:a8ff:fe4d:da10".parse().unwrap()),
                ],
                nlri: vec![p("2001:db8:5::/48")],
            }),
            PathAttribute::Origin(Origin::Igp),
            PathAttribute::AsPath(vec![AsSegment {
                kind: AsSegmentKind::Sequence,
                asns: vec![65000],
            }]),
        ],
        nlri: vec![],
    };
    assert_eq!(decode(&bytes).unwrap(), Message::Update(expected.clone()));
    // We set Extended Length only when needed, so our encoding is a byte shorter.
    let ours = Message::Update(expected.clone())
        .to_bytes(Context::FOUR_OCTET)
        .unwrap();
    assert_eq!(ours.len(), bytes.len() - 1);
    assert_eq!(decode(&ours).unwrap(), Message::Update(expected));
}

/// BIRD's End-of-RIB markers, captured: an empty UPDATE for IPv4, an empty
/// MP_UNREACH_NLRI for IPv6 (RFC 4724 §2).
#[test]
fn bird_end_of_rib() {
    let v4 = hex("ffffffffffffffffffffffffffffffff 0017 02 0000 0000");
    roundtrip(
        &v4,
        &Message::Update(Update::end_of_rib(Family::Ipv4Unicast)),
    );
    let v6 = hex("ffffffffffffffffffffffffffffffff 001d 02 0000 0006 80 0f 03 0002 01");
    roundtrip(
        &v6,
        &Message::Update(Update::end_of_rib(Family::Ipv6Unicast)),
    );
}

/// What the speaker sends for a VIP: every attribute it uses, IPv4 and IPv6.
#[test]
fn our_vip_updates_encode_exactly() {
    let common = vec![
        PathAttribute::Origin(Origin::Igp),
        PathAttribute::AsPath(vec![AsSegment {
            kind: AsSegmentKind::Sequence,
            asns: vec![65001],
        }]),
    ];
    let mut attrs = common.clone();
    attrs.extend([
        PathAttribute::NextHop(Ipv4Addr::new(10, 99, 0, 2)),
        PathAttribute::MultiExitDisc(100),
        PathAttribute::Communities(vec![(65001 << 16) | 42]),
        PathAttribute::LargeCommunities(vec![LargeCommunity {
            global: 65001,
            local1: 1,
            local2: 2,
        }]),
    ]);
    let v4 = Message::Update(Update {
        withdrawn: vec![],
        attributes: attrs,
        nlri: vec![p("192.0.2.10/32")],
    });
    roundtrip(
        &hex("ffffffffffffffffffffffffffffffff 004d 02 0000 0031
            40 01 01 00
            40 02 06 02 01 0000fde9
            40 03 04 0a630002
            80 04 04 00000064
            c0 08 04 fde9002a
            c0 20 0c 0000fde9 00000001 00000002
            20 c000020a"),
        &v4,
    );
    let mut attrs = vec![PathAttribute::MpReach(MpReach {
        family: Family::Ipv6Unicast,
        next_hops: vec![IpAddr::V6(Ipv6Addr::new(
            0x2001, 0xdb8, 0x99, 0, 0, 0, 0, 2,
        ))],
        nlri: vec![p("2001:db8:100::10/128")],
    })];
    attrs.extend(common);
    let v6 = Message::Update(Update {
        withdrawn: vec![],
        attributes: attrs,
        nlri: vec![],
    });
    roundtrip(
        &hex("ffffffffffffffffffffffffffffffff 004d 02 0000 0036
            80 0e 26 0002 01 10 20010db8009900000000000000000002 00
               80 20010db8010000000000000000000010
            40 01 01 00
            40 02 06 02 01 0000fde9"),
        &v6,
    );
}

#[test]
fn withdrawals_encode_exactly() {
    let v4 = Message::Update(Update {
        withdrawn: vec![p("192.0.2.10/32")],
        ..Update::default()
    });
    roundtrip(
        &hex("ffffffffffffffffffffffffffffffff 001c 02 0005 20c000020a 0000"),
        &v4,
    );
    let v6 = Message::Update(Update {
        attributes: vec![PathAttribute::MpUnreach(MpUnreach {
            family: Family::Ipv6Unicast,
            withdrawn: vec![p("2001:db8:100::10/128")],
        })],
        ..Update::default()
    });
    roundtrip(
        &hex("ffffffffffffffffffffffffffffffff 002e 02 0000 0017
            80 0f 14 0002 01 80 20010db8010000000000000000000010"),
        &v6,
    );
}

/// A 2-octet session: AS_PATH carries 2-octet numbers, AS_TRANS for wide ones, and
/// AS4_PATH the real path (RFC 6793 §4.2.2).
#[test]
fn two_octet_session_as_path() {
    let u = Message::Update(Update {
        attributes: vec![
            PathAttribute::Origin(Origin::Igp),
            PathAttribute::AsPath(vec![AsSegment {
                kind: AsSegmentKind::Sequence,
                asns: vec![4_200_000_001],
            }]),
            PathAttribute::NextHop(Ipv4Addr::new(10, 0, 0, 1)),
            PathAttribute::As4Path(vec![AsSegment {
                kind: AsSegmentKind::Sequence,
                asns: vec![4_200_000_001],
            }]),
        ],
        nlri: vec![p("192.0.2.10/32")],
        withdrawn: vec![],
    });
    let bytes = u.to_bytes(Context::default()).unwrap();
    assert_eq!(
        bytes,
        hex("ffffffffffffffffffffffffffffffff 0037 02 0000 001b
            40 01 01 00  40 02 04 02 01 5ba0  40 03 04 0a000001  c0 11 06 02 01 fa56ea01
            20 c000020a")
    );
    let Message::Update(back) = Message::parse(&bytes, Context::default()).unwrap() else {
        panic!()
    };
    assert_eq!(
        back.attributes[1],
        PathAttribute::AsPath(vec![AsSegment {
            kind: AsSegmentKind::Sequence,
            asns: vec![23456]
        }])
    );
}

/// BIRD's Cease / Administrative Shutdown, captured when it was stopped.
#[test]
fn bird_cease() {
    roundtrip(
        &hex("ffffffffffffffffffffffffffffffff 0015 03 06 02"),
        &Message::Notification(Notification {
            code: 6,
            subcode: 2,
            data: vec![],
        }),
    );
}

/// RFC 8203 §2: Cease / Administrative Shutdown with a length-prefixed UTF-8 message.
#[test]
fn shutdown_communication() {
    let n = Notification::shutdown("maintenance");
    roundtrip(
        &hex("ffffffffffffffffffffffffffffffff 0021 03 06 02 0b 6d61696e74656e616e6365"),
        &Message::Notification(n.clone()),
    );
    assert_eq!(n.shutdown_message().as_deref(), Some("maintenance"));
    assert_eq!(
        n.to_string(),
        "cease / administrative shutdown (6/2): \"maintenance\""
    );
    // Cut to 128 octets at a character boundary.
    let long = "é".repeat(100);
    let n = Notification::shutdown(&long);
    assert_eq!(n.data[0], 128);
    assert_eq!(n.shutdown_message().unwrap().chars().count(), 64);
}

#[test]
fn route_refresh() {
    roundtrip(
        &hex("ffffffffffffffffffffffffffffffff 0017 05 0002 00 01"),
        &Message::RouteRefresh(RouteRefresh::new(Family::Ipv6Unicast)),
    );
}

fn err(bytes: &str) -> DecodeError {
    decode(&hex(bytes)).unwrap_err()
}

fn notification_of(bytes: &str) -> (u8, u8, Vec<u8>) {
    let n = err(bytes).notification();
    (n.code, n.subcode, n.data)
}

#[test]
fn header_errors_name_their_notifications() {
    // Bad marker: 1/1.
    assert_eq!(
        notification_of("fffffffffffffffffffffffffffffffe 0013 04"),
        (1, 1, vec![])
    );
    // Length below 19, above 4096, and wrong for the type: 1/2 with the length.
    assert_eq!(
        notification_of("ffffffffffffffffffffffffffffffff 0012 04"),
        (1, 2, vec![0, 0x12])
    );
    assert_eq!(
        notification_of("ffffffffffffffffffffffffffffffff 1001 02"),
        (1, 2, vec![0x10, 0x01])
    );
    assert_eq!(
        notification_of("ffffffffffffffffffffffffffffffff 0014 04 00"),
        (1, 2, vec![0, 0x14])
    );
    assert_eq!(
        notification_of("ffffffffffffffffffffffffffffffff 0018 05 0001 00 01 00"),
        (1, 2, vec![0, 0x18])
    );
    // Unknown type: 1/3 with the type.
    assert_eq!(
        notification_of("ffffffffffffffffffffffffffffffff 0013 09"),
        (1, 3, vec![9])
    );
    // An incomplete message asks for more bytes.
    assert_eq!(
        frame(&hex("ffffffffffffffffffffffffffffffff 0017")),
        Ok(None)
    );
    assert_eq!(frame(&hex("ffff")), Ok(None));
    assert_eq!(
        frame(&hex("ff00")),
        Err(DecodeError::ConnectionNotSynchronized)
    );
}

/// RFC 7313 §5: a BoRR or EoRR (subtype 1, 2) whose body is not four octets is answered
/// with ROUTE-REFRESH Message Error / Invalid Message Length (7/1) carrying the whole
/// message; an unknown subtype is framed, to be ignored; a plain refresh (subtype 0),
/// or one too short to show its subtype, stays a Bad Message Length (1/2).
#[test]
fn route_refresh_length_errors_depend_on_the_subtype() {
    let borr = "ffffffffffffffffffffffffffffffff 0018 05 0001 01 01 00";
    assert_eq!(notification_of(borr), (7, 1, hex(borr)));
    let eorr = "ffffffffffffffffffffffffffffffff 0016 05 0001 02";
    assert_eq!(notification_of(eorr), (7, 1, hex(eorr)));
    let shown = err(eorr).notification().to_string();
    assert!(
        shown.starts_with("ROUTE-REFRESH message error / invalid message length (7/1), data ff ff"),
        "{shown}"
    );
    // Read whole before it is judged: the data is the whole message.
    assert_eq!(
        frame(&hex("ffffffffffffffffffffffffffffffff 0018 05 0001 01 01")),
        Ok(None)
    );
    // Too short to show a subtype, or subtype 0: 1/2.
    assert_eq!(
        notification_of("ffffffffffffffffffffffffffffffff 0015 05 0001"),
        (1, 2, vec![0, 0x15])
    );
    assert_eq!(
        notification_of("ffffffffffffffffffffffffffffffff 0016 05 0001 00"),
        (1, 2, vec![0, 0x16])
    );
    // An unknown subtype is decoded, whatever its length, for the session to ignore.
    for unknown in [
        "ffffffffffffffffffffffffffffffff 0016 05 0001 03",
        "ffffffffffffffffffffffffffffffff 0019 05 0001 ff 01 0000",
    ] {
        match decode(&hex(unknown)) {
            Ok(Message::RouteRefresh(rr)) => assert!(rr.subtype >= 3, "{rr:?}"),
            other => panic!("{unknown}: {other:?}"),
        }
    }
    // The longest BoRR: its data is cut to fit a NOTIFICATION.
    let mut long = hex("ffffffffffffffffffffffffffffffff 1000 05 0001 01 01");
    long.resize(4096, 0);
    let n = decode(&long).unwrap_err().notification();
    assert_eq!((n.code, n.subcode, n.data.len()), (7, 1, 4096 - 21));
    assert_eq!(n.data[..], long[..4096 - 21]);
    assert!(Message::Notification(n)
        .to_bytes(Context::default())
        .is_ok());
}

#[test]
fn open_errors_name_their_notifications() {
    // Version 3: 2/1, data is the version we support.
    assert_eq!(
        notification_of("ffffffffffffffffffffffffffffffff 001d 01 03 fde8 005a 0a000001 00"),
        (2, 1, vec![0, 4])
    );
    // Hold time 1 and 2: 2/6.
    for hold in ["0001", "0002"] {
        let n = notification_of(&format!(
            "ffffffffffffffffffffffffffffffff 001d 01 04 fde8 {hold} 0a000001 00"
        ));
        assert_eq!(n, (2, 6, vec![]));
    }
    // Hold time 0 is allowed (no keepalives).
    assert!(decode(&hex(
        "ffffffffffffffffffffffffffffffff 001d 01 04 fde8 0000 0a000001 00"
    ))
    .is_ok());
    // BGP identifier 0: 2/3.
    assert_eq!(
        notification_of("ffffffffffffffffffffffffffffffff 001d 01 04 fde8 005a 00000000 00"),
        (2, 3, vec![])
    );
    // Optional parameter type 1 (authentication, deprecated): 2/4.
    assert_eq!(
        err("ffffffffffffffffffffffffffffffff 0020 01 04 fde8 005a 0a000001 03 01 01 00"),
        DecodeError::Open(OpenError::UnsupportedOptionalParameter { kind: 1 })
    );
    // Optional parameter length disagreeing with the message, truncated capability,
    // malformed multiprotocol capability: 2/0.
    assert_eq!(
        notification_of("ffffffffffffffffffffffffffffffff 001d 01 04 fde8 005a 0a000001 05").1,
        0
    );
    assert_eq!(
        notification_of(
            "ffffffffffffffffffffffffffffffff 0020 01 04 fde8 005a 0a000001 03 02 01 41"
        )
        .1,
        0
    );
    assert_eq!(
        notification_of(
            "ffffffffffffffffffffffffffffffff 0024 01 04 fde8 005a 0a000001 07 02 05 01 03 000101"
        )
        .1,
        0
    );
    // Zero-length capabilities parameter and unknown capability codes are fine.
    let ok = decode(&hex(
        "ffffffffffffffffffffffffffffffff 0025 01 04 fde8 005a 0a000001 08 02 00 02 04 ee 02 abcd",
    ));
    let Ok(Message::Open(open)) = ok else {
        panic!("{ok:?}")
    };
    assert_eq!(
        open.parameters,
        vec![
            vec![],
            vec![Capability::Unknown {
                code: 0xee,
                value: vec![0xab, 0xcd]
            }]
        ]
    );
}

fn update_err(body: &str) -> bgp::wire::UpdateError {
    let body = hex(body);
    let mut msg = hex("ffffffffffffffffffffffffffffffff 0000 02");
    msg.extend_from_slice(&body);
    let len = msg.len() as u16;
    msg[16..18].copy_from_slice(&len.to_be_bytes());
    match decode(&msg).unwrap_err() {
        DecodeError::Update(e) => e,
        other => panic!("{other:?}"),
    }
}

#[test]
fn update_errors_follow_rfc7606() {
    use ErrorAction::*;
    use UpdateErrorKind::*;
    let check = |body: &str, kind, action| {
        let e = update_err(body);
        assert_eq!((e.kind, e.action), (kind, action), "{body}");
        e
    };
    // Withdrawn length beyond the message: session reset (RFC 7606 §4).
    check("0009 00 0000", MalformedAttributeList, SessionReset);
    // Total attribute length beyond the message: session reset.
    check("0000 0009 400101", MalformedAttributeList, SessionReset);
    // NLRI prefix length 33: invalid network field, session reset (RFC 7606 §5.3).
    check("0000 0000 21 c0000201ff", InvalidNetworkField, SessionReset);
    // Attribute overrunning the attribute field: treat-as-withdraw (RFC 7606 §4).
    check("0000 0004 400105 00", AttributeLengthError, TreatAsWithdraw);
    // Bad ORIGIN value; ORIGIN of length 2; AS_PATH with an empty segment; flags
    // of a well-known attribute marked optional: all treat-as-withdraw, the data is
    // the attribute itself.
    let e = check("0000 0004 40010103", InvalidOrigin, TreatAsWithdraw);
    assert_eq!(e.data, hex("40010103"));
    assert_eq!(DecodeError::Update(e).notification().subcode, 6);
    check(
        "0000 0005 4001020000",
        AttributeLengthError,
        TreatAsWithdraw,
    );
    check("0000 0005 4002020200", MalformedAsPath, TreatAsWithdraw);
    check("0000 0004 c0010100", AttributeFlagsError, TreatAsWithdraw);
    // AS 0 in AS_PATH (RFC 7607).
    check(
        "0000 0009 400206020100000000",
        MalformedAsPath,
        TreatAsWithdraw,
    );
    // COMMUNITIES of length 3 (RFC 7606 §7.8), LARGE_COMMUNITIES of 8 (RFC 8092 §5).
    check(
        "0000 0006 c00803000000",
        AttributeLengthError,
        TreatAsWithdraw,
    );
    check(
        "0000 000b c0200800000000 00000000",
        AttributeLengthError,
        TreatAsWithdraw,
    );
    // IPv4 NLRI without NEXT_HOP: missing well-known attribute, data is its code.
    let e = check(
        "0000 000d 40010100 400206020100000001 18c00002",
        MissingWellKnownAttribute,
        TreatAsWithdraw,
    );
    assert_eq!(e.data, vec![3]);
    // NLRI with no attributes at all.
    check(
        "0000 0000 18c00002",
        MissingWellKnownAttribute,
        TreatAsWithdraw,
    );
    // MP_REACH_NLRI with a 5-octet next hop, or twice: session reset.
    check(
        "0000 000c 800e09 0002 01 05 0000000000",
        OptionalAttributeError,
        SessionReset,
    );
    // A prefix longer than its family inside MP_UNREACH_NLRI (IPv6 /129) or MP_REACH_NLRI
    // (IPv4 /33): Optional Attribute Error with the attribute as data (RFC 4760 §7), not
    // the Invalid Network Field of the UPDATE's own NLRI.
    for attr in [
        "800f04 0002 01 81",
        "800e0e 0001 01 04 c0000201 00 21 c0000201",
    ] {
        let body = format!("0000 {:04x} {attr}", hex(attr).len());
        let e = check(&body, OptionalAttributeError, SessionReset);
        let n = DecodeError::Update(e).notification();
        assert_eq!((n.code, n.subcode, n.data), (3, 9, hex(attr)));
    }
    check(
        "0000 000c 800f03000201 800f03000201",
        MalformedAttributeList,
        SessionReset,
    );
    // An unrecognised well-known attribute: RFC 4271 §6.3, not revised by RFC 7606.
    let e = check(
        "0000 0003 406300",
        UnrecognizedWellKnownAttribute,
        SessionReset,
    );
    assert_eq!(e.data, hex("406300"));
    let n = DecodeError::Update(e).notification();
    assert_eq!((n.code, n.subcode, n.data), (3, 2, hex("406300")));
    // A NEXT_HOP that is no host address: 0.0.0.0, multicast, broadcast.
    for nh in ["00000000", "00010203", "e0000005", "ffffffff"] {
        let e = check(
            &format!("0000 0014 40010100 40020602010000fde9 400304 {nh} 18c00002"),
            InvalidNextHop,
            TreatAsWithdraw,
        );
        assert_eq!(e.data, hex(&format!("400304{nh}")));
    }
}

#[test]
fn update_tolerates_what_rfc7606_discards() {
    // A repeated MED is dropped; a malformed AGGREGATOR is discarded; an unknown
    // optional attribute is kept raw; MP_REACH for a family we do not know stays raw.
    let body = hex("0000 0035
        40010100 40020602010000fde9 400304 0a000001
        80040400000001 80040400000002
        c00703 000000
        c0630201ff
        800e05 0019 46 00 00
        18 c00002");
    let mut msg = hex("ffffffffffffffffffffffffffffffff 0000 02");
    msg.extend_from_slice(&body);
    let len = msg.len() as u16;
    msg[16..18].copy_from_slice(&len.to_be_bytes());
    let Message::Update(u) = decode(&msg).unwrap() else {
        panic!()
    };
    assert_eq!(u.attributes.len(), 6, "{u:?}");
    assert!(u.attributes.contains(&PathAttribute::MultiExitDisc(1)));
    assert!(u.attributes.contains(&PathAttribute::Unknown {
        flags: 0xc0,
        code: 0x63,
        value: vec![1, 0xff]
    }));
    assert!(u.attributes.contains(&PathAttribute::Unknown {
        flags: 0x80,
        code: 14,
        value: hex("0019 46 00 00")
    }));
    assert_eq!(u.nlri, vec![p("192.0.2.0/24")]);
}

#[test]
fn encoder_refuses_oversized_messages() {
    let nlri: Vec<Prefix> = (0..1000u32)
        .map(|i| Prefix::host(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))))
        .collect();
    let u = Message::Update(Update {
        nlri,
        ..Update::default()
    });
    assert!(u.to_bytes(Context::FOUR_OCTET).is_err());
}

/// RFC 9072 extended optional parameters: length 255, type 255, a 2-octet length,
/// and 2-octet parameter lengths. We send it only when the classic form overflows.
#[test]
fn extended_optional_parameters() {
    let bytes = hex("ffffffffffffffffffffffffffffffff 002b 01
        04 fde8 005a 0a000001
        ff ff 000b
        02 0008 01 04 0001 00 01 02 00");
    let Message::Open(open) = decode(&bytes).unwrap() else {
        panic!()
    };
    assert_eq!(
        open.parameters,
        vec![vec![
            Capability::multiprotocol(Family::Ipv4Unicast),
            Capability::RouteRefresh
        ]]
    );
    // Small enough for the classic form, which is what we send back.
    assert_eq!(
        Message::Open(open.clone())
            .to_bytes(Context::default())
            .unwrap()
            .len(),
        bytes.len() - 4
    );
    // Many capabilities: the extended form, and it decodes back.
    let big = Open {
        parameters: vec![(0..100)
            .map(|i| Capability::Unknown {
                code: 200,
                value: vec![i],
            })
            .collect()],
        ..open
    };
    let bytes = Message::Open(big.clone())
        .to_bytes(Context::default())
        .unwrap();
    assert_eq!(bytes[28..31], [255, 255, 0x01]);
    assert_eq!(decode(&bytes).unwrap(), Message::Open(big));
}
