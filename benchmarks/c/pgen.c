/* Paced traffic generator for loss-free rates and latency: AF_PACKET with
 * PACKET_QDISC_BYPASS and sendmmsg (the fastest socket path here, about
 * 1.7 Mpps), so it needs no NAPI on the peer and can send at a set rate.
 *
 *   pgen IFNAME RATE COUNT MAX_SECONDS [FRAME_LEN]
 * sends COUNT UDP datagrams to 239.1.2.3:5000 at RATE packets/s (0: as fast
 * as it can), stopping at MAX_SECONDS whatever is left; prints one JSON line
 * {"sent", "seconds"}. Each payload starts with a u64 sequence number and the
 * u64 CLOCK_MONOTONIC ns at which its sendmmsg batch was sent, so receivers
 * on this machine measure latency end to end on one clock.
 *
 * Pacing: the schedule is RATE from the start; each loop sends what is due
 * (at most one batch of VLEN), spinning in between: this process owns its
 * CPU. A stall is not caught up with a burst beyond VLEN. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <net/if.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "frame.h"

#define VLEN 64

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	if (argc < 5) {
		fprintf(stderr, "usage: pgen IFNAME RATE COUNT MAX_SECONDS [FRAME_LEN]\n");
		return 2;
	}
	double rate = atof(argv[2]);
	unsigned long long count = strtoull(argv[3], NULL, 10);
	uint64_t max_ns = (uint64_t)(atof(argv[4]) * 1e9);
	int flen = argc > 5 ? atoi(argv[5]) : 102;
	int hdr = FRAME_HDR;
	if (flen < hdr + 16 || flen > 1514) {
		fprintf(stderr, "pgen: FRAME_LEN must be %d..1514\n", hdr + 16);
		return 2;
	}
	int ifindex = if_nametoindex(argv[1]);
	if (!ifindex) {
		perror(argv[1]);
		return 1;
	}
	int fd = socket(AF_PACKET, SOCK_RAW, 0);
	int one = 1;
	if (fd < 0 || setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof(one))) {
		perror("AF_PACKET socket");
		return 1;
	}
	struct sockaddr_ll sll = {.sll_family = AF_PACKET, .sll_ifindex = ifindex,
				  .sll_protocol = htons(ETH_P_IP)};
	if (bind(fd, (void *)&sll, sizeof(sll))) {
		perror("bind");
		return 1;
	}
	static unsigned char pkts[VLEN][1514];
	struct iovec iov[VLEN];
	struct mmsghdr msgs[VLEN];
	unsigned char *pkt = pkts[0];

	udp_frame(pkt, flen);
	for (int i = 0; i < VLEN; i++) {
		if (i)
			memcpy(pkts[i], pkt, flen);
		iov[i] = (struct iovec){pkts[i], flen};
		msgs[i].msg_hdr = (struct msghdr){.msg_iov = &iov[i], .msg_iovlen = 1};
	}
	unsigned long long sent = 0, errors = 0;
	uint64_t start = now_ns(), t0 = start, t = start;
	double ns_per_pkt = rate > 0 ? 1e9 / rate : 0;
	while (sent < count && t - start < max_ns) {
		unsigned long long due = rate > 0 ? (unsigned long long)((t - t0) / ns_per_pkt) + 1
						  : sent + VLEN;
		if (due > count)
			due = count;
		if (due <= sent) {
			t = now_ns();
			continue;
		}
		if (due - sent > VLEN) {
			if (rate > 0 && due - sent > 4 * VLEN)
				/* behind by more than a few batches: move the schedule */
				t0 += (uint64_t)((due - sent - VLEN) * ns_per_pkt);
			due = sent + VLEN;
		}
		int k = due - sent;
		for (int i = 0; i < k; i++) {
			uint64_t *p = (uint64_t *)(pkts[i] + hdr);
			p[0] = sent + i;
			p[1] = t;
		}
		int r = sendmmsg(fd, msgs, k, 0);
		if (r <= 0) {
			errors++;
			if (errors > 1000000)
				break;
		} else {
			sent += r;
		}
		t = now_ns();
	}
	printf("{\"sent\": %llu, \"seconds\": %.4f, \"send_errors\": %llu}\n", sent,
	       (now_ns() - start) / 1e9, errors);
	return 0;
}
