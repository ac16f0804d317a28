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
                out.push(PathAttribute::MpReach(MpReach {
                    family,
                    next_hops: vec![nh.into()],
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

/// What one peer has been told.
#[derive(Debug, Default)]
pub struct AdjRibOut {
    sent: Routes,
}

impl AdjRibOut {
    pub fn len(&self) -> usize {
        self.sent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }

    /// The session went down: the peer has forgotten everything.
    pub fn clear(&mut self) {
        self.sent.clear();
    }

    /// UPDATEs that bring the peer from what it was told to `desired`, withdrawals
    /// first, and records them as sent. Only differences go out (RFC 4271 §9.2).
    pub fn sync(&mut self, desired: &Routes, export: &Export) -> Vec<Update> {
        let wanted: Routes = desired
            .iter()
            .filter(|(p, _)| export.exportable(p))
            .map(|(p, a)| (*p, a.clone()))
            .collect();
        let withdraw: Vec<Prefix> = self
            .sent
            .keys()
            .filter(|p| !wanted.contains_key(p))
            .copied()
            .collect();
        let announce: Routes = wanted
            .iter()
            .filter(|(p, a)| self.sent.get(p) != Some(a))
            .map(|(p, a)| (*p, a.clone()))
            .collect();
        self.sent = wanted;
        let mut out = withdrawals(&withdraw, export.ctx);
        out.extend(announcements(&announce, export));
        out
    }

    /// Everything of one family again, for a ROUTE-REFRESH (RFC 2918 §4).
    pub fn refresh(&self, family: Family, export: &Export) -> Vec<Update> {
        let routes: Routes = self
            .sent
            .iter()
            .filter(|(p, _)| p.family() == family)
            .map(|(p, a)| (*p, a.clone()))
            .collect();
        announcements(&routes, export)
    }
}

/// Packs prefixes into as few UPDATEs as fit in 4096 octets each. `base` is the
/// UPDATE without prefixes; `put` adds one.
fn pack(
    prefixes: &[Prefix],
    base: Update,
    ctx: Context,
    put: fn(&mut Update, Prefix),
) -> Vec<Update> {
    // One spare octet: an attribute may need the Extended Length form.
    let room = MAX_MESSAGE_LEN - base.encoded_len(ctx) - 1;
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
    out
}

fn withdrawals(prefixes: &[Prefix], ctx: Context) -> Vec<Update> {
    let (v4, v6): (Vec<Prefix>, Vec<Prefix>) = prefixes
        .iter()
        .partition(|p| p.family() == Family::Ipv4Unicast);
    let mut out = pack(&v4, Update::default(), ctx, |u, p| u.withdrawn.push(p));
    out.extend(pack(
        &v6,
        Update::end_of_rib(Family::Ipv6Unicast),
        ctx,
        |u, p| {
            if let Some(PathAttribute::MpUnreach(MpUnreach { withdrawn, .. })) =
                u.attributes.first_mut()
            {
                withdrawn.push(p);
            }
        },
    ));
    out
}

fn announcements(routes: &Routes, export: &Export) -> Vec<Update> {
    // Prefixes with equal attributes share UPDATEs.
    let mut groups: BTreeMap<(Family, &RouteAttributes), Vec<Prefix>> = BTreeMap::new();
    for (p, a) in routes {
        groups.entry((p.family(), a)).or_default().push(*p);
    }
    let mut out = Vec::new();
    for ((family, attrs), prefixes) in groups {
        let base = Update {
            attributes: export.attributes(attrs, family),
            ..Update::default()
        };
        out.extend(match family {
            Family::Ipv4Unicast => pack(&prefixes, base, export.ctx, |u, p| u.nlri.push(p)),
            Family::Ipv6Unicast => pack(&prefixes, base, export.ctx, |u, p| {
                if let Some(PathAttribute::MpReach(mp)) = u.attributes.first_mut() {
                    mp.nlri.push(p);
                }
            }),
        });
    }
    out
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
        let first = rib.sync(
            &routes(&[("192.0.2.10/32", None), ("2001:db8:100::10/128", None)]),
            &e,
        );
        assert_eq!(first.len(), 2);
        assert_eq!(rib.len(), 2);
        assert!(rib
            .sync(
                &routes(&[("192.0.2.10/32", None), ("2001:db8:100::10/128", None)]),
                &e
            )
            .is_empty());
        // Changing the MED re-announces just that prefix; dropping one withdraws it.
        let next = rib.sync(&routes(&[("192.0.2.10/32", Some(5))]), &e);
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
        let ups = rib.sync(
            &routes(&[("192.0.2.10/32", None), ("2001:db8:100::10/128", None)]),
            &e,
        );
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
        let ups = rib.sync(&many, &e);
        let mut seen = 0;
        for u in &ups {
            let bytes = Message::Update(u.clone()).to_bytes(e.ctx).unwrap();
            assert!(bytes.len() <= MAX_MESSAGE_LEN);
            seen += u.announced().count();
        }
        assert_eq!(seen, 6000);
        let gone = rib.sync(&Routes::new(), &e);
        assert_eq!(
            gone.iter()
                .map(|u| u.withdrawn_all().count())
                .sum::<usize>(),
            6000
        );
        assert!(gone.iter().all(|u| u.encoded_len(e.ctx) <= MAX_MESSAGE_LEN));
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
