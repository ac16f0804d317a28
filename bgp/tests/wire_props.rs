//! Property tests: every message we can build encodes and decodes back to itself, and
//! the decoder returns (never panics) on arbitrary and on mutated valid input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bgp::wire::{
    frame, AsSegment, AsSegmentKind, Capability, Context, Family, GracefulRestart, LargeCommunity,
    Message, MpReach, MpUnreach, Notification, Open, Origin, PathAttribute, Prefix, RouteRefresh,
    Update,
};
use proptest::collection::vec;
use proptest::prelude::*;

fn prefix_v4() -> impl Strategy<Value = Prefix> {
    (any::<u32>(), 0u8..=32)
        .prop_map(|(a, l)| Prefix::new(IpAddr::V4(Ipv4Addr::from(a)), l).unwrap())
}

fn prefix_v6() -> impl Strategy<Value = Prefix> {
    (any::<u128>(), 0u8..=128)
        .prop_map(|(a, l)| Prefix::new(IpAddr::V6(Ipv6Addr::from(a)), l).unwrap())
}

fn capability() -> impl Strategy<Value = Capability> {
    prop_oneof![
        (any::<u16>(), any::<u8>()).prop_map(|(afi, safi)| Capability::Multiprotocol { afi, safi }),
        Just(Capability::RouteRefresh),
        (
            any::<bool>(),
            any::<bool>(),
            0u16..4096,
            vec((any::<u16>(), any::<u8>(), any::<bool>()), 0..3)
        )
            .prop_map(|(restarting, notification, restart_time, families)| {
                Capability::GracefulRestart(GracefulRestart {
                    restarting,
                    notification,
                    restart_time,
                    families,
                })
            }),
        any::<u32>().prop_map(|asn| Capability::FourOctetAs { asn }),
        // Codes this crate does not interpret.
        (prop_oneof![3u8..64, 66u8..=255], vec(any::<u8>(), 0..100))
            .prop_map(|(code, value)| Capability::Unknown { code, value }),
    ]
}

fn open() -> impl Strategy<Value = Open> {
    (
        any::<u16>(),
        any::<u16>().prop_filter("1 and 2 are refused", |h| *h != 1 && *h != 2),
        1u32..,
        vec(vec(capability(), 0..4), 0..4),
    )
        .prop_map(|(my_as, hold_time, id, parameters)| Open {
            my_as,
            hold_time,
            bgp_id: Ipv4Addr::from(id),
            parameters,
        })
}

fn segments() -> impl Strategy<Value = Vec<AsSegment>> {
    let kind = prop_oneof![
        Just(AsSegmentKind::Set),
        Just(AsSegmentKind::Sequence),
        Just(AsSegmentKind::ConfedSequence),
        Just(AsSegmentKind::ConfedSet),
    ];
    vec(
        (kind, vec(1u32.., 1..6)).prop_map(|(kind, asns)| AsSegment { kind, asns }),
        0..3,
    )
}

fn attribute() -> impl Strategy<Value = PathAttribute> {
    prop_oneof![
        prop_oneof![
            Just(Origin::Igp),
            Just(Origin::Egp),
            Just(Origin::Incomplete)
        ]
        .prop_map(PathAttribute::Origin),
        segments().prop_map(PathAttribute::AsPath),
        // Host addresses only: others are Invalid NEXT_HOP (RFC 4271 §6.3).
        (0x0100_0000u32..0xe000_0000).prop_map(|a| PathAttribute::NextHop(Ipv4Addr::from(a))),
        any::<u32>().prop_map(PathAttribute::MultiExitDisc),
        any::<u32>().prop_map(PathAttribute::LocalPref),
        Just(PathAttribute::AtomicAggregate),
        (any::<u32>(), any::<u32>()).prop_map(|(asn, a)| PathAttribute::Aggregator {
            asn,
            address: Ipv4Addr::from(a)
        }),
        vec(any::<u32>(), 1..5).prop_map(PathAttribute::Communities),
        vec(any::<(u32, u32, u32)>(), 1..4).prop_map(|v| PathAttribute::LargeCommunities(
            v.into_iter()
                .map(|(global, local1, local2)| LargeCommunity {
                    global,
                    local1,
                    local2
                })
                .collect()
        )),
        (
            any::<u128>(),
            proptest::option::of(any::<u128>()),
            vec(prefix_v6(), 0..4)
        )
            .prop_map(|(g, ll, nlri)| {
                let mut next_hops = vec![IpAddr::V6(Ipv6Addr::from(g))];
                next_hops.extend(ll.map(|l| IpAddr::V6(Ipv6Addr::from(l))));
                PathAttribute::MpReach(MpReach {
                    family: Family::Ipv6Unicast,
                    next_hops,
                    nlri,
                })
            }),
        (any::<u32>(), vec(prefix_v4(), 0..4)).prop_map(|(nh, nlri)| PathAttribute::MpReach(
            MpReach {
                family: Family::Ipv4Unicast,
                next_hops: vec![IpAddr::V4(Ipv4Addr::from(nh))],
                nlri,
            }
        )),
        vec(prefix_v6(), 0..4).prop_map(|withdrawn| PathAttribute::MpUnreach(MpUnreach {
            family: Family::Ipv6Unicast,
            withdrawn
        })),
        segments().prop_map(PathAttribute::As4Path),
        (any::<u32>(), any::<u32>()).prop_map(|(asn, a)| PathAttribute::As4Aggregator {
            asn,
            address: Ipv4Addr::from(a)
        }),
        // Unknown optional attributes, short and long (extended length).
        (
            any::<bool>(),
            any::<bool>(),
            prop_oneof![9u8..14, 19u8..32, 33u8..=255],
            vec(any::<u8>(), 0..300)
        )
            .prop_map(|(t, partial, code, value)| {
                let mut flags = 0x80;
                if t {
                    flags |= 0x40;
                }
                if partial {
                    flags |= 0x20;
                }
                PathAttribute::Unknown { flags, code, value }
            }),
    ]
}

/// An UPDATE as a well-behaved peer builds it: each attribute once, and the
/// mandatory ones present whenever routes are announced.
fn update() -> impl Strategy<Value = Update> {
    (
        vec(prefix_v4(), 0..5),
        vec(attribute(), 0..6),
        vec(prefix_v4(), 0..5),
    )
        .prop_map(|(withdrawn, attrs, nlri)| {
            let mut attributes: Vec<PathAttribute> = Vec::new();
            let code = |a: &PathAttribute| std::mem::discriminant(a);
            let mut announcing = !nlri.is_empty();
            for a in attrs {
                let dup = attributes.iter().any(|b| match (a.clone(), b) {
                    (
                        PathAttribute::Unknown { code: x, .. },
                        PathAttribute::Unknown { code: y, .. },
                    ) => x == *y,
                    _ => code(&a) == code(b),
                });
                if let PathAttribute::MpReach(mp) = &a {
                    announcing |= !mp.nlri.is_empty();
                }
                if !dup {
                    attributes.push(a);
                }
            }
            if announcing {
                let has =
                    |f: fn(&PathAttribute) -> bool, attrs: &Vec<PathAttribute>| attrs.iter().any(f);
                if !has(|a| matches!(a, PathAttribute::Origin(_)), &attributes) {
                    attributes.push(PathAttribute::Origin(Origin::Igp));
                }
                if !has(|a| matches!(a, PathAttribute::AsPath(_)), &attributes) {
                    attributes.push(PathAttribute::AsPath(vec![]));
                }
                if !nlri.is_empty() && !has(|a| matches!(a, PathAttribute::NextHop(_)), &attributes)
                {
                    attributes.push(PathAttribute::NextHop(Ipv4Addr::new(192, 0, 2, 1)));
                }
            }
            Update {
                withdrawn,
                attributes,
                nlri,
            }
        })
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        open().prop_map(Message::Open),
        update().prop_map(Message::Update),
        (any::<u8>(), any::<u8>(), vec(any::<u8>(), 0..40)).prop_map(|(code, subcode, data)| {
            Message::Notification(Notification {
                code,
                subcode,
                data,
            })
        }),
        Just(Message::Keepalive),
        (any::<u16>(), any::<u8>(), any::<u8>()).prop_map(|(afi, subtype, safi)| {
            Message::RouteRefresh(RouteRefresh { afi, subtype, safi })
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn encode_then_decode_is_identity(msg in message(), four in any::<bool>()) {
        let ctx = Context { four_octet_as: four };
        // 2-octet sessions cannot carry AS numbers above 65535 in AS_PATH or
        // AGGREGATOR; those go through AS_TRANS and are checked in the golden tests.
        if !four {
            if let Message::Update(u) = &msg {
                let wide = u.attributes.iter().any(|a| match a {
                    PathAttribute::AsPath(s) => s.iter().flat_map(|s| &s.asns).any(|&a| a > 0xffff),
                    PathAttribute::Aggregator { asn, .. } => *asn > 0xffff,
                    _ => false,
                });
                prop_assume!(!wide);
            }
        }
        if let Ok(bytes) = msg.to_bytes(ctx) {
            prop_assert_eq!(frame(&bytes), Ok(Some((msg.kind(), bytes.len()))));
            prop_assert_eq!(Message::parse(&bytes, ctx), Ok(msg));
        }
    }

    #[test]
    fn decoder_never_panics_on_arbitrary_bytes(bytes in vec(any::<u8>(), 0..600), four in any::<bool>()) {
        let ctx = Context { four_octet_as: four };
        let _ = frame(&bytes);
        let _ = Message::parse(&bytes, ctx);
        // And with a valid header in front, so the body parsers see the bytes too.
        for kind in 1u8..=5 {
            let mut msg = vec![0xff; 16];
            msg.extend_from_slice(&((19 + bytes.len()) as u16).to_be_bytes());
            msg.push(kind);
            msg.extend_from_slice(&bytes);
            if let Err(e) = Message::parse(&msg, ctx) {
                let _ = e.notification();
            }
        }
    }

    #[test]
    fn decoder_never_panics_on_mutated_messages(
        msg in message(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        if let Ok(mut bytes) = msg.to_bytes(Context::FOUR_OCTET) {
            for (i, v) in flips {
                let i = i.index(bytes.len() - 16) + 16;
                bytes[i] = v;
            }
            let _ = Message::parse(&bytes, Context::FOUR_OCTET);
            let n = cut.index(bytes.len());
            let _ = Message::parse(&bytes[..n], Context::FOUR_OCTET);
        }
    }
}
