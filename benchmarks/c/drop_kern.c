// The ceiling: drop every frame in the driver (veth counts them in
// `ethtool -S`: rx_queue_0_xdp_drops).
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int xdp_drop(struct xdp_md *ctx)
{
	return XDP_DROP;
}

char _license[] SEC("license") = "GPL";
