// SPDX-License-Identifier: GPL-2.0
/* Traffic generator for `dsrgate-bench forward`, run with BPF_PROG_RUN in the kernel's XDP
 * live-frames mode (BPF_F_TEST_XDP_LIVE_FRAMES): every run that returns XDP_TX transmits the
 * frame out of the ingress interface. Live frames are recycled without being re-initialised,
 * so the whole 64-byte UDP frame (60 bytes plus FCS) is rewritten on every run.
 *
 * Pacing: BPF cannot sleep, so a paced run that is early returns XDP_DROP (cheap: the frame
 * goes straight back to the page pool) and the loop tries again. Each BPF_PROG_RUN call costs
 * about 25 ms of setup, so the caller makes long calls rather than sleeping between short ones.
 * The state is a plain array written by one CPU: the caller pins the generating thread. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define FRAME_LEN 60 /* 64-byte Ethernet frame without FCS */

struct gen_config {
	__u8 dst_mac[6];
	__u8 src_mac[6];
	__be32 saddr;
	__be32 daddr;
	__u16 sport_base; /* host order; source port = base + (seq % flows) */
	__be16 dport;
	__u16 flows;
	__u16 ip_csum; /* precomputed by the caller for this constant IPv4 header */
	__u32 pad;
	__u64 gap_ns; /* 0: as fast as possible */
};

struct gen_state {
	__u64 next_ns;
	__u64 sent;
	__u64 skipped;
	__u64 seq;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gen_config);
} gen_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gen_state);
} gen_state SEC(".maps");

SEC("xdp")
int trafficgen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct gen_config *cfg = bpf_map_lookup_elem(&gen_config, &zero);
	struct gen_state *st = bpf_map_lookup_elem(&gen_state, &zero);

	if (!cfg || !st || data + FRAME_LEN > data_end)
		return XDP_ABORTED;

	if (cfg->gap_ns) {
		__u64 now = bpf_ktime_get_ns();

		if (now < st->next_ns) {
			st->skipped++;
			return XDP_DROP;
		}
		/* After a stall (preemption), restart the schedule instead of bursting. */
		if (st->next_ns + 64 * cfg->gap_ns < now)
			st->next_ns = now;
		st->next_ns += cfg->gap_ns;
	}

	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);
	__u8 *payload = (void *)(udp + 1);

	__builtin_memcpy(eth->h_dest, cfg->dst_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, cfg->src_mac, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IP);

	ip->version = 4;
	ip->ihl = 5;
	ip->tos = 0;
	ip->tot_len = bpf_htons(FRAME_LEN - sizeof(*eth));
	ip->id = 0;
	ip->frag_off = 0;
	ip->ttl = 64;
	ip->protocol = IPPROTO_UDP;
	ip->check = cfg->ip_csum;
	ip->saddr = cfg->saddr;
	ip->daddr = cfg->daddr;

	__u16 flows = cfg->flows ? cfg->flows : 1;
	udp->source = bpf_htons(cfg->sport_base + (__u16)(st->seq % flows));
	udp->dest = cfg->dport;
	udp->len = bpf_htons(FRAME_LEN - sizeof(*eth) - sizeof(*ip));
	udp->check = 0; /* optional for UDP over IPv4 */
	__builtin_memset(payload, 0, FRAME_LEN - sizeof(*eth) - sizeof(*ip) - sizeof(*udp));

	st->seq++;
	st->sent++;
	return XDP_TX;
}

char _license[] SEC("license") = "GPL";
