/* The floor under target (e) across processes: what waking N processes on one
 * CPU costs by itself, with no packets, no rings and no handler.
 *
 * N consumer processes pinned to CONS_CPU, each blocked in poll() on its own
 * eventfd (xdprx's consumer wake-up), or all in one FUTEX_WAIT ("futex": one
 * wake-up call for all, the cheapest broadcast Linux has). A producer pinned
 * to PROD_CPU stamps a sequence number at RATE per second and wakes every
 * consumer. Each consumer, per wake-up, records now - stamp of the first
 * sequence number it had not seen: the per-batch latency of `xdprx bench`
 * (lat.h's buckets). With PROD_CPU != CONS_CPU the consumers have their CPU to
 * themselves, the most generous placement for the target.
 *
 *   wakefan N RATE SECONDS CONS_CPU PROD_CPU eventfd|futex
 *
 * Prints one JSON line: n, mode, sent, batches, lagged, hist.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lat.h"

#define NMAX 256
#define RING 65536

struct shared {
	_Atomic uint64_t seq;        /* last stamped sequence number (0: none yet) */
	_Atomic uint32_t word;       /* futex word, bumped per send */
	_Atomic int stop, ready;
	int64_t stamp[RING];         /* send time (ns) of seq, at seq % RING */
	uint64_t batches[NMAX], lagged[NMAX];
	uint64_t hist[NMAX][LAT_NB];
};

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void pin(int cpu)
{
	cpu_set_t s;
	CPU_ZERO(&s);
	CPU_SET(cpu, &s);
	if (sched_setaffinity(0, sizeof(s), &s)) {
		perror("sched_setaffinity");
		exit(1);
	}
}

static long futex(_Atomic uint32_t *w, int op, uint32_t val, const struct timespec *t)
{
	return syscall(SYS_futex, (uint32_t *)w, op, val, t, NULL, 0);
}

static void consume(struct shared *sh, int i, int efd, int use_futex)
{
	uint64_t last = 0, v;
	struct timespec t100ms = {0, 100000000};
	atomic_fetch_add(&sh->ready, 1);
	while (!atomic_load(&sh->stop)) {
		uint32_t w = atomic_load_explicit(&sh->word, memory_order_acquire);
		uint64_t s = atomic_load_explicit(&sh->seq, memory_order_acquire);
		if (s == last) {
			if (use_futex) {
				futex(&sh->word, FUTEX_WAIT, w, &t100ms);
			} else {
				struct pollfd p = {efd, POLLIN, 0};
				poll(&p, 1, 100);
				if (read(efd, &v, 8) < 0 && errno != EAGAIN)
					break;
			}
			continue;
		}
		if (s - last > RING)
			sh->lagged[i]++;
		else
			lat_add(sh->hist[i], now_ns() - sh->stamp[(last + 1) % RING]);
		sh->batches[i]++;
		last = s;
	}
}

int main(int argc, char **argv)
{
	if (argc != 7) {
		fprintf(stderr, "usage: wakefan N RATE SECONDS CONS_CPU PROD_CPU eventfd|futex\n");
		return 2;
	}
	int n = atoi(argv[1]), cons_cpu = atoi(argv[4]), prod_cpu = atoi(argv[5]);
	double rate = atof(argv[2]), seconds = atof(argv[3]);
	int use_futex = !strcmp(argv[6], "futex");
	if (n < 1 || n > NMAX || rate <= 0 || seconds <= 0) {
		fprintf(stderr, "wakefan: N must be 1..%d, RATE and SECONDS > 0\n", NMAX);
		return 2;
	}
	struct shared *sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE,
				 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	int efd[NMAX];
	pid_t pid[NMAX];
	for (int i = 0; i < n; i++) {
		efd[i] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		if (efd[i] < 0) {
			perror("eventfd");
			return 1;
		}
	}
	for (int i = 0; i < n; i++) {
		pid[i] = fork();
		if (pid[i] < 0) {
			perror("fork");
			atomic_store(&sh->stop, 1);
			return 1;
		}
		if (pid[i] == 0) {
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			pin(cons_cpu);
			consume(sh, i, efd[i], use_futex);
			_exit(0);
		}
	}
	pin(prod_cpu);
	prctl(PR_SET_TIMERSLACK, 1);         /* pace to the µs, not the default 50 µs */
	int64_t deadline = now_ns() + 10000000000LL;
	while (atomic_load(&sh->ready) < n && now_ns() < deadline)
		usleep(1000);
	int64_t period = (int64_t)(1e9 / rate), next = now_ns(), end = next + (int64_t)(seconds * 1e9);
	uint64_t sent = 0, one = 1;
	while (next < end) {
		next += period;
		struct timespec ts = {next / 1000000000LL, next % 1000000000LL};
		clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
		sent++;
		sh->stamp[sent % RING] = now_ns();
		atomic_store_explicit(&sh->seq, sent, memory_order_release);
		if (use_futex) {
			atomic_fetch_add_explicit(&sh->word, 1, memory_order_release);
			futex(&sh->word, FUTEX_WAKE, INT_MAX, NULL);
		} else {
			for (int i = 0; i < n; i++)
				if (write(efd[i], &one, 8) < 0 && errno != EAGAIN)
					perror("write");
		}
	}
	usleep(50000);                       /* let the last wake-ups land */
	atomic_store(&sh->stop, 1);
	atomic_fetch_add(&sh->word, 1);
	futex(&sh->word, FUTEX_WAKE, INT_MAX, NULL);
	for (int i = 0; i < n; i++) {
		write(efd[i], &one, 8);
		waitpid(pid[i], NULL, 0);
	}
	static uint64_t total[LAT_NB];
	uint64_t batches = 0, lagged = 0;
	for (int i = 0; i < n; i++) {
		batches += sh->batches[i];
		lagged += sh->lagged[i];
		for (int b = 0; b < LAT_NB; b++)
			total[b] += sh->hist[i][b];
	}
	printf("{\"n\": %d, \"mode\": \"%s\", \"rate\": %g, \"seconds\": %g, \"sent\": %llu, "
	       "\"batches\": %llu, \"lagged\": %llu, \"hist\": ", n, argv[6], rate, seconds,
	       (unsigned long long)sent, (unsigned long long)batches, (unsigned long long)lagged);
	lat_print(total);
	printf("}\n");
	return 0;
}
