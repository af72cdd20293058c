/* The kernel path xdprx replaces: N ordinary UDP sockets joined to one
 * multicast group, each drained with recvmmsg, the first 64 bytes of every
 * datagram read (as every other contender does).
 *
 *   udprx IFNAME GROUP PORT N SECONDS
 * prints "ready", waits for the first datagram, measures SECONDS, then prints
 * one JSON line: deliveries (datagrams summed over sockets), seconds, cpu.
 * With SECONDS 0 it serves until stdin closes instead: each line read on
 * stdin prints one JSON line of cumulative counts and the per-batch latency
 * histogram since the last one (latency: now - the send time pgen wrote at
 * payload offset 8, for the first datagram of each recvmmsg batch). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <net/if.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "lat.h"

#define VLEN 64
#define MAXS 256

static unsigned long long rcvbuf_errors(void)
{
	/* datagrams dropped for lack of buffer, summed over sockets */
	unsigned long long drops = 0;
	FILE *f = fopen("/proc/net/snmp", "r");
	char line[1024];
	while (f && fgets(line, sizeof(line), f))
		if (!strncmp(line, "Udp: ", 5) && strstr(line, "InDatagrams") == NULL) {
			unsigned long long v[8] = {0};
			sscanf(line + 5, "%llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4]);
			drops = v[4];
		}
	if (f)
		fclose(f);
	return drops;
}

static int serve(struct pollfd *pfd, int n, struct mmsghdr *msgs, char (*bufs)[2048])
{
	static uint64_t hist[LAT_NB];
	unsigned long long got = 0, acc = 0, per[MAXS] = {0};
	pfd[n] = (struct pollfd){.fd = 0, .events = POLLIN};
	double c0 = cpu();
	for (unsigned long it = 0;; it++) {
		int idle = 1;
		for (int s = 0; s < n; s++) {
			int k = recvmmsg(pfd[s].fd, msgs, VLEN, MSG_DONTWAIT, NULL);
			if (k <= 0)
				continue;
			struct timespec ts;
			clock_gettime(CLOCK_MONOTONIC, &ts);
			int64_t t = ts.tv_sec * 1000000000ll + ts.tv_nsec;
			lat_add(hist, t - *(int64_t *)(bufs[0] + 8));
			idle = 0;
			got += k;
			per[s] += k;
			for (int i = 0; i < k; i++)
				for (int j = 0; j < 64; j += 8)
					acc += *(unsigned long long *)(bufs[i] + j);
		}
		if (!idle && (it & 255))
			continue;
		poll(pfd, n + 1, idle ? 10 : 0);
		if (!pfd[n].revents)
			continue;
		char line[256];
		if (!fgets(line, sizeof(line), stdin))
			return 0;
		unsigned long long lo = per[0];
		for (int s = 1; s < n; s++)
			lo = per[s] < lo ? per[s] : lo;
		printf("{\"deliveries\": %llu, \"min_per_consumer\": %llu, \"cpu\": %.4f, "
		       "\"rcvbuf_errors\": %llu, \"check\": %llu, \"latency\": ", got, lo, cpu() - c0,
		       rcvbuf_errors(), acc & 1);
		lat_print(hist);
		printf("}\n");
		fflush(stdout);
		memset(hist, 0, sizeof(hist));
	}
}

int main(int argc, char **argv)
{
	if (argc < 6) {
		fprintf(stderr, "usage: udprx IFNAME GROUP PORT N SECONDS\n");
		return 2;
	}
	int n = atoi(argv[4]);
	double secs = atof(argv[5]);
	if (n < 1 || n > MAXS)
		return 2;
	struct pollfd pfd[MAXS + 1];
	static char bufs[VLEN][2048];
	struct iovec iov[VLEN];
	struct mmsghdr msgs[VLEN];
	for (int i = 0; i < VLEN; i++) {
		iov[i] = (struct iovec){bufs[i], sizeof(bufs[i])};
		msgs[i].msg_hdr = (struct msghdr){.msg_iov = &iov[i], .msg_iovlen = 1};
	}
	for (int s = 0; s < n; s++) {
		int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
		int one = 1, rcv = 4 << 20;
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcv, sizeof(rcv));
		struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
		inet_pton(AF_INET, argv[2], &a.sin_addr);
		if (bind(fd, (void *)&a, sizeof(a))) {
			perror("bind");
			return 1;
		}
		struct ip_mreqn m = {.imr_ifindex = if_nametoindex(argv[1])};
		m.imr_multiaddr = a.sin_addr;
		if (setsockopt(fd, IPPROTO_IP, IP_ADD_MEMBERSHIP, &m, sizeof(m))) {
			perror("IP_ADD_MEMBERSHIP");
			return 1;
		}
		pfd[s] = (struct pollfd){.fd = fd, .events = POLLIN};
	}
	printf("ready\n");
	fflush(stdout);
	if (secs == 0)
		return serve(pfd, n, msgs, bufs);
	if (poll(pfd, 1, 30000) <= 0)
		return 1;
	unsigned long long got = 0, acc = 0;
	double t0 = now(), c0 = cpu();
	while (now() - t0 < secs) {
		int idle = 1;
		for (int s = 0; s < n; s++) {
			int k = recvmmsg(pfd[s].fd, msgs, VLEN, MSG_DONTWAIT, NULL);
			if (k <= 0)
				continue;
			idle = 0;
			got += k;
			for (int i = 0; i < k; i++)
				for (int j = 0; j < 64; j += 8)
					acc += *(unsigned long long *)(bufs[i] + j);
		}
		if (idle)
			poll(pfd, n, 10);
	}
	double dt = now() - t0, c = cpu() - c0;
	printf("{\"deliveries\": %llu, \"seconds\": %.4f, \"cpu\": %.4f, \"rcvbuf_errors\": %llu, "
	       "\"check\": %llu}\n", got, dt, c, rcvbuf_errors(), acc & 1);
	return 0;
}
