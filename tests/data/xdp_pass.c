// Someone else's XDP program, for the "never clobber another program" test.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int someone_elses(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
