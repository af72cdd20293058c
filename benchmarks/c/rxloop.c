/* The C baseline: an AF_XDP receive loop on libxdp, behind the same XDP
 * program as xdprx (bpf/redirect.c), touching the first 64 bytes of every
 * packet.
 *
 *   rxloop OBJ IFNAME SECONDS MODE(native|skb) WAIT(spin|poll) [BATCH]
 * prints: packets seconds cpu_seconds */
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <xdp/xsk.h>
#include <linux/if_link.h>
#include <net/if.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>

#include "clock.h"

#define NFRAMES 4096
#define FSIZE 2048

int main(int argc, char **argv)
{
	if (argc < 6) {
		fprintf(stderr, "usage: rxloop OBJ IFNAME SECONDS native|skb spin|poll [BATCH]\n");
		return 2;
	}
	const char *ifname = argv[2];
	double secs = atof(argv[3]);
	int skb = !strcmp(argv[4], "skb"), use_poll = !strcmp(argv[5], "poll");
	unsigned batch = argc > 6 ? atoi(argv[6]) : 256;
	int ifindex = if_nametoindex(ifname);

	struct bpf_object *obj = bpf_object__open_file(argv[1], NULL);
	if (!obj || bpf_object__load(obj)) {
		perror("load redirect.o");
		return 1;
	}
	int prog = bpf_program__fd(bpf_object__find_program_by_name(obj, "xdprx_redirect"));
	int xsks = bpf_map__fd(bpf_object__find_map_by_name(obj, "xsks"));
	int subs = bpf_map__fd(bpf_object__find_map_by_name(obj, "subscriptions"));
	LIBBPF_OPTS(bpf_link_create_opts, lo, .flags = skb ? XDP_FLAGS_SKB_MODE : XDP_FLAGS_DRV_MODE);
	if (bpf_link_create(prog, ifindex, BPF_XDP, &lo) < 0) {
		perror("attach");
		return 1;
	}
	unsigned char key[20] = {0};
	unsigned int sub = 0;
	key[10] = key[11] = 0xff;
	key[12] = 239, key[13] = 1, key[14] = 2, key[15] = 3;
	key[16] = 5000 >> 8, key[17] = 5000 & 0xff;
	bpf_map_update_elem(subs, key, &sub, 0);

	void *area = mmap(NULL, NFRAMES * FSIZE, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct xsk_ring_prod fq;
	struct xsk_ring_cons cq, rx;
	struct xsk_umem *umem;
	struct xsk_umem_config ucfg = {.fill_size = 4096, .comp_size = 64,
				       .frame_size = FSIZE, .frame_headroom = 0};
	if (xsk_umem__create(&umem, area, NFRAMES * FSIZE, &fq, &cq, &ucfg)) {
		perror("umem");
		return 1;
	}
	struct xsk_socket *xsk;
	struct xsk_socket_config scfg = {.rx_size = 4096, .tx_size = 0,
		.libxdp_flags = XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD,
		.bind_flags = XDP_USE_NEED_WAKEUP};
	if (xsk_socket__create(&xsk, ifname, 0, umem, &rx, NULL, &scfg)) {
		perror("socket");
		return 1;
	}
	int q = 0, sfd = xsk_socket__fd(xsk);
	bpf_map_update_elem(xsks, &q, &sfd, 0);

	unsigned idx = 0;
	xsk_ring_prod__reserve(&fq, 4096, &idx);
	for (unsigned i = 0; i < 4096; i++)
		*xsk_ring_prod__fill_addr(&fq, idx + i) = (unsigned long long)i * FSIZE;
	xsk_ring_prod__submit(&fq, 4096);

	printf("ready\n");
	fflush(stdout);
	unsigned long long pkts = 0, sum = 0;
	struct pollfd pfd = {.fd = sfd, .events = POLLIN};
	double t0 = now() + 3600, c0 = cpu(); /* the clock starts with the first packet */
	unsigned spins = 0, started = 0;
	double give_up = now() + 30;
	while (1) {
		unsigned n = xsk_ring_cons__peek(&rx, batch, &idx);
		if (!n) {
			if ((++spins & 1023) == 0 && (now() - t0 >= secs || now() > give_up))
				break;
			if (use_poll && spins > 64)
				poll(&pfd, 1, 100);
			continue;
		}
		spins = 0;
		if (!started) {
			started = 1;
			t0 = now();
			c0 = cpu();
		}
		unsigned fidx;
		while (xsk_ring_prod__reserve(&fq, n, &fidx) != n)
			;
		for (unsigned i = 0; i < n; i++) {
			const struct xdp_desc *d = xsk_ring_cons__rx_desc(&rx, idx + i);
			const unsigned long long *p = xsk_umem__get_data(area, d->addr);
			/* touch the first 64 bytes */
			sum += p[0] + p[1] + p[2] + p[3] + p[4] + p[5] + p[6] + p[7];
			*xsk_ring_prod__fill_addr(&fq, fidx + i) = xsk_umem__extract_addr(d->addr);
		}
		xsk_ring_prod__submit(&fq, n);
		xsk_ring_cons__release(&rx, n);
		pkts += n;
		if ((pkts & 0xffff) < n && now() - t0 >= secs)
			break;
	}
	double dt = started ? now() - t0 : 0, dc = started ? cpu() - c0 : 0;
	printf("{\"packets\": %llu, \"seconds\": %.4f, \"cpu\": %.4f, \"check\": %llu}\n",
	       pkts, dt, dc, sum & 1);
	xsk_socket__delete(xsk);
	xsk_umem__delete(umem);
	return 0;
}
