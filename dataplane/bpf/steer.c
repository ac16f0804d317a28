/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * dsrgate's steering program, attached to the gateway's interfaces.
 *
 * It redirects into the AF_XDP socket of the receiving queue (XSKMAP keyed by
 * rx_queue_index) only the traffic that belongs to a configured VIP:
 *   - IPv4/IPv6 (optionally behind one or two VLAN tags) to a VIP address, protocol
 *     (TCP, UDP, SCTP) and destination port listed in `vips`;
 *   - IPv4/IPv6 fragments to a VIP address and protocol listed in `vip_addrs` (a
 *     non-first fragment carries no port, so every fragment goes by address+protocol);
 *   - ICMP/ICMPv6 errors (destination unreachable incl. fragmentation needed, packet
 *     too big, time exceeded, parameter problem) whose embedded packet was sent by a
 *     VIP: source address, protocol and source port (address+protocol if the
 *     embedded packet is a non-first fragment).
 * While the queue's worker is overloaded (`xsk_shed`), its VIP traffic is dropped here
 * and counted as `shed`: the cheapest point to drop what it could not process anyway.
 * Everything else gets XDP_PASS, so ARP, ND, BGP, SSH and health-check replies reach
 * the kernel. If no socket is bound for the queue the VIP packet is passed too
 * (bpf_redirect_map's XDP_PASS fallback) and counted as `no_socket`.
 *
 * Malformed packets: a packet whose IP header says it is for a VIP address and
 * protocol but whose headers are truncated or inconsistent (bad IHL, total length
 * beyond the frame, no room for the ports) is dropped here and counted `dropped`: no
 * worker could balance it and the kernel does not own the VIP. Anything else that
 * cannot be classified (runt frames, unknown EtherTypes, garbage) is passed: it is
 * not ours, and the kernel validates and counts it.
 */
#include <linux/icmpv6.h>
#include "common.h"

/* linux/icmp.h pulls in libc headers that don't build for the BPF target. */
#define ICMP_DEST_UNREACH 3
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12
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
#define MAX_VIPS 4096
/* IPv6 extension headers walked before giving up (the packet is then passed). */
#define MAX_EXT_HDRS 4

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_VIPS);
	__type(key, struct vip_key);
	__type(value, __u8);
} vips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_VIPS);
	__type(key, struct vip_key);
	__type(value, __u8);
} vip_addrs SEC(".maps");

/* Per RX queue, set by that queue's worker while it is overloaded (its RX ring stays
 * nearly full): VIP traffic for the queue is dropped here, before the kernel copies it
 * into the UMEM only to find the ring full. Memory-mapped by the workers, so setting it
 * costs them a store, not a syscall. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsk_shed SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STEER_NCOUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} steer_stats SEC(".maps");

static __always_inline int is_vip_addr(struct vip_key *k)
{
	__be16 port = k->port;
	int hit;

	k->port = 0;
	hit = bpf_map_lookup_elem(&vip_addrs, k) != NULL;
	k->port = port;
	return hit;
}

static __always_inline int has_ports(__u8 proto)
{
	return proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP;
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

/* Walks IPv6 extension headers from *p, leaving the upper-layer protocol in *nh and
 * *p after the headers. *frag is set if a fragment header was seen, *first_frag
 * cleared if it says the offset is non-zero. Returns -1 if truncated. */
static __always_inline int skip_ext6(void **p, void *end, __u8 *nh, int *frag, int *first_frag)
{
#pragma unroll
	for (int i = 0; i < MAX_EXT_HDRS; i++) {
		if (*nh == IPPROTO_HOPOPTS || *nh == IPPROTO_ROUTING || *nh == IPPROTO_DSTOPTS) {
			struct ipv6_opt_hdr *o = *p;
			if ((void *)(o + 1) > end)
				return -1;
			*nh = o->nexthdr;
			*p += (o->hdrlen + 1) * 8;
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
			*frag = 1;
			if (f->frag_off & bpf_htons(0xfff8))
				*first_frag = 0;
			*p = f + 1;
		} else {
			break;
		}
	}
	return 0;
}

/* The packet embedded in an ICMP error, sent by a VIP: its source must match. */
static __always_inline enum verdict match_embedded_v4(void *p, void *end)
{
	struct iphdr *in = p;
	struct vip_key k = {};

	if ((void *)(in + 1) > end || in->version != 4 || in->ihl < 5)
		return V_PASS;
	addr_from_v4(&k.addr, in->saddr);
	k.proto = in->protocol;
	if (in->frag_off & bpf_htons(DSR_IP_OFFSET))
		return is_vip_addr(&k) ? V_STEER : V_PASS;
	/* Errors quote at least 8 bytes of the original datagram (RFC 792). */
	return match_port(&k, p + in->ihl * 4, end, 0, 0);
}

static __always_inline enum verdict match_embedded_v6(void *p, void *end)
{
	struct ipv6hdr *in = p;
	struct vip_key k = {};
	int frag = 0, first = 1;
	__u8 nh;

	if ((void *)(in + 1) > end)
		return V_PASS;
	addr_from_v6(&k.addr, &in->saddr);
	nh = in->nexthdr;
	p = in + 1;
	if (skip_ext6(&p, end, &nh, &frag, &first) < 0)
		return V_PASS;
	k.proto = nh;
	if (frag && !first)
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
	addr_from_v4(&k.addr, ip->daddr);
	k.proto = ip->protocol;
	hlen = ip->ihl * 4;
	tot = bpf_ntohs(ip->tot_len);

	if (ip->protocol == IPPROTO_ICMP) {
		struct icmphdr *ic = l3 + hlen;
		if (hlen < sizeof(*ip) || (void *)(ic + 1) > end)
			return V_PASS;
		if (ic->type != ICMP_DEST_UNREACH && ic->type != ICMP_TIME_EXCEEDED &&
		    ic->type != ICMP_PARAMETERPROB)
			return V_PASS;
		return match_embedded_v4(ic + 1, end);
	}

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
	int frag = 0, first = 1, vip_addr;
	void *p = ip6 + 1;
	__u8 nh;

	if ((void *)(ip6 + 1) > end)
		return V_PASS;
	nh = ip6->nexthdr;
	if (skip_ext6(&p, end, &nh, &frag, &first) < 0)
		return V_PASS; /* protocol unknown, so not attributable to a VIP */

	if (nh == IPPROTO_ICMPV6) {
		struct icmp6hdr *ic = p;
		if ((void *)(ic + 1) > end)
			return V_PASS;
		if (ic->icmp6_type != ICMPV6_DEST_UNREACH && ic->icmp6_type != ICMPV6_PKT_TOOBIG &&
		    ic->icmp6_type != ICMPV6_TIME_EXCEED && ic->icmp6_type != ICMPV6_PARAMPROB)
			return V_PASS;
		return match_embedded_v6(ic + 1, end);
	}

	addr_from_v6(&k.addr, &ip6->daddr);
	k.proto = nh;
	vip_addr = is_vip_addr(&k);
	if (!vip_addr)
		return V_PASS;
	if ((void *)(ip6 + 1) + bpf_ntohs(ip6->payload_len) > end)
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

	l2 = parse_l2(data, end, &proto);
	if (l2 >= 0) {
		if (proto == bpf_htons(ETH_P_IP))
			v = classify_v4(data + l2, end);
		else if (proto == bpf_htons(ETH_P_IPV6))
			v = classify_v6(data + l2, end);
	}

	if (v == V_STEER) {
		__u32 queue = ctx->rx_queue_index;
		__u32 *shed = bpf_map_lookup_elem(&xsk_shed, &queue);
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
