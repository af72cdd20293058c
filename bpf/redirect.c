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
 * valid IHL, IPv6 with up to MAX_EXT_HDRS extension headers before UDP
 * (hop-by-hop, only first; routing with segments left 0; destination options;
 * an atomic fragment header, offset 0 and no more fragments), UDP.
 * Passed: ARP, ICMP, unicast, unsubscribed groups, IPv6 packets to an
 * IPv4-mapped address (::ffff:a.b.c.d, how IPv4 groups are keyed: never an
 * IPv4 group's traffic), IPv4 and IPv6 fragments
 * (first and non-first: user space cannot reassemble; counted as fragment
 * when the protocol is UDP), IPv6 routing headers with segments left (not
 * the final destination yet), more than MAX_EXT_HDRS IPv6 extension headers
 * (counted as ext_limit), and malformed frames (those are also counted as
 * malformed; a truncated extension header, or hop-by-hop not first, is).
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
/* IPv6 extension headers walked before UDP; a longer chain is counted as
 * ext_limit and passed. xdprx/packet.py (MAX_EXT_HDRS) must agree. */
#define MAX_EXT_HDRS 4

#define NEXTHDR_HOP 0
#define NEXTHDR_ROUTING 43
#define NEXTHDR_FRAGMENT 44
#define NEXTHDR_DEST 60

enum {
	CNT_SEEN = 0,		/* every frame the program ran on */
	CNT_REDIRECTED,		/* handed to bpf_redirect_map for an AF_XDP socket */
	CNT_PASSED,		/* returned XDP_PASS (includes malformed) */
	CNT_MALFORMED,		/* truncated or inconsistent headers */
	CNT_FRAGMENT,		/* IPv4 / IPv6 fragments whose protocol is UDP */
	CNT_NO_SOCKET,		/* subscribed, but no socket on this queue */
	CNT_EXT_LIMIT,		/* IPv6: more than MAX_EXT_HDRS extension headers */
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

/* IPv6 fragment header (the kernel's struct frag_hdr is not in uapi) */
struct ip6_frag_hdr {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off;	/* offset << 3 | 2 reserved bits | M */
	__be32 identification;
};

static __always_inline int ipv6_ext(__u8 nh)
{
	return nh == NEXTHDR_HOP || nh == NEXTHDR_ROUTING || nh == NEXTHDR_FRAGMENT ||
	       nh == NEXTHDR_DEST;
}

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
		void *p;
		__u8 nh;

		if ((void *)(ip6 + 1) > data_end)
			return malformed();
		if (ip6->version != 6)
			return malformed();
		nh = ip6->nexthdr;
		if (nh != IPPROTO_UDP && !ipv6_ext(nh))
			return pass();
		ip_end = (void *)(ip6 + 1) + bpf_ntohs(ip6->payload_len);
		if (ip_end > data_end)
			return malformed();
		p = ip6 + 1;
		/* extension headers: each is at least 8 bytes, bounded by the IP
		 * payload; at most MAX_EXT_HDRS of them (a bounded, unrolled walk) */
#pragma unroll
		for (i = 0; i < MAX_EXT_HDRS; i++) {
			struct ipv6_opt_hdr *oh = p;
			__u32 len;

			if (nh == IPPROTO_UDP)
				break;
			if (!ipv6_ext(nh))
				return pass();	/* e.g. ICMPv6 (MLD) behind hop-by-hop */
			if (p + 8 > data_end || p + 8 > ip_end)
				return malformed();
			if (nh == NEXTHDR_HOP && i > 0)
				return malformed();	/* RFC 8200: hop-by-hop only first */
			if (nh == NEXTHDR_FRAGMENT) {
				struct ip6_frag_hdr *fh = p;

				/* any fragment (offset != 0 or M set): the kernel's */
				if (fh->frag_off & bpf_htons(0xfff9)) {
					if (fh->nexthdr == IPPROTO_UDP)
						count(CNT_FRAGMENT);
					return pass();
				}
				len = 8;	/* atomic fragment: a whole datagram */
			} else {
				/* segments left: not at its final destination yet */
				if (nh == NEXTHDR_ROUTING &&
				    ((struct ipv6_rt_hdr *)p)->segments_left)
					return pass();
				len = ((__u32)oh->hdrlen + 1) * 8;
			}
			if (p + len > ip_end)
				return malformed();
			nh = oh->nexthdr;
			p += len;
		}
		if (nh != IPPROTO_UDP) {
			if (ipv6_ext(nh))
				count(CNT_EXT_LIMIT);	/* beyond the bound: never silently */
			return pass();
		}
		udp = p;
		if (!udp_ok(udp, ip_end, data_end))
			return malformed();
		/* ::ffff:a.b.c.d keys the IPv4 groups: an IPv6 packet to such an
		 * address (never valid on the wire, RFC 4291 2.5.5.2) is no
		 * subscriber's, least of all an IPv4 group's */
		if (ip6->daddr.in6_u.u6_addr32[0] == 0 && ip6->daddr.in6_u.u6_addr32[1] == 0 &&
		    ip6->daddr.in6_u.u6_addr32[2] == bpf_htonl(0xffff))
			return pass();
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
