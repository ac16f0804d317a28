/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Shared by dsrgate's XDP programs: header parsing and the address key layout. */
#ifndef DSRGATE_COMMON_H
#define DSRGATE_COMMON_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

/* IPv4 fragment bits (linux/ip.h defines them only for the kernel). */
#define DSR_IP_MF 0x2000
#define DSR_IP_OFFSET 0x1fff

/* An IP address as 16 bytes: IPv6 as is, IPv4 as ::ffff:a.b.c.d (v4-mapped), so one
 * key type serves both families. The union gives 4-byte alignment (the verifier wants
 * aligned stack accesses). */
union addr16 {
	__u8 b[16];
	__u32 w[4];
};

static __always_inline void addr_from_v4(union addr16 *a, __be32 v4)
{
	a->w[0] = 0;
	a->w[1] = 0;
	a->w[2] = bpf_htonl(0xffff);
	a->w[3] = v4;
}

static __always_inline void addr_from_v6(union addr16 *a, const struct in6_addr *v6)
{
	a->w[0] = v6->in6_u.u6_addr32[0];
	a->w[1] = v6->in6_u.u6_addr32[1];
	a->w[2] = v6->in6_u.u6_addr32[2];
	a->w[3] = v6->in6_u.u6_addr32[3];
}

struct vlan_hdr {
	__be16 tci;
	__be16 proto;
};

/* Ethernet plus up to max_tags VLAN tags: 802.1Q, and 802.1ad too if qinq. Returns the L2
 * header length and in *proto the EtherType after the tags skipped, or -1 if the frame is too
 * short. A frame with more tags, or another TPID, than allowed is left with a TPID in *proto:
 * not IP, so callers pass it. Always inlined with constant max_tags and qinq, so each program
 * compiles only the checks it asks for. */
static __always_inline int parse_l2_tags(void *data, void *end, __be16 *proto,
					 const int max_tags, const int qinq)
{
	struct ethhdr *eth = data;
	int len = sizeof(*eth);

	if ((void *)(eth + 1) > end)
		return -1;
	*proto = eth->h_proto;
#pragma unroll
	for (int i = 0; i < max_tags; i++) {
		if (*proto != bpf_htons(ETH_P_8021Q) &&
		    !(qinq && *proto == bpf_htons(ETH_P_8021AD)))
			break;
		struct vlan_hdr *vh = data + len;
		if ((void *)(vh + 1) > end)
			return -1;
		*proto = vh->proto;
		len += sizeof(*vh);
	}
	return len;
}

/* Ethernet plus up to two VLAN tags (802.1Q or 802.1ad): the L2 header length (14, 18 or
 * 22), or -1 if the frame is too short. */
static __always_inline int parse_l2(void *data, void *end, __be16 *proto)
{
	return parse_l2_tags(data, end, proto, 2, 1);
}

static __always_inline void count(void *map, __u32 idx)
{
	__u64 *c = bpf_map_lookup_elem(map, &idx);
	if (c)
		*c += 1; /* per-CPU slot: no other writer */
}

#endif
