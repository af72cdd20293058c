// SPDX-License-Identifier: GPL-2.0
/*
 * xdprx redirect program.
 *
 * Sends subscribed (multicast group, UDP port) traffic to the AF_XDP socket
 * bound to the packet's rx queue; everything else goes to the kernel
 * untouched (XDP_PASS). The program never drops and never rewrites a packet:
 * a bug or a malformed frame here can at worst cost xdprx a packet, never
 * take traffic away from the kernel.
 *
 * Parsed: Ethernet, up to two VLAN tags (802.1Q / 802.1ad), IPv4 with any
 * valid IHL, IPv6 with UDP as the first next header, UDP.
 * Passed: ARP, ICMP, unicast, unsubscribed groups, IPv4 fragments (first and
 * non-first: user space cannot reassemble), IPv6 extension headers,
 * and malformed frames (those are also counted as malformed).
 *
 * Maps (names are the user-space contract, see xdprx/bpfprog.py):
 *   xsks           XSKMAP, rx queue -> AF_XDP socket
 *   subscriptions  HASH, struct sub_key -> u32 subscription id
 *   counters       PERCPU_ARRAY of u64, indices CNT_*
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MAX_QUEUES 256
#define MAX_SUBSCRIPTIONS 4096

enum {
	CNT_SEEN = 0,		/* every frame the program ran on */
	CNT_REDIRECTED,		/* handed to bpf_redirect_map for an AF_XDP socket */
	CNT_PASSED,		/* returned XDP_PASS (includes malformed) */
	CNT_MALFORMED,		/* truncated or inconsistent headers */
	CNT_FRAGMENT,		/* IPv4 fragments of a subscribed flow, or any */
	CNT_NO_SOCKET,		/* subscribed, but no socket on this queue */
	CNT_MAX,
};

/* Keyed by family-independent address: IPv4 groups are stored as
 * IPv4-mapped IPv6 (::ffff:a.b.c.d), so one lookup serves both families. */
struct sub_key {
	__u8 addr[16];
	__u16 port;		/* network byte order */
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SUBSCRIPTIONS);
	__type(key, struct sub_key);
	__type(value, __u32);
} subscriptions SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct vlan_hdr {
	__be16 tci;
	__be16 proto;
};

static __always_inline void count(__u32 idx)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &idx);

	if (c)
		*c += 1;	/* per-CPU slot: no atomic needed */
}

static __always_inline int pass(void)
{
	count(CNT_PASSED);
	return XDP_PASS;
}

static __always_inline int malformed(void)
{
	count(CNT_MALFORMED);
	return pass();
}

/* Checks a UDP header at @udp against the end of the IP payload. */
static __always_inline int udp_ok(struct udphdr *udp, void *ip_end, void *data_end)
{
	__u16 ulen;

	if ((void *)(udp + 1) > data_end || (void *)(udp + 1) > ip_end)
		return 0;
	ulen = bpf_ntohs(udp->len);
	/* the UDP length must cover its header and fit the IP payload */
	if (ulen < sizeof(*udp) || (void *)udp + ulen > ip_end)
		return 0;
	return 1;
}

SEC("xdp")
int xdprx_redirect(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct sub_key key = {};
	struct udphdr *udp;
	void *ip_end, *l3;
	__u16 proto;
	__u32 *sub;
	int i;

	count(CNT_SEEN);
	if ((void *)(eth + 1) > data_end)
		return malformed();
	proto = eth->h_proto;
	l3 = eth + 1;

#pragma unroll
	for (i = 0; i < 2; i++) {
		struct vlan_hdr *vh = l3;

		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		if ((void *)(vh + 1) > data_end)
			return malformed();
		proto = vh->proto;
		l3 = vh + 1;
	}

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *iph = l3;
		__u32 ihl_bytes, tot;

		if ((void *)(iph + 1) > data_end)
			return malformed();
		if (iph->version != 4 || iph->ihl < 5)
			return malformed();
		if (iph->protocol != IPPROTO_UDP)
			return pass();
		ihl_bytes = iph->ihl * 4;
		tot = bpf_ntohs(iph->tot_len);
		if (tot < ihl_bytes || l3 + tot > data_end)
			return malformed();
		/* any fragment (MF set or offset != 0): leave it to the kernel */
		if (iph->frag_off & bpf_htons(0x3fff)) {
			count(CNT_FRAGMENT);
			return pass();
		}
		ip_end = l3 + tot;
		udp = l3 + ihl_bytes;
		if (!udp_ok(udp, ip_end, data_end))
			return malformed();
		key.port = udp->dest;	/* read here, where the bounds are proven */
		key.addr[10] = 0xff;
		key.addr[11] = 0xff;
		__builtin_memcpy(&key.addr[12], &iph->daddr, 4);
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = l3;

		if ((void *)(ip6 + 1) > data_end)
			return malformed();
		if (ip6->version != 6)
			return malformed();
		if (ip6->nexthdr != IPPROTO_UDP)
			return pass();	/* extension headers: the kernel's job */
		ip_end = (void *)(ip6 + 1) + bpf_ntohs(ip6->payload_len);
		if (ip_end > data_end)
			return malformed();
		udp = (void *)(ip6 + 1);
		if (!udp_ok(udp, ip_end, data_end))
			return malformed();
		key.port = udp->dest;
		__builtin_memcpy(key.addr, &ip6->daddr, 16);
	} else {
		return pass();
	}

	sub = bpf_map_lookup_elem(&subscriptions, &key);
	if (!sub)
		return pass();
	/* XDP_PASS as the fallback: no socket on this queue means the kernel
	 * keeps the packet instead of losing it. */
	if (bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS) == XDP_REDIRECT) {
		count(CNT_REDIRECTED);
		return XDP_REDIRECT;
	}
	count(CNT_NO_SOCKET);
	return pass();
}

char _license[] SEC("license") = "GPL";
