/* The multi-queue C baseline: one AF_XDP socket per RX queue, all on one
 * UMEM (XDP_SHARED_UMEM, a FILL/COMPLETION pair per queue), one thread per
 * queue, behind the same XDP program as xdprx (bpf/redirect.c), touching the
 * first 64 bytes of every packet: the design of `xsk_rx -q 0,1,2,3`.
 *
 *   mqrx OBJ IFNAME SECONDS MODE(native|skb) WAIT(spin|poll) QUEUES(0,1,..) [BATCH]
 * prints one JSON line: packets, seconds, cpu (process), per-queue packets */
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <xdp/xsk.h>
#include <linux/if_link.h>
#include <net/if.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "clock.h"

#define NFRAMES 4096
#define FSIZE 2048
#define MAXQ 16

struct lane {
	struct xsk_ring_prod fq;
	struct xsk_ring_cons cq, rx;
	struct xsk_socket *xsk;
	int queue, fd;
	unsigned long long pkts, sum;
	double t0, t1;
};

static void *area;
static double secs;
static unsigned batch = 256;
static int use_poll;

static void *loop(void *arg)
{
	struct lane *l = arg;
	unsigned idx = 0, spins = 0, started = 0;
	struct pollfd pfd = {.fd = l->fd, .events = POLLIN};
	double give_up = now() + 30;
	l->t0 = l->t1 = now();
	while (1) {
		unsigned n = xsk_ring_cons__peek(&l->rx, batch, &idx);
		if (!n) {
			if ((++spins & 1023) == 0 &&
			    ((started && now() - l->t0 >= secs) || now() > give_up))
				break;
			if (use_poll && spins > 64)
				poll(&pfd, 1, 100);
			continue;
		}
		spins = 0;
		if (!started) {
			started = 1;
			l->t0 = now();
		}
		unsigned fidx;
		while (xsk_ring_prod__reserve(&l->fq, n, &fidx) != n)
			;
		for (unsigned i = 0; i < n; i++) {
			const struct xdp_desc *d = xsk_ring_cons__rx_desc(&l->rx, idx + i);
			const unsigned long long *p = xsk_umem__get_data(area, d->addr);
			l->sum += p[0] + p[1] + p[2] + p[3] + p[4] + p[5] + p[6] + p[7];
			*xsk_ring_prod__fill_addr(&l->fq, fidx + i) = xsk_umem__extract_addr(d->addr);
		}
		xsk_ring_prod__submit(&l->fq, n);
		xsk_ring_cons__release(&l->rx, n);
		l->pkts += n;
		if ((l->pkts & 0xffff) < n && now() - l->t0 >= secs)
			break;
	}
	l->t1 = started ? now() : l->t0;
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc < 7) {
		fprintf(stderr, "usage: mqrx OBJ IFNAME SECONDS native|skb spin|poll Q,Q,.. [BATCH]\n");
		return 2;
	}
	const char *ifname = argv[2];
	secs = atof(argv[3]);
	int skb = !strcmp(argv[4], "skb");
	use_poll = !strcmp(argv[5], "poll");
	if (argc > 7)
		batch = atoi(argv[7]);
	struct lane lanes[MAXQ];
	int nq = 0;
	for (char *s = strtok(argv[6], ","); s && nq < MAXQ; s = strtok(NULL, ","))
		lanes[nq++] = (struct lane){.queue = atoi(s)};
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

	size_t size = (size_t)nq * NFRAMES * FSIZE;
	area = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct xsk_umem *umem;
	struct xsk_umem_config ucfg = {.fill_size = 4096, .comp_size = 64,
				       .frame_size = FSIZE, .frame_headroom = 0};
	if (xsk_umem__create(&umem, area, size, &lanes[0].fq, &lanes[0].cq, &ucfg)) {
		perror("umem");
		return 1;
	}
	struct xsk_socket_config scfg = {.rx_size = 4096, .tx_size = 0,
		.libxdp_flags = XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD,
		.bind_flags = XDP_USE_NEED_WAKEUP};
	for (int k = 0; k < nq; k++) {
		struct lane *l = &lanes[k];
		int err = k == 0 ? xsk_socket__create(&l->xsk, ifname, l->queue, umem, &l->rx, NULL, &scfg)
				 : xsk_socket__create_shared(&l->xsk, ifname, l->queue, umem, &l->rx,
							     NULL, &l->fq, &l->cq, &scfg);
		if (err) {
			fprintf(stderr, "socket on queue %d: %s\n", l->queue, strerror(-err));
			return 1;
		}
		l->fd = xsk_socket__fd(l->xsk);
		bpf_map_update_elem(xsks, &l->queue, &l->fd, 0);
		unsigned idx = 0;
		xsk_ring_prod__reserve(&l->fq, 4096, &idx);
		for (unsigned i = 0; i < 4096; i++)
			*xsk_ring_prod__fill_addr(&l->fq, idx + i) =
				((unsigned long long)k * NFRAMES + i) * FSIZE;
		xsk_ring_prod__submit(&l->fq, 4096);
	}
	printf("ready\n");
	fflush(stdout);
	double c0 = cpu();
	pthread_t th[MAXQ];
	for (int k = 0; k < nq; k++)
		pthread_create(&th[k], NULL, loop, &lanes[k]);
	for (int k = 0; k < nq; k++)
		pthread_join(th[k], NULL);
	double dc = cpu() - c0, t0 = 1e300, t1 = 0;
	unsigned long long pkts = 0, sum = 0;
	for (int k = 0; k < nq; k++) {
		if (lanes[k].pkts && lanes[k].t0 < t0)
			t0 = lanes[k].t0;
		if (lanes[k].t1 > t1)
			t1 = lanes[k].t1;
		pkts += lanes[k].pkts;
		sum += lanes[k].sum;
	}
	printf("{\"packets\": %llu, \"seconds\": %.4f, \"cpu\": %.4f, \"check\": %llu, \"per_queue\": [",
	       pkts, pkts ? t1 - t0 : 0.0, dc, sum & 1);
	for (int k = 0; k < nq; k++)
		printf("%s%llu", k ? ", " : "", lanes[k].pkts);
	printf("]}\n");
	for (int k = nq - 1; k >= 0; k--)
		xsk_socket__delete(lanes[k].xsk);
	xsk_umem__delete(umem);
	return 0;
}
