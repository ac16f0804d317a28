//! The Adj-RIB-Out of one peer (RFC 4271 §3.2, §9.2): what we have told it, and the
//! UPDATEs that turn that into what we want it to know. Pure: no I/O.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::wire::{
    AsSegment, AsSegmentKind, Context, Family, LargeCommunity, MpReach, MpUnreach, Origin,
    PathAttribute, Prefix, Update, MAX_MESSAGE_LEN,
};

/// Per-VIP attributes the control plane may set.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteAttributes {
    /// MULTI_EXIT_DISC (RFC 4271 §5.1.4): lower is preferred by the neighbour AS.
    pub med: Option<u32>,
    /// COMMUNITIES (RFC 1997), each `(AS << 16) | value`.
    pub communities: Vec<u32>,
    /// LARGE_COMMUNITIES (RFC 8092).
    pub large_communities: Vec<LargeCommunity>,
}

/// The routes to announce: prefix to attributes.
pub type Routes = BTreeMap<Prefix, RouteAttributes>;

/// How to build attributes for one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    pub local_as: u32,
    /// iBGP: empty AS_PATH and LOCAL_PREF (RFC 4271 §5.1.2, §5.1.5).
    pub internal: bool,
    pub ctx: Context,
    pub families: Vec<Family>,
    /// NEXT_HOP for IPv4 routes and the MP_REACH next hop for IPv6 ones; a family
    /// without one cannot be announced.
    pub next_hop_v4: Option<Ipv4Addr>,
    pub next_hop_v6: Option<Ipv6Addr>,
    /// The link-local address that goes with `next_hop_v6` in MP_REACH_NLRI, when the
    /// peer shares a link with it (RFC 2545 §3: then, and only then, it is included).
    pub next_hop_v6_link_local: Option<Ipv6Addr>,
}

impl Export {
    /// Whether a prefix can go to this peer.
    pub fn exportable(&self, p: &Prefix) -> bool {
        let family = p.family();
        self.families.contains(&family)
            && match family {
                Family::Ipv4Unicast => self.next_hop_v4.is_some(),
                Family::Ipv6Unicast => self.next_hop_v6.is_some(),
            }
    }

    fn attributes(&self, attrs: &RouteAttributes, family: Family) -> Vec<PathAttribute> {
        let mut out = Vec::new();
        if family == Family::Ipv6Unicast {
            if let Some(nh) = self.next_hop_v6 {
                // RFC 4760 §3: MP_REACH_NLRI first is customary; the NLRI is filled in
                // by the packer.
                // RFC 2545 §3: the global address, then the link-local one if any.
                let next_hops = std::iter::once(nh)
                    .chain(self.next_hop_v6_link_local)
                    .map(Into::into)
                    .collect();
                out.push(PathAttribute::MpReach(MpReach {
                    family,
                    next_hops,
                    nlri: vec![],
                }));
            }
        }
        out.push(PathAttribute::Origin(Origin::Igp));
        // RFC 4271 §5.1.2: an eBGP speaker prepends its own AS.
        let path = if self.internal {
            vec![]
        } else {
            vec![AsSegment {
                kind: AsSegmentKind::Sequence,
                asns: vec![self.local_as],
            }]
        };
        if family == Family::Ipv4Unicast {
            if let Some(nh) = self.next_hop_v4 {
                out.push(PathAttribute::AsPath(path.clone()));
                out.push(PathAttribute::NextHop(nh));
            }
        } else {
            out.push(PathAttribute::AsPath(path.clone()));
        }
        if let Some(med) = attrs.med {
            out.push(PathAttribute::MultiExitDisc(med));
        }
        if self.internal {
            out.push(PathAttribute::LocalPref(100));
        }
        if !attrs.communities.is_empty() {
            out.push(PathAttribute::Communities(attrs.communities.clone()));
        }
        // RFC 6793 §4.2.2: a 2-octet session carries a wide AS in AS4_PATH.
        if !self.ctx.four_octet_as && self.local_as > 0xffff && !path.is_empty() {
            out.push(PathAttribute::As4Path(path));
        }
        if !attrs.large_communities.is_empty() {
            out.push(PathAttribute::LargeCommunities(
                attrs.large_communities.clone(),
            ));
        }
        out
    }
}

/// A route whose path attributes leave no room for its prefix in one UPDATE of at
/// most [`MAX_MESSAGE_LEN`] octets (RFC 4271 §4): it cannot be announced at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{prefix} not announced: with its path attributes one UPDATE would take {needed} octets, more than the {MAX_MESSAGE_LEN} a BGP message may have (RFC 4271 §4); configure fewer communities")]
pub struct Unsendable {
    pub prefix: Prefix,
    /// Octets the smallest UPDATE carrying it would take.
    pub needed: usize,
}

/// What [`AdjRibOut::sync`] decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// To send, in order.
    pub updates: Vec<Update>,
    /// Routes that cannot be announced, each reported once (until its attributes
    /// change or the session restarts). A route that was announced before and now
    /// cannot be is withdrawn: the peer must not keep attributes we no longer want.
    pub refused: Vec<Unsendable>,
}

/// What one peer has been told.
#[derive(Debug, Default)]
pub struct AdjRibOut {
    sent: Routes,
    /// Routes refused last time, so that each is reported once.
    refused: Routes,
}

impl AdjRibOut {
    pub fn len(&self) -> usize {
        self.sent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }

    /// The prefixes the peer has been sent, in order.
    pub fn prefixes(&self) -> impl Iterator<Item = &Prefix> {
        self.sent.keys()
    }

    /// The session went down: the peer has forgotten everything.
    pub fn clear(&mut self) {
        self.sent.clear();
        self.refused.clear();
    }

    /// UPDATEs that bring the peer from what it was told to `desired`, withdrawals
    /// first, and records them as sent. Only differences go out (RFC 4271 §9.2).
    pub fn sync(&mut self, desired: &Routes, export: &Export) -> Changes {
        let mut wanted: Routes = desired
            .iter()
            .filter(|(p, _)| export.exportable(p))
            .map(|(p, a)| (*p, a.clone()))
            .collect();
        let announce: Routes = wanted
            .iter()
            .filter(|(p, a)| self.sent.get(p) != Some(a))
            .map(|(p, a)| (*p, a.clone()))
            .collect();
        let (announced, unsendable) = announcements(&announce, export);
        let mut refused = Routes::new();
        for u in &unsendable {
            if let Some(a) = wanted.remove(&u.prefix) {
                refused.insert(u.prefix, a);
            }
        }
        let withdraw: Vec<Prefix> = self
            .sent
            .keys()
            .filter(|p| !wanted.contains_key(p))
            .copied()
            .collect();
        let refused_before = std::mem::replace(&mut self.refused, refused);
        self.sent = wanted;
        let mut updates = withdrawals(&withdraw, export.ctx);
        updates.extend(announced);
        Changes {
            updates,
            refused: unsendable
                .into_iter()
                .filter(|u| refused_before.get(&u.prefix) != self.refused.get(&u.prefix))
                .collect(),
        }
    }

    /// Everything of one family again, for a ROUTE-REFRESH (RFC 2918 §4).
    pub fn refresh(&self, family: Family, export: &Export) -> Vec<Update> {
        let routes: Routes = self
            .sent
            .iter()
            .filter(|(p, _)| p.family() == family)
            .map(|(p, a)| (*p, a.clone()))
            .collect();
        // What was sent fitted then and fits now: the export has not changed.
        announcements(&routes, export).0
    }
}

/// One spare octet: adding prefixes may push an attribute (MP_REACH_NLRI) past 255
/// octets and into the Extended Length form.
const SPARE: usize = 1;

/// Packs prefixes into as few UPDATEs as fit in 4096 octets each. `base` is the
/// UPDATE without prefixes; `put` adds one. When `base` leaves no room for some
/// prefix, nothing is packed and the error is the length the smallest UPDATE
/// carrying that prefix would have.
fn pack(
    prefixes: &[Prefix],
    base: Update,
    ctx: Context,
    put: fn(&mut Update, Prefix),
) -> Result<Vec<Update>, usize> {
    let fixed = base.encoded_len(ctx).saturating_add(SPARE);
    let longest = prefixes.iter().map(Prefix::encoded_len).max().unwrap_or(0);
    let room = MAX_MESSAGE_LEN
        .checked_sub(fixed)
        .filter(|room| longest <= *room)
        .ok_or(fixed.saturating_add(longest))?;
    let mut out = Vec::new();
    let mut current = base.clone();
    let mut used = 0;
    for &p in prefixes {
        if used + p.encoded_len() > room {
            out.push(std::mem::replace(&mut current, base.clone()));
            used = 0;
        }
        put(&mut current, p);
        used += p.encoded_len();
    }
    if used > 0 {
        out.push(current);
    }
    Ok(out)
}

fn withdrawals(prefixes: &[Prefix], ctx: Context) -> Vec<Update> {
    let (v4, v6): (Vec<Prefix>, Vec<Prefix>) = prefixes
        .iter()
        .partition(|p| p.family() == Family::Ipv4Unicast);
    // A withdrawal carries no attribute but MP_UNREACH_NLRI: its base always fits.
    let mut out = pack(&v4, Update::default(), ctx, |u, p| u.withdrawn.push(p)).unwrap_or_default();
    out.extend(
        pack(&v6, Update::end_of_rib(Family::Ipv6Unicast), ctx, |u, p| {
            if let Some(PathAttribute::MpUnreach(MpUnreach { withdrawn, .. })) =
                u.attributes.first_mut()
            {
                withdrawn.push(p);
            }
        })
        .unwrap_or_default(),
    );
    out
}

/// UPDATEs announcing `routes`, and the routes whose attributes are too large to send.
fn announcements(routes: &Routes, export: &Export) -> (Vec<Update>, Vec<Unsendable>) {
    // Prefixes with equal attributes share UPDATEs.
    let mut groups: BTreeMap<(Family, &RouteAttributes), Vec<Prefix>> = BTreeMap::new();
    for (p, a) in routes {
        groups.entry((p.family(), a)).or_default().push(*p);
    }
    let mut out = Vec::new();
    let mut refused = Vec::new();
    for ((family, attrs), prefixes) in groups {
        let base = Update {
            attributes: export.attributes(attrs, family),
            ..Update::default()
        };
        let packed = match family {
            Family::Ipv4Unicast => pack(&prefixes, base, export.ctx, |u, p| u.nlri.push(p)),
            Family::Ipv6Unicast => pack(&prefixes, base, export.ctx, |u, p| {
                if let Some(PathAttribute::MpReach(mp)) = u.attributes.first_mut() {
                    mp.nlri.push(p);
                }
            }),
        };
        match packed {
            Ok(updates) => out.extend(updates),
            Err(needed) => refused.extend(
                prefixes
                    .into_iter()
                    .map(|prefix| Unsendable { prefix, needed }),
            ),
        }
    }
    (out, refused)
}

/// The longest UPDATE that announces one host route with `attrs` (plus the spare
/// octet the packer keeps), over every session this speaker may have: eBGP or iBGP,
/// 2- or 4-octet AS numbers (a wide local AS then adds AS4_PATH), IPv4 or IPv6 (with
/// a link-local next hop too). A
/// route is sent on every session if this is at most [`MAX_MESSAGE_LEN`]; the
/// configuration checks it so that no route it accepts is refused.
pub fn max_update_len(attrs: &RouteAttributes) -> usize {
    let sessions = [false, true].into_iter().flat_map(|internal| {
        [Context::default(), Context::FOUR_OCTET]
            .into_iter()
            .map(move |ctx| Export {
                local_as: u32::MAX,
                internal,
                ctx,
                families: Family::ALL.to_vec(),
                next_hop_v4: Some(Ipv4Addr::UNSPECIFIED),
                next_hop_v6: Some(Ipv6Addr::UNSPECIFIED),
                next_hop_v6_link_local: Some(Ipv6Addr::UNSPECIFIED),
            })
    });
    let mut longest = 0;
    for export in sessions {
        for host in [
            Prefix::host(Ipv4Addr::UNSPECIFIED.into()),
            Prefix::host(Ipv6Addr::UNSPECIFIED.into()),
        ] {
            let base = Update {
                attributes: export.attributes(attrs, host.family()),
                ..Update::default()
            };
            let len = base
                .encoded_len(export.ctx)
                .saturating_add(SPARE + host.encoded_len());
            longest = longest.max(len);
        }
    }
    longest
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Message;

    fn export() -> Export {
        Export {
            local_as: 65001,
            internal: false,
            ctx: Context::FOUR_OCTET,
            families: Family::ALL.to_vec(),
            next_hop_v4: Some(Ipv4Addr::new(10, 0, 0, 2)),
            next_hop_v6: Some("2001:db8::2".parse().unwrap()),
            next_hop_v6_link_local: None,
        }
    }

    fn routes(list: &[(&str, Option<u32>)]) -> Routes {
        list.iter()
            .map(|(p, med)| {
                (
                    p.parse().unwrap(),
                    RouteAttributes {
                        med: *med,
                        ..Default::default()
                    },
                )
            })
            .collect()
    }

    #[test]
    fn sends_only_differences() {
        let mut rib = AdjRibOut::default();
        let e = export();
        let first = rib
            .sync(
                &routes(&[("192.0.2.10/32", None), ("2001:db8:100::10/128", None)]),
                &e,
            )
            .updates;
        assert_eq!(first.len(), 2);
        assert_eq!(rib.len(), 2);
        assert!(rib
            .sync(
                &routes(&[("192.0.2.10/32", None), ("2001:db8:100::10/128", None)]),
                &e
            )
            .updates
            .is_empty());
        // Changing the MED re-announces just that prefix; dropping one withdraws it.
        let next = rib.sync(&routes(&[("192.0.2.10/32", Some(5))]), &e).updates;
        assert_eq!(next.len(), 2);
        let withdrawn: Vec<String> = next[0].withdrawn_all().map(|p| p.to_string()).collect();
        assert_eq!(withdrawn, vec!["2001:db8:100::10/128"]);
        assert!(next[1]
            .attributes
            .contains(&PathAttribute::MultiExitDisc(5)));
        assert_eq!(next[1].nlri.len(), 1);
    }

    #[test]
    fn families_without_a_next_hop_are_not_exported() {
        let mut rib = AdjRibOut::default();
        let mut e = export();
        e.next_hop_v6 = None;
        let ups = rib
            .sync(
                &routes(&[("192.0.2.10/32", None), ("2001:db8:100::10/128", None)]),
                &e,
            )
            .updates;
        assert_eq!(ups.len(), 1);
        assert_eq!(rib.len(), 1);
    }

    #[test]
    fn large_sets_are_split_to_fit_4096_octets() {
        let mut many = Routes::new();
        for i in 0..3000u32 {
            let v4 = Prefix::host(Ipv4Addr::from(0xc000_0000 + i).into());
            let v6 = Prefix::host(Ipv6Addr::from(0x2001_0db8_u128 << 96 | u128::from(i)).into());
            many.insert(v4, RouteAttributes::default());
            many.insert(v6, RouteAttributes::default());
        }
        let mut rib = AdjRibOut::default();
        let e = export();
        let ups = rib.sync(&many, &e).updates;
        let mut seen = 0;
        for u in &ups {
            let bytes = Message::Update(u.clone()).to_bytes(e.ctx).unwrap();
            assert!(bytes.len() <= MAX_MESSAGE_LEN);
            seen += u.announced().count();
        }
        assert_eq!(seen, 6000);
        let gone = rib.sync(&Routes::new(), &e).updates;
        assert_eq!(
            gone.iter()
                .map(|u| u.withdrawn_all().count())
                .sum::<usize>(),
            6000
        );
        assert!(gone.iter().all(|u| u.encoded_len(e.ctx) <= MAX_MESSAGE_LEN));
    }

    /// Prefixes announced by `ups`, as text, with each UPDATE's family checked.
    fn announced_in(ups: &[Update], family: Family) -> Vec<String> {
        let mut out = Vec::new();
        for u in ups {
            assert_eq!(u.withdrawn_all().count(), 0, "{u:?}");
            for p in u.announced() {
                assert_eq!(p.family(), family, "{u:?}");
                out.push(p.to_string());
            }
        }
        out.sort();
        out
    }

    #[test]
    fn refresh_resends_exactly_the_family_as_sent() {
        let mut rib = AdjRibOut::default();
        let e = export();
        let want = routes(&[
            ("192.0.2.10/32", None),
            ("192.0.2.11/32", Some(7)),
            ("2001:db8:100::10/128", None),
        ]);
        let first = rib.sync(&want, &e).updates;
        let v4 = rib.refresh(Family::Ipv4Unicast, &e);
        assert_eq!(
            announced_in(&v4, Family::Ipv4Unicast),
            ["192.0.2.10/32", "192.0.2.11/32"]
        );
        let v6 = rib.refresh(Family::Ipv6Unicast, &e);
        assert_eq!(
            announced_in(&v6, Family::Ipv6Unicast),
            ["2001:db8:100::10/128"]
        );
        // The same UPDATEs, attributes and all, as the first announcement.
        let mut again = v4.clone();
        again.extend(v6);
        assert_eq!(again.len(), first.len());
        for u in &again {
            assert!(first.contains(u), "{u:?} not in {first:?}");
        }
        // Refreshing records nothing: the next sync still sends only differences.
        assert!(rib.sync(&want, &e).updates.is_empty());
        // What was withdrawn, or refused, is not re-sent.
        let fewer = routes(&[("2001:db8:100::10/128", None)]);
        rib.sync(&fewer, &e);
        assert!(rib.refresh(Family::Ipv4Unicast, &e).is_empty());
        let huge = RouteAttributes {
            communities: (0..1100).collect(),
            ..Default::default()
        };
        let mut with_huge = fewer.clone();
        with_huge.insert("192.0.2.12/32".parse().unwrap(), huge);
        assert_eq!(rib.sync(&with_huge, &e).refused.len(), 1);
        assert!(rib.refresh(Family::Ipv4Unicast, &e).is_empty());
        assert_eq!(rib.refresh(Family::Ipv6Unicast, &e).len(), 1);
        // A family the session does not carry has nothing to refresh.
        let mut v4_only = e.clone();
        v4_only.families = vec![Family::Ipv4Unicast];
        let mut rib = AdjRibOut::default();
        rib.sync(&want, &v4_only);
        assert!(rib.refresh(Family::Ipv6Unicast, &v4_only).is_empty());
    }

    fn sendable(ups: &[Update], ctx: Context) -> Vec<String> {
        let mut out = Vec::new();
        for u in ups {
            let bytes = Message::Update(u.clone()).to_bytes(ctx).unwrap();
            assert!(bytes.len() <= MAX_MESSAGE_LEN);
            out.extend(u.announced().map(|p| p.to_string()));
        }
        out
    }

    #[test]
    fn attributes_too_large_for_one_update_are_refused_not_sent() {
        let huge = RouteAttributes {
            communities: (0..1100).collect(),
            ..Default::default()
        };
        let mut want = routes(&[("192.0.2.10/32", None)]);
        want.insert("192.0.2.11/32".parse().unwrap(), huge.clone());
        want.insert("2001:db8:100::11/128".parse().unwrap(), huge.clone());
        let mut rib = AdjRibOut::default();
        let e = export();
        let c = rib.sync(&want, &e);
        assert_eq!(sendable(&c.updates, e.ctx), ["192.0.2.10/32"]);
        let refused: Vec<String> = c.refused.iter().map(|u| u.prefix.to_string()).collect();
        assert_eq!(refused, ["192.0.2.11/32", "2001:db8:100::11/128"]);
        assert!(c.refused.iter().all(|u| u.needed > MAX_MESSAGE_LEN));
        assert!(c.refused[0].to_string().contains("not announced"));
        assert_eq!(rib.len(), 1);
        // Reported once, not on every sync.
        let again = rib.sync(&want, &e);
        assert_eq!(again, Changes::default());

        // A route announced with small attributes, then given too many: withdrawn, so
        // the peer does not keep attributes we no longer want.
        let p: Prefix = "192.0.2.10/32".parse().unwrap();
        want.insert(p, huge);
        let c = rib.sync(&want, &e);
        assert_eq!(c.refused.len(), 1);
        assert_eq!(c.updates.len(), 1);
        assert_eq!(c.updates[0].withdrawn, [p]);
        assert!(rib.is_empty());
    }

    proptest::proptest! {
        /// Whatever the attributes and the session, sync never panics, every UPDATE
        /// encodes within 4096 octets, and every route is either announced or
        /// refused; a route within [`max_update_len`] is never refused.
        #[test]
        fn any_attributes_are_announced_or_refused(
            communities in 0usize..1200,
            large in 0usize..400,
            med: Option<u32>,
            internal: bool,
            four_octet: bool,
            link_local: bool,
            local_as in proptest::prop_oneof![1u32..65535, 65536u32..=u32::MAX],
        ) {
            let attrs = RouteAttributes {
                med,
                communities: (0..communities as u32).collect(),
                large_communities: (0..large as u32)
                    .map(|i| LargeCommunity { global: i, local1: 1, local2: 2 })
                    .collect(),
            };
            let mut e = export();
            e.internal = internal;
            e.local_as = local_as;
            e.ctx = Context { four_octet_as: four_octet };
            e.next_hop_v6_link_local = link_local.then(|| "fe80::2".parse().unwrap());
            let want: Routes = ["192.0.2.10/32", "2001:db8:100::10/128"]
                .iter()
                .map(|p| (p.parse().unwrap(), attrs.clone()))
                .collect();
            let mut rib = AdjRibOut::default();
            let c = rib.sync(&want, &e);
            let announced = sendable(&c.updates, e.ctx);
            proptest::prop_assert_eq!(announced.len() + c.refused.len(), 2);
            for u in &c.refused {
                proptest::prop_assert!(u.needed > MAX_MESSAGE_LEN);
            }
            if max_update_len(&attrs) <= MAX_MESSAGE_LEN {
                proptest::prop_assert!(c.refused.is_empty());
            }
        }
    }

    /// RFC 2545 §3: a peer on the next hop's link gets its link-local address too,
    /// after the global one: a next hop of 32 octets.
    #[test]
    fn an_on_link_peer_gets_the_link_local_next_hop_too() {
        let global: Ipv6Addr = "2001:db8::2".parse().unwrap();
        let link_local: Ipv6Addr = "fe80::2".parse().unwrap();
        for (ll, next_hops) in [
            (None, vec![std::net::IpAddr::V6(global)]),
            (Some(link_local), vec![global.into(), link_local.into()]),
        ] {
            let mut e = export();
            e.next_hop_v6_link_local = ll;
            let ups = AdjRibOut::default()
                .sync(&routes(&[("2001:db8:100::10/128", None)]), &e)
                .updates;
            let bytes = Message::Update(ups[0].clone()).to_bytes(e.ctx).unwrap();
            let Ok(Message::Update(u)) = Message::parse(&bytes, e.ctx) else {
                panic!("{bytes:?}");
            };
            let Some(PathAttribute::MpReach(mp)) = u.attributes.first() else {
                panic!("{u:?}");
            };
            assert_eq!(mp.next_hops, next_hops);
            assert_eq!(mp.nlri, ["2001:db8:100::10/128".parse::<Prefix>().unwrap()]);
        }
    }

    #[test]
    fn ibgp_and_two_octet_sessions() {
        let mut e = export();
        e.internal = true;
        let a = e.attributes(&RouteAttributes::default(), Family::Ipv4Unicast);
        assert!(a.contains(&PathAttribute::AsPath(vec![])));
        assert!(a.contains(&PathAttribute::LocalPref(100)));
        let mut e = export();
        e.local_as = 4_200_000_001;
        e.ctx = Context::default();
        let a = e.attributes(&RouteAttributes::default(), Family::Ipv4Unicast);
        assert!(a.iter().any(|a| matches!(a, PathAttribute::As4Path(_))));
    }
}
