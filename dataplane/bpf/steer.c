/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * dsrgate's steering program, attached to the gateway's interfaces.
 *
 * It redirects into the AF_XDP socket of the receiving queue (XSKMAP keyed by
 * rx_queue_index) exactly the VIP traffic the workers' pipeline (dataplane/src/pipeline/)
 * handles, and nothing it would pass: a worker cannot hand a frame back to the kernel, so a
 * steered frame the pipeline calls `Pass` is lost, and VIP traffic passed here reaches a
 * kernel that does not own the VIP. Keep the two in step (dataplane/src/bpf/steer/tests.rs
 * runs both on the same frames). Frames untagged or with one 802.1Q tag (802.1ad and
 * stacked tags pass, as in the pipeline) that carry:
 *   - IPv4/IPv6 to a VIP address, protocol (TCP, UDP) and destination port listed in
 *     `vips`;
 *   - IPv4/IPv6 fragments to a VIP address and protocol listed in `vip_addrs` (a
 *     non-first fragment carries no port, so every fragment goes by address+protocol);
 *     an IPv6 atomic fragment (offset 0, no more fragments; RFC 6946) is a whole datagram.
 *     An IPv6 fragment whose Fragmentable Part starts with an extension header (say
 *     Destination Options or AH) goes by address+UDP, the first fragment too if it is TCP
 *     or UDP: a later fragment cannot tell its upper-layer protocol, and all fragments of a
 *     datagram must agree (see skip_ext6; the pipeline's ipv6ext::Upper::keyed_proto);
 *   - ICMP/ICMPv6 errors (ICMPv4 destination unreachable incl. fragmentation needed, time
 *     exceeded, parameter problem; ICMPv6 types below 128, RFC 4443 section 2.1), not
 *     fragmented, addressed to the VIP that sent the embedded packet: its source address,
 *     protocol and source port (address+protocol if the embedded packet is a non-first
 *     fragment).
 * While the queue's worker is overloaded (`xsk_shed`), its VIP traffic is dropped here
 * and counted as `shed`: the cheapest point to drop what it could not process anyway.
 * Everything else gets XDP_PASS, so ARP, ND, BGP, SSH and health-check replies reach
 * the kernel; so do frames to a broadcast or multicast MAC address and IPv6 packets to an
 * IPv4-mapped address (::ffff:0:0/96), whatever they carry, as the pipeline passes them,
 * and frames to another station's MAC address (only frames to the interface's own, in
 * `steer_mac`, are steered), which the kernel drops.
 * If no socket is bound for the queue the VIP packet is passed too (bpf_redirect_map's
 * XDP_PASS fallback) and counted as `no_socket`. `redirected` counts what
 * bpf_redirect_map accepted, not what reached the socket: the kernel may still drop the
 * frame (RX ring full, frame too long for a UMEM frame, socket bound to another device);
 * see SteerCounters::redirected in dataplane/src/bpf/steer.rs.
 *
 * Malformed packets: a packet whose IP header says it is for a VIP address and
 * protocol but whose headers are truncated or inconsistent (bad IHL, total or payload
 * length beyond the frame, IPv6 payload length 0, no room for the ports) is dropped here
 * and counted `dropped`: no worker could balance it and the kernel does not own the VIP.
 * Anything else that cannot be classified (runt frames, unknown EtherTypes, garbage) is
 * passed: it is not ours, and the kernel validates and counts it.
 */
#include <linux/icmpv6.h>
#include "common.h"

/* linux/icmp.h pulls in libc headers that don't build for the BPF target. */
#define ICMP_DEST_UNREACH 3
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12
/* ICMPv6 types below this are errors (RFC 4443 section 2.1), as smoltcp's is_error. */
#define ICMPV6_INFO_MIN 128
struct icmphdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be32 rest;
};

/* Key of `vips` (port in network order) and of `vip_addrs` (port 0). */
struct vip_key {
	union addr16 addr;
	__be16 port;
	__u8 proto;
	__u8 pad;
};

/* Counter indices: keep in sync with dataplane/src/bpf/steer.rs. */
enum {
	STEER_REDIRECTED = 0,
	STEER_NO_SOCKET = 1,
	STEER_PASSED = 2,
	STEER_DROPPED = 3,
	STEER_SHED = 4,
	STEER_NCOUNTERS = 5,
};

enum verdict { V_PASS, V_STEER, V_DROP };

#define MAX_QUEUES 256
/* Service ports a gateway steers: MAX_VIPS in dataplane/src/bpf/steer.rs. The maps hold
 * twice that, because a replace adds the new entries before it removes the stale ones. */
#define MAX_VIPS 4096
/* IPv6 extension headers walked; a longer chain is passed. Keep equal to MAX_EXT_HEADERS in
 * dataplane/src/wire/ipv6ext.rs, which drops such a chain. */
#define MAX_EXT_HDRS 6

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 2 * MAX_VIPS);
	__type(key, struct vip_key);
	__type(value, __u8);
} vips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 2 * MAX_VIPS);
	__type(key, struct vip_key);
	__type(value, __u8);
} vip_addrs SEC(".maps");

/* Per RX queue, set by that queue's worker while it is overloaded (its RX ring stays
 * nearly full): VIP traffic for the queue is dropped here, before the kernel copies it
 * into the UMEM only to find the ring full. Memory-mapped by the workers, so setting it
 * costs them a store, not a syscall. The value is 8 bytes because the mapping shows the
 * elements as the kernel stores them, round_up(value_size, 8) bytes apart
 * (array_map_alloc): with 8-byte values, element i is at byte 8 * i and nothing is padding
 * (ShedFlags in dataplane/src/bpf/steer.rs writes them so). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u64);
} xsk_shed SEC(".maps");

/* The MAC address of the interface the program is attached to, set by the loader before it
 * attaches and kept current (dataplane/src/bpf/steer.rs). Only frames to it are steered. */
struct steer_mac {
	__u8 addr[ETH_ALEN];
	__u8 pad[2];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct steer_mac);
} steer_mac SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STEER_NCOUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} steer_stats SEC(".maps");

/* Whether the frame is addressed to this interface's MAC address (steer_mac). A frame to
 * another station's unicast address (a veth, a promiscuous NIC or a bridge port delivers
 * those too) is the kernel's, which drops it (PACKET_OTHERHOST): a router forwards only what
 * is sent to it. So is a frame to a group address (broadcast or multicast), which is never
 * an interface's address: a router forwards no link-layer broadcast or multicast (RFC 1812
 * section 5.3.4) nor answers one with an ICMP error (RFC 1122 section 3.2.2). The caller
 * has checked that the Ethernet header is there. */
static __always_inline int to_this_host(const struct ethhdr *eth)
{
	__u32 zero = 0;
	const struct steer_mac *m = bpf_map_lookup_elem(&steer_mac, &zero);

	return m && *(const __u32 *)&eth->h_dest[0] == *(const __u32 *)&m->addr[0] &&
	       *(const __u16 *)&eth->h_dest[4] == *(const __u16 *)&m->addr[4];
}

/* Whether a is in ::ffff:0:0/96, the IPv4-mapped block (RFC 4291 section 2.5.5.2). */
static __always_inline int is_v4_mapped6(const struct in6_addr *a)
{
	return a->in6_u.u6_addr32[0] == 0 && a->in6_u.u6_addr32[1] == 0 &&
	       a->in6_u.u6_addr32[2] == bpf_htonl(0xffff);
}

static __always_inline int is_vip_addr(struct vip_key *k)
{
	__be16 port = k->port;
	int hit;

	k->port = 0;
	hit = bpf_map_lookup_elem(&vip_addrs, k) != NULL;
	k->port = port;
	return hit;
}

/* The protocols the pipeline balances; any other is never steered. */
static __always_inline int has_ports(__u8 proto)
{
	return proto == IPPROTO_TCP || proto == IPPROTO_UDP;
}

/* Looks up k (address, protocol already set) with the port at l4 + port_off
 * (2 = destination port, 0 = source port). */
static __always_inline enum verdict match_port(struct vip_key *k, void *l4, void *end,
					       int port_off, int vip_addr)
{
	if (!has_ports(k->proto))
		return V_PASS;
	if (l4 + 4 > end)
		return vip_addr ? V_DROP : V_PASS;
	k->port = *(__be16 *)(l4 + port_off);
	return bpf_map_lookup_elem(&vips, k) ? V_STEER : V_PASS;
}

/* The extension headers with a length field, which the pipeline (ipv6ext::walk) skips. */
static __always_inline int is_opt6(__u8 nh)
{
	return nh == IPPROTO_HOPOPTS || nh == IPPROTO_ROUTING || nh == IPPROTO_DSTOPTS ||
	       nh == IPPROTO_AH;
}

/* The headers skip_ext6 (and ipv6ext::walk, ipv6ext::is_walked) steps over. */
static __always_inline int is_walked6(__u8 nh)
{
	return is_opt6(nh) || nh == IPPROTO_FRAGMENT;
}

/* Walks IPv6 extension headers from *p as the pipeline does (ipv6ext::walk: hop-by-hop,
 * routing, destination options, AH, fragment), leaving the upper-layer protocol in *nh and
 * *p after the headers. *frag is set if the (last) fragment header makes the packet a
 * fragment (offset or M set), *later if its offset is non-zero, *ext_frag if the packet is
 * a fragment whose Fragmentable Part starts with an extension header (the Fragment header's
 * Next Header is one this walks). A later fragment's Fragment header ends the walk: what
 * follows it is fragment data, not headers (RFC 8200 section 4.5), and *nh is its Next
 * Header, or UDP if that is an extension header, since the fragment cannot tell its
 * upper-layer protocol (ipv6ext::Upper::keyed_proto; the caller keys a first fragment of
 * that shape as UDP as well). Returns -1 if a header is truncated or the chain is longer
 * than MAX_EXT_HDRS. */
static __always_inline int skip_ext6(void **p, void *end, __u8 *nh, int *frag, int *later,
				     int *ext_frag)
{
#pragma unroll
	for (int i = 0; i < MAX_EXT_HDRS; i++) {
		if (is_opt6(*nh)) {
			struct ipv6_opt_hdr *o = *p;
			if ((void *)(o + 1) > end)
				return -1;
			/* AH counts 4-byte units minus 2 (RFC 4302), the others 8-byte
			 * units minus 1 (RFC 8200). */
			*p += *nh == IPPROTO_AH ? (o->hdrlen + 2) * 4 : (o->hdrlen + 1) * 8;
			*nh = o->nexthdr;
		} else if (*nh == IPPROTO_FRAGMENT) {
			struct frag_hdr {
				__u8 nexthdr;
				__u8 reserved;
				__be16 frag_off;
				__be32 identification;
			} *f = *p;
			if ((void *)(f + 1) > end)
				return -1;
			*nh = f->nexthdr;
			*p = f + 1;
			/* Offset (13 bits) or M makes a fragment; with both clear it is an
			 * atomic fragment (RFC 6946), a whole datagram. As in the pipeline,
			 * the last fragment header decides. */
			*frag = (f->frag_off & bpf_htons(0xfff9)) != 0;
			*ext_frag = *frag && is_walked6(*nh);
			if (f->frag_off & bpf_htons(0xfff8)) {
				*later = 1;
				if (*ext_frag)
					*nh = IPPROTO_UDP;
				return 0;
			}
		} else {
			return 0;
		}
	}
	/* Still an extension header: the pipeline drops such a chain (too_many_ext_headers). */
	return is_walked6(*nh) ? -1 : 0;
}

/* The packet embedded in an ICMP error: sent by the VIP the error is addressed to (the
 * pipeline drops an error quoting another source), so its source must be `dst`. */
static __always_inline enum verdict match_embedded_v4(void *p, void *end, __be32 dst)
{
	struct iphdr *in = p;
	struct vip_key k = {};

	if ((void *)(in + 1) > end || in->version != 4 || in->ihl < 5 || in->saddr != dst ||
	    !has_ports(in->protocol))
		return V_PASS;
	addr_from_v4(&k.addr, in->saddr);
	k.proto = in->protocol;
	if (in->frag_off & bpf_htons(DSR_IP_OFFSET))
		return is_vip_addr(&k) ? V_STEER : V_PASS;
	/* Errors quote at least 8 bytes of the original datagram (RFC 792). */
	return match_port(&k, p + in->ihl * 4, end, 0, 0);
}

static __always_inline enum verdict match_embedded_v6(void *p, void *end,
						      const struct in6_addr *dst)
{
	struct ipv6hdr *in = p;
	struct vip_key k = {};
	int frag = 0, later = 0, ext_frag = 0;
	__u8 nh;

	if ((void *)(in + 1) > end || in->version != 6)
		return V_PASS;
	addr_from_v6(&k.addr, &in->saddr);
	if (k.addr.w[0] != dst->in6_u.u6_addr32[0] || k.addr.w[1] != dst->in6_u.u6_addr32[1] ||
	    k.addr.w[2] != dst->in6_u.u6_addr32[2] || k.addr.w[3] != dst->in6_u.u6_addr32[3])
		return V_PASS;
	nh = in->nexthdr;
	p = in + 1;
	/* A quoted first fragment goes by its own protocol and ports, so only a later one
	 * (keyed by skip_ext6) is keyed as its datagram's fragments are. */
	if (skip_ext6(&p, end, &nh, &frag, &later, &ext_frag) < 0 || !has_ports(nh))
		return V_PASS;
	k.proto = nh;
	if (later)
		return is_vip_addr(&k) ? V_STEER : V_PASS;
	return match_port(&k, p, end, 0, 0);
}

static __always_inline enum verdict classify_v4(void *l3, void *end)
{
	struct iphdr *ip = l3;
	struct vip_key k = {};
	__u32 hlen, tot;
	int vip_addr;

	if ((void *)(ip + 1) > end || ip->version != 4)
		return V_PASS;
	hlen = ip->ihl * 4;
	tot = bpf_ntohs(ip->tot_len);

	if (ip->protocol == IPPROTO_ICMP) {
		struct icmphdr *ic = l3 + hlen;
		/* The pipeline reads errors only from unfragmented ICMP. */
		if (hlen < sizeof(*ip) || (void *)(ic + 1) > end ||
		    ip->frag_off & bpf_htons(DSR_IP_MF | DSR_IP_OFFSET))
			return V_PASS;
		if (ic->type != ICMP_DEST_UNREACH && ic->type != ICMP_TIME_EXCEEDED &&
		    ic->type != ICMP_PARAMETERPROB)
			return V_PASS;
		return match_embedded_v4(ic + 1, end, ip->daddr);
	}

	if (!has_ports(ip->protocol))
		return V_PASS;
	addr_from_v4(&k.addr, ip->daddr);
	k.proto = ip->protocol;
	vip_addr = is_vip_addr(&k);
	if (!vip_addr)
		return V_PASS; /* no VIP has this address and protocol */
	if (hlen < sizeof(*ip) || tot < hlen || l3 + tot > end)
		return V_DROP;
	if (ip->frag_off & bpf_htons(DSR_IP_MF | DSR_IP_OFFSET))
		return V_STEER;
	return match_port(&k, l3 + hlen, end, 2, vip_addr);
}

static __always_inline enum verdict classify_v6(void *l3, void *end)
{
	struct ipv6hdr *ip6 = l3;
	struct vip_key k = {};
	int frag = 0, later = 0, ext_frag = 0, vip_addr;
	void *p = ip6 + 1;
	__u8 nh;

	if ((void *)(ip6 + 1) > end || ip6->version != 6)
		return V_PASS;
	/* To ::ffff:a.b.c.d, the IPv4-mapped block (RFC 4291 section 2.5.5.2): no destination on
	 * the wire, and not the IPv4 VIP a.b.c.d whose key it would match (IPv4 keys are stored
	 * v4-mapped). The kernel's, which drops it; the pipeline passes it too. The first word
	 * is nonzero for almost every real address: one branch. */
	if (is_v4_mapped6(&ip6->daddr))
		return V_PASS;
	/* From a v4-mapped source, VIP traffic is steered as any other and the pipeline drops
	 * it (bad_source), counted by reason: the two agree, and a check here would cost every
	 * IPv6 VIP packet a branch for frames no honest sender makes (the kernel, were it
	 * passed, would drop it too, uncounted by us). */
	nh = ip6->nexthdr;
	if (skip_ext6(&p, end, &nh, &frag, &later, &ext_frag) < 0)
		return V_PASS; /* protocol unknown, so not attributable to a VIP */

	if (nh == IPPROTO_ICMPV6) {
		struct icmp6hdr *ic = p;
		/* The pipeline reads errors only from unfragmented ICMPv6. */
		if ((void *)(ic + 1) > end || frag || ic->icmp6_type >= ICMPV6_INFO_MIN)
			return V_PASS;
		return match_embedded_v6(ic + 1, end, &ip6->daddr);
	}

	if (!has_ports(nh))
		return V_PASS;
	/* Keyed as its later fragments are (skip_ext6), whatever its upper-layer protocol. */
	if (ext_frag)
		nh = IPPROTO_UDP;
	addr_from_v6(&k.addr, &ip6->daddr);
	k.proto = nh;
	vip_addr = is_vip_addr(&k);
	if (!vip_addr)
		return V_PASS;
	/* Payload length 0 would be a jumbogram (RFC 2675), which no Ethernet frame carries. */
	if (!ip6->payload_len || (void *)(ip6 + 1) + bpf_ntohs(ip6->payload_len) > end)
		return V_DROP;
	if (frag)
		return V_STEER;
	return match_port(&k, p, end, 2, vip_addr);
}

SEC("xdp")
int xdp_steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	enum verdict v = V_PASS;
	__be16 proto;
	int l2;

	/* As the pipeline: untagged, or one 802.1Q tag; 802.1ad and stacked tags pass. Only a
	 * frame to this interface's MAC address (to_this_host) may be steered: the pipeline
	 * passes frames to a group address too, and a worker never sees a frame to another
	 * station's. parse_l2_tags has checked the Ethernet header is there. */
	l2 = parse_l2_tags(data, end, &proto, 1, 0);
	if (l2 >= 0 && to_this_host(data)) {
		if (proto == bpf_htons(ETH_P_IP))
			v = classify_v4(data + l2, end);
		else if (proto == bpf_htons(ETH_P_IPV6))
			v = classify_v6(data + l2, end);
	}

	if (v == V_STEER) {
		__u32 queue = ctx->rx_queue_index;
		__u64 *shed = bpf_map_lookup_elem(&xsk_shed, &queue);
		if (shed && *shed) {
			count(&steer_stats, STEER_SHED);
			return XDP_DROP;
		}
		long act = bpf_redirect_map(&xsks, queue, XDP_PASS);
		count(&steer_stats, act == XDP_REDIRECT ? STEER_REDIRECTED : STEER_NO_SOCKET);
		return act;
	}
	if (v == V_DROP) {
		count(&steer_stats, STEER_DROPPED);
		return XDP_DROP;
	}
	count(&steer_stats, STEER_PASSED);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
