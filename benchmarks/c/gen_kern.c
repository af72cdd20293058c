// The traffic generator's XDP program: every live frame goes out again (XDP_TX).
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int xdp_gen(struct xdp_md *ctx)
{
	return XDP_TX;
}

SEC("xdp")
int xdp_drop(struct xdp_md *ctx)
{
	return XDP_DROP;
}

char _license[] SEC("license") = "GPL";
