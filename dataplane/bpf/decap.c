/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * dsrgate's decapsulation program for nodes without the ipip/ip6tnl/fou modules.
 *
 * A tunnel packet addressed to one of the node's addresses (`decap_addrs`) loses its
 * outer header and goes on to the kernel as the inner packet (XDP_PASS):
 *   - outer IPv4, protocol 4 (IPv4-in-IPv4) or 41 (IPv6-in-IPv4);
 *   - outer IPv6, next header 4 (IPv4-in-IPv6) or 41 (IPv6-in-IPv6), no extension headers;
 *   - either of them carrying UDP to the configured GUE port (`decap_cfg`; 0 disables
 *     GUE) with a GUE header: version 0 (protocol 4 or 41, options skipped; control
 *     messages are passed) or version 1 (the IP header follows the UDP header directly).
 * The Ethernet header (with up to two VLAN tags) is moved forward over the outer
 * headers, and its EtherType set to the inner family. Outer fragments are passed as
 * they are (the kernel could not reassemble them into anything it understands either).
 * So is what the kernel's own path (ip_rcv, udp_rcv, fou) would discard, so that it drops
 * and counts it, rather than our decapsulating corruption into a valid inner packet: an
 * outer IPv4 header with a bad checksum, and GUE whose UDP length is under 12 (no GUE
 * header) or beyond the packet, or whose non-zero UDP checksum is wrong (the kernel counts
 * it in UDP InCsumErrors). A zero UDP checksum means none: over IPv4 always (RFC 768),
 * over IPv6 because a tunnel port may opt in to it (RFC 8200 §8.1, RFC 6935, 6936) and
 * the kernel's fou, which this program stands in for, does; so a node decapsulates the
 * same GUE with either. (dsrgate's encapsulator sends 0 over IPv4 and a real checksum
 * over IPv6, which any receiver takes.) Checksums are verified for UDP lengths up to
 * GUE_MAX_ULEN, 9216 bytes (a 9000-byte MTU and 9216-byte jumbo frames fit); a longer GUE datagram with
 * a checksum is passed, for the kernel to check.
 * Passed as well, for the same reason: a tunnel packet whose outer length (IPv4 total
 * length, IPv6 40 + payload length) runs past the frame, or leaves no byte of the inner
 * packet inside it (the kernel trims a packet to that length, then finds no inner header),
 * and GUE whose header, with its options, leaves no byte of the inner packet inside the
 * UDP length: decapsulating those would make a packet of the bytes after the outer one. And
 * an outer IPv6 header whose version is not 6, or whose destination is IPv4-mapped
 * (::ffff:0:0/96, no address on the wire, RFC 4291 section 2.5.5.2; decap_addrs keys the
 * node's IPv4 addresses so, and must not match it).
 * A tunnel packet for us whose inner header is not the IP version it claims is dropped.
 * Congestion marks survive as in the kernel's tunnels (RFC 6040 §4.2, normal mode): an
 * outer CE becomes the inner packet's CE if that is ECN-capable (the inner IPv4 checksum
 * updated incrementally, RFC 1624), and the packet is dropped if it is not.
 * Everything else passes unchanged.
 */
#include "common.h"

struct decap_cfg {
	__be16 gue_port; /* network order; 0 = no GUE */
	__u16 pad;
};

/* Counter indices: keep in sync with dataplane/src/bpf/decap.rs. */
enum {
	DECAP_DECAPSULATED = 0,
	DECAP_PASSED = 1,
	DECAP_DROPPED = 2,
	DECAP_NCOUNTERS = 3,
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct decap_cfg);
} decap_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, union addr16);
	__type(value, __u8);
} decap_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DECAP_NCOUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} decap_stats SEC(".maps");

struct udphdr_ {
	__be16 source;
	__be16 dest;
	__be16 len;
	__sum16 check;
};

enum action { A_PASS, A_DECAP, A_DROP };

#define ECN_MASK 3
#define ECN_CE 3

/* bpf_csum_diff takes at most 512 bytes (a multiple of 4) per call. */
#define CSUM_CHUNK 512
/* The longest GUE datagram whose checksum is verified (9216; must stay under 0x4000). */
#define GUE_MAX_ULEN (18 * CSUM_CHUNK)

/* Whether the IPv4 header at ip (ihl already checked to be 5..15) sums to 0xffff. */
static __always_inline int ipv4_checksum_ok(struct iphdr *ip, void *end)
{
	__u16 *w = (__u16 *)ip;
	__u32 sum = 0;

	for (int i = 0; i < 30; i++) {
		if (i >= ip->ihl * 2)
			break;
		if ((void *)(w + i + 1) > end)
			return 0;
		sum += w[i];
	}
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return sum == 0xffff;
}

/* Folds a one's-complement sum (RFC 1071) to 16 bits. */
static __always_inline __u16 fold16(__u64 sum)
{
#pragma unroll
	for (int i = 0; i < 4; i++)
		sum = (sum & 0xffff) + (sum >> 16);
	return sum;
}

/* Whether the UDP datagram at udp, of ulen bytes (its header's length, 12..GUE_MAX_ULEN),
 * sums to 0xffff with `sum` (the pseudo-header's addresses). Words are summed as they lie
 * in memory, as bpf_csum_diff does: the sum does not depend on byte order (RFC 1071
 * §2(B)). */
static __always_inline int udp_checksum_ok(struct udphdr_ *udp, void *end, __u32 ulen,
					   __u64 sum)
{
	__u32 full = ulen / CSUM_CHUNK;
	__u32 part = 0;

	/* RFC 768 pseudo-header: addresses (in sum), protocol, UDP length. */
	sum += bpf_htons(IPPROTO_UDP) + udp->len;
	for (__u32 i = 0; i < GUE_MAX_ULEN / CSUM_CHUNK; i++) {
		if (i >= full)
			break;
		void *p = (void *)udp + i * CSUM_CHUNK;
		if (p + CSUM_CHUNK > end)
			return 0;
		part = bpf_csum_diff(NULL, 0, p, CSUM_CHUNK, part);
	}
	/* The rest, under 512 bytes, in pieces of 256, 128, ... 4, then 2 and 1. Each piece's
	 * offset is ulen with its lower bits cleared (so the paths that took a piece or not
	 * meet in one verifier state), masked with 0x3fff (ulen < 0x4000) to bound it. */
#pragma unroll
	for (__u32 k = CSUM_CHUNK / 2; k >= 4; k /= 2) {
		__u8 *q = (void *)udp + (ulen & (0x3fff & ~(2 * k - 1)));
		if (ulen & k) {
			if ((void *)(q + k) > end)
				return 0;
			part = bpf_csum_diff(NULL, 0, (void *)q, k, part);
		}
	}
	sum += part;
	__u8 *q = (void *)udp + (ulen & (0x3fff & ~3));
	if (ulen & 2) {
		if ((void *)(q + 2) > end)
			return 0;
		sum += *(__u16 *)q;
	}
	/* An odd last byte is padded with a zero byte after it (RFC 768). */
	q = (void *)udp + (ulen & (0x3fff & ~1));
	if (ulen & 1) {
		if ((void *)(q + 1) > end)
			return 0;
		sum += bpf_htons((__u16)*q << 8);
	}
	return fold16(sum) == 0xffff;
}

/* Whether udp (to the GUE port, its header in the frame) is GUE to decapsulate (see the
 * comment at the top): its length holds a GUE header and fits both the frame and the IP
 * packet of iplen bytes that holds it at `outer`, and its checksum is right or 0. */
static __always_inline int udp_ok(struct udphdr_ *udp, void *end, __u32 outer, __u32 iplen,
				  __u64 pseudo)
{
	__u32 ulen = bpf_ntohs(udp->len);

	if (ulen < sizeof(*udp) + 4 || outer + ulen > iplen || (void *)udp + ulen > end)
		return 0;
	if (!udp->check)
		return 1;
	return ulen <= GUE_MAX_ULEN && udp_checksum_ok(udp, end, ulen, pseudo);
}

/* Decides what to do with the packet at l3; on A_DECAP sets *strip (bytes of outer
 * headers after L2), *inner (4 or 6) and *ecn (the outer header's ECN field). */
static __always_inline enum action classify(void *l3, void *end, __be16 proto, __u32 *strip,
					    int *inner, __u8 *ecn)
{
	union addr16 dst = {};
	__u32 outer, iplen;
	__u64 pseudo = 0; /* the UDP pseudo-header's addresses, summed */
	__u8 next;

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = l3;
		if ((void *)(ip + 1) > end || ip->version != 4 || ip->ihl < 5)
			return A_PASS;
		if (ip->frag_off & bpf_htons(DSR_IP_MF | DSR_IP_OFFSET))
			return A_PASS;
		if (!ipv4_checksum_ok(ip, end))
			return A_PASS;
		*ecn = ip->tos & ECN_MASK;
		addr_from_v4(&dst, ip->daddr);
		outer = ip->ihl * 4;
		iplen = bpf_ntohs(ip->tot_len);
		pseudo = (__u64)ip->saddr + ip->daddr;
		next = ip->protocol;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = l3;
		if ((void *)(ip6 + 1) > end || ip6->version != 6)
			return A_PASS;
		addr_from_v6(&dst, &ip6->daddr);
		/* ::ffff:a.b.c.d is no destination on the wire (RFC 4291 section 2.5.5.2), and
		 * not the node's IPv4 address a.b.c.d, though decap_addrs keys that so. */
		if (dst.w[0] == 0 && dst.w[1] == 0 && dst.w[2] == bpf_htonl(0xffff))
			return A_PASS;
		*ecn = (ip6->flow_lbl[0] >> 4) & ECN_MASK;
		outer = sizeof(*ip6);
		iplen = sizeof(*ip6) + bpf_ntohs(ip6->payload_len);
#pragma unroll
		for (int i = 0; i < 4; i++)
			pseudo += (__u64)ip6->saddr.in6_u.u6_addr32[i] + ip6->daddr.in6_u.u6_addr32[i];
		next = ip6->nexthdr;
	} else {
		return A_PASS;
	}

	if (next != IPPROTO_IPIP && next != IPPROTO_IPV6 && next != IPPROTO_UDP)
		return A_PASS;
	if (!bpf_map_lookup_elem(&decap_addrs, &dst))
		return A_PASS;
	/* The outer packet (IPv4 total length, IPv6 40 + payload length) must lie within the
	 * frame: the kernel drops a truncated one (ip_rcv_core, ip6_rcv_core). Bytes after it
	 * are Ethernet padding, which the kernel trims. iplen is at most 40 + 65535: the sum
	 * cannot wrap, and nothing is read through it. */
	if (l3 + iplen > end)
		return A_PASS;

	if (next == IPPROTO_IPIP || next == IPPROTO_IPV6) {
		/* The inner packet must start inside the outer one: with no byte of it before
		 * iplen (or an IPv4 total length under the header's), the kernel, which trims
		 * the packet to iplen, would find no inner header and drop it; decapsulated, the
		 * bytes after iplen would become a packet. */
		if (outer >= iplen)
			return A_PASS;
		*inner = next == IPPROTO_IPIP ? 4 : 6;
		*strip = outer;
		return A_DECAP;
	}

	/* UDP: GUE on the configured port, anything else is ordinary UDP. */
	__u32 zero = 0;
	struct decap_cfg *cfg = bpf_map_lookup_elem(&decap_cfg, &zero);
	struct udphdr_ *udp = l3 + outer;
	__u8 *gue = (void *)(udp + 1);
	if (!cfg || !cfg->gue_port || (void *)(gue + 4) > end || udp->dest != cfg->gue_port)
		return A_PASS;
	if (!udp_ok(udp, end, outer, iplen, pseudo))
		return A_PASS;
	/* Where the datagram ends (udp_ok: within the IP packet and the frame). The kernel
	 * trims the packet to it (udp_rcv) before fou reads the GUE header. */
	__u32 dgram_end = outer + bpf_ntohs(udp->len);
	switch (gue[0] >> 6) {
	case 1: /* GUE version 1: direct IP encapsulation */
		*inner = gue[0] >> 4;
		/* The inner header starts in the datagram: udp_ok wants 12 bytes or more. */
		*strip = outer + sizeof(*udp);
		return (*inner == 4 || *inner == 6) ? A_DECAP : A_DROP;
	case 0:
		if (gue[0] & 0x20)
			return A_PASS; /* control message */
		*strip = outer + sizeof(*udp) + 4 + (gue[0] & 0x1f) * 4;
		/* A GUE header (with its Hlen words of options) longer than the datagram, or
		 * one that leaves no byte of an inner packet in it: fou would drop it
		 * (pskb_may_pull on the trimmed datagram), and decapsulated, bytes after the
		 * datagram would become a packet. */
		if (*strip >= dgram_end)
			return A_PASS;
		if (gue[1] != IPPROTO_IPIP && gue[1] != IPPROTO_IPV6)
			return A_DROP;
		*inner = gue[1] == IPPROTO_IPIP ? 4 : 6;
		return A_DECAP;
	default:
		return A_DROP;
	}
}

/* RFC 6040 §4.2 at the inner header `in` (its version already checked): with an outer CE,
 * an ECN-capable inner packet is marked CE and a Not-ECT one is dropped (returns -1). */
static __always_inline int propagate_ce(__u8 *in, void *end, int inner, __u8 outer_ecn)
{
	if (outer_ecn != ECN_CE)
		return 0;
	if (inner == 4) {
		struct iphdr *ip = (void *)in;
		if ((void *)(ip + 1) > end)
			return -1;
		__u8 ecn = ip->tos & ECN_MASK;
		if (ecn == 0)
			return -1;
		if (ecn == ECN_CE)
			return 0;
		/* RFC 1624 eqn. 3 over the 16-bit word holding version/IHL and TOS. */
		__u16 old = *(__u16 *)ip;
		ip->tos |= ECN_CE;
		__u32 sum = (__u16)~ip->check;
		sum += (__u16)~old;
		sum += *(__u16 *)ip;
		sum = (sum & 0xffff) + (sum >> 16);
		sum = (sum & 0xffff) + (sum >> 16);
		ip->check = (__u16)~sum;
		return 0;
	}
	if (in + 2 > (__u8 *)end)
		return -1;
	/* The traffic class spans bytes 0 and 1; its ECN bits are bits 5-4 of byte 1. */
	__u8 ecn = (in[1] >> 4) & ECN_MASK;
	if (ecn == 0)
		return -1;
	in[1] |= ECN_CE << 4;
	return 0;
}

/* Writes the saved L2 header (len 14, 18 or 22) at data; the last two bytes are the
 * EtherType. */
static __always_inline int restore_l2(void *data, void *end, __u8 *hdr, int len)
{
	if (len == 14) {
		if (data + 14 > end)
			return -1;
		__builtin_memcpy(data, hdr, 14);
	} else if (len == 18) {
		if (data + 18 > end)
			return -1;
		__builtin_memcpy(data, hdr, 18);
	} else {
		if (data + 22 > end)
			return -1;
		__builtin_memcpy(data, hdr, 22);
	}
	return 0;
}

SEC("xdp")
int xdp_decap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u8 hdr[24] __attribute__((aligned(4)));
	__u32 strip = 0;
	__u8 ecn = 0;
	int inner = 0, l2;
	__be16 proto;
	enum action a;

	l2 = parse_l2(data, end, &proto);
	if (l2 < 0) {
		count(&decap_stats, DECAP_PASSED);
		return XDP_PASS;
	}
	a = classify(data + l2, end, proto, &strip, &inner, &ecn);
	if (a == A_DECAP) {
		/* The inner header must be the version the outer header announced. */
		__u8 *in = data + l2 + (strip & 0x1ff);
		if ((void *)(in + 1) > end || (*in >> 4) != inner || propagate_ce(in, end, inner, ecn))
			a = A_DROP;
	}
	if (a == A_PASS) {
		count(&decap_stats, DECAP_PASSED);
		return XDP_PASS;
	}
	if (a == A_DROP)
		goto drop;

	/* Save the L2 header, fix its EtherType, drop the outer headers, put it back. */
	if (l2 == 14) {
		__builtin_memcpy(hdr, data, 14);
	} else if (l2 == 18) {
		if (data + 18 > end)
			goto drop;
		__builtin_memcpy(hdr, data, 18);
	} else {
		if (data + 22 > end)
			goto drop;
		__builtin_memcpy(hdr, data, 22);
	}
	__be16 et = inner == 4 ? bpf_htons(ETH_P_IP) : bpf_htons(ETH_P_IPV6);
	__builtin_memcpy(&hdr[(l2 - 2) & 0x1f], &et, 2);
	if (bpf_xdp_adjust_head(ctx, (int)(strip & 0x1ff)))
		goto drop;
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	if (restore_l2(data, end, hdr, l2))
		goto drop;
	count(&decap_stats, DECAP_DECAPSULATED);
	return XDP_PASS;

drop:
	count(&decap_stats, DECAP_DROPPED);
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
