/* Per-batch latency histogram shared by the C contenders, the same buckets as
 * benchmarks/latency.py: bucket i holds latencies in [2^(i/16), 2^((i+1)/16))
 * ns (4.4 % wide), so percentiles merge across processes by adding counts. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define LAT_SUB 16
#define LAT_NB (LAT_SUB * 40)

static inline void lat_add(uint64_t *h, int64_t ns)
{
	int i = ns > 1 ? (int)(log2((double)ns) * LAT_SUB) : 0;
	h[i < LAT_NB ? i : LAT_NB - 1]++;
}

/* Print the non-empty buckets as a JSON object {"index": count, ...}. */
static inline void lat_print(const uint64_t *h)
{
	int first = 1;
	printf("{");
	for (int i = 0; i < LAT_NB; i++)
		if (h[i]) {
			printf("%s\"%d\": %llu", first ? "" : ", ", i, (unsigned long long)h[i]);
			first = 0;
		}
	printf("}");
}
