// SPDX-License-Identifier: GPL-2.0
/* drain.c: waiting for a color that takes no new flow to have no live flow left. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <bpf/bpf.h>

#include "log.h"
#include "ops.h"

/* Live flows of one color of a service, counted as `status` counts them. */
static int color_live(const struct bgs_state *st, __u32 svc, __u8 color, __u64 *live)
{
	struct bgs_flow_census *c = malloc(sizeof(*c));
	struct bgs_backend be;
	__u32 slot;
	int err;

	*live = 0;
	if (!c)
		return -ENOMEM;
	err = flows_census(st, c);
	for (slot = 0; !err && slot < BGS_MAX_SLOTS; slot++)
		if (c->live[slot] && !bpf_map_lookup_elem(st->fd[BGS_M_BACKENDS], &slot, &be) &&
		    be.state != BGS_BACKEND_FREE && be.svc == svc && be.color == color)
			*live += c->live[slot];
	free(c);
	return err;
}

int bgs_drain_wait(const struct bgs_state *st, __u32 svc, const char *name, __u8 color,
		   __u64 timeout_ns, __u64 interval_ns)
{
	__u64 t0 = now_ns(), live, elapsed, next;
	struct bgs_service rec;
	struct bgs_switch sw;
	__u64 k;
	int err;

	for (k = 1;; k++) {
		if (!service_get(st, svc, &rec) || strncmp(rec.name, name, BGS_NAME_LEN)) {
			pr_warn("%s was deleted while draining\n", name);
			return -ENOENT;
		}
		sw = switch_read(st, svc);
		if (share_color(sw.share) != !color) {
			pr_warn("%s: %s takes new flows again (generation %u): it will not drain\n",
				name, color_name(color), sw.generation);
			return -EBUSY;
		}
		err = color_live(st, svc, color, &live);
		if (err)
			return err;
		elapsed = now_ns() - t0;
		if (!live) {
			pr_info("%s: %s drained, 0 live flows (%.1fs)\n", name, color_name(color),
				elapsed / 1e9);
			return 0;
		}
		pr_info("%s: %s %llu live flows draining (%.1fs)\n", name, color_name(color),
			(unsigned long long)live, elapsed / 1e9);
		fflush(stdout);
		if (elapsed >= timeout_ns) {
			pr_warn("%s: %s still has %llu live flows after %.1fs (--timeout)\n", name,
				color_name(color), (unsigned long long)live, elapsed / 1e9);
			return BGS_ERR_TIMEOUT;
		}
		next = t0 + k * interval_ns;
		sleep_until_ns(next < t0 + timeout_ns ? next : t0 + timeout_ns);
	}
}
