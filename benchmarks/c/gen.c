/* Traffic generator: BPF_PROG_RUN with BPF_F_TEST_XDP_LIVE_FRAMES on an XDP_TX
 * program (the engine behind xdp-trafficgen), bounded in time.
 *
 *   gen OBJ IFNAME SECONDS [FRAME_LEN]
 * sends UDP to 239.1.2.3:5000 out of IFNAME (whose peer must have NAPI, i.e.
 * an XDP program attached) and prints the number of frames offered. */
#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "frame.h"

#ifndef BPF_F_TEST_XDP_LIVE_FRAMES
#define BPF_F_TEST_XDP_LIVE_FRAMES (1U << 1)
#endif

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: gen OBJ IFNAME SECONDS [FRAME_LEN]\n");
		return 2;
	}
	int flen = argc > 4 ? atoi(argv[4]) : 102;
	double secs = atof(argv[3]);
	unsigned char pkt[1514];

	udp_frame(pkt, flen);
	struct bpf_object *obj = bpf_object__open_file(argv[1], NULL);
	if (!obj || bpf_object__load(obj)) {
		perror("load generator program");
		return 1;
	}
	int fd = bpf_program__fd(bpf_object__find_program_by_name(obj, "xdp_gen"));
	struct xdp_md ctx = {.data_end = flen, .ingress_ifindex = if_nametoindex(argv[2])};
	/* about one second per call: each call ends in an RCU grace period */
	int repeat = 2000000;
	unsigned long long sent = 0;
	double t0 = now();
	while (now() - t0 < secs) {
		LIBBPF_OPTS(bpf_test_run_opts, o, .data_in = pkt, .data_size_in = flen,
			    .ctx_in = &ctx, .ctx_size_in = sizeof(ctx), .repeat = repeat,
			    .flags = BPF_F_TEST_XDP_LIVE_FRAMES, .batch_size = 64);
		double t = now();
		if (bpf_prog_test_run_opts(fd, &o)) {
			perror("BPF_PROG_RUN");
			return 1;
		}
		sent += repeat;
		double dt = now() - t;
		/* aim each call at ~1 s, never past the deadline by much */
		double left = secs - (now() - t0);
		double rate = repeat / (dt > 1e-3 ? dt : 1e-3);
		repeat = (int)(rate * (left < 1.0 ? left : 1.0));
		if (repeat < 1000)
			break;
	}
	printf("%llu\n", sent);
	return 0;
}
