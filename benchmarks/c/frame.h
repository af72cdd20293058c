/* The frame both generators send: UDP from 198.18.0.2:40000 to
 * 239.1.2.3:5000 (multicast MAC), IPv4 header checksummed, payload byte i =
 * i. Written once into @pkt (FRAME_LEN bytes, 1514 at most). */
#include <arpa/inet.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <string.h>

#define FRAME_HDR ((int)(sizeof(struct ethhdr) + sizeof(struct iphdr) + sizeof(struct udphdr)))

static unsigned short csum(const void *p, int len)
{
	const unsigned short *w = p;
	unsigned long s = 0;
	for (; len > 1; len -= 2)
		s += *w++;
	while (s >> 16)
		s = (s & 0xffff) + (s >> 16);
	return ~s;
}

static void udp_frame(unsigned char *pkt, int flen)
{
	struct ethhdr *eth = (void *)pkt;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);

	memset(pkt, 0, FRAME_HDR);
	memcpy(eth->h_dest, "\x01\x00\x5e\x01\x02\x03", 6);
	memcpy(eth->h_source, "\x02\x00\x00\x00\x00\x02", 6);
	eth->h_proto = htons(ETH_P_IP);
	ip->version = 4;
	ip->ihl = 5;
	ip->ttl = 1;
	ip->protocol = IPPROTO_UDP;
	ip->tot_len = htons(flen - sizeof(*eth));
	ip->saddr = inet_addr("198.18.0.2");
	ip->daddr = inet_addr("239.1.2.3");
	ip->check = csum(ip, sizeof(*ip));
	udp->source = htons(40000);
	udp->dest = htons(5000);
	udp->len = htons(flen - sizeof(*eth) - sizeof(*ip));
	for (int i = FRAME_HDR; i < flen; i++)
		pkt[i] = (unsigned char)i;
}
