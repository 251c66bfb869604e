// SPDX-License-Identifier: GPL-2.0
/* ops_switch.c: the switch between colors as operations: the one write of a new green share
 * (bgs_switch_set), and what a flip, a shift or a rollback asks for (bgs_change_share).
 */
#include <errno.h>
#include <stdio.h>

#include "log.h"
#include "ops.h"

const char *bgs_share_desc(__u32 share, char *buf, size_t len)
{
	char pct[16];

	if (share_color(share) != BGS_COLOR_NONE)
		snprintf(buf, len, "%s", color_name(share_color(share)));
	else
		snprintf(buf, len, "green %s", fmt_share(share, pct, sizeof(pct)));
	return buf;
}

/* Before a switch that sends new flows to gain: it must take them, and pass the probes. */
static int switch_allowed(const struct bgs_state *st, __u32 svc, __u8 gain,
			  const struct bgs_switch_opts *o, struct bgs_audit *au)
{
	struct bgs_service rec;
	struct bgs_set set;
	int err;

	if (!service_get(st, svc, &rec)) {
		pr_warn("service %u is gone\n", svc);
		return -ENOENT;
	}
	err = set_read(st, svc, gain, &set);
	if (err)
		return err;
	if (!set_takes_flows(st, &set)) {
		pr_warn("%s of '%s' has no backends%s; refusing to send new flows there\n",
			color_name(gain), rec.name, set.count ? " of weight above 0" : "");
		return -ENOENT;
	}
	return bgs_switch_checks(st, svc, &rec, gain, o->chk, o->force, au);
}

int bgs_switch_set(struct bgs_state *st, __u32 svc, __u32 share, const struct bgs_switch_opts *o,
		   struct bgs_audit *au, bool *changed)
{
	struct bgs_switch sw = switch_read(st, svc);
	int err;

	*changed = false;
	if (share > BGS_SHARE_ALL) {
		pr_warn("a green share of %u is above 100%%\n", share);
		return -EINVAL;
	}
	if (au) {
		bgs_share_desc(sw.share, au->from, sizeof(au->from));
		bgs_share_desc(share, au->to, sizeof(au->to));
		au->gen_before = au->gen_after = sw.generation;
	}
	if (share == sw.share) {
		if (au)
			au->service[0] = '\0'; /* nothing changed: nothing for the trail */
		return 0;
	}
	if (o) {
		err = switch_allowed(st, svc, share > sw.share ? BGS_GREEN : BGS_BLUE, o, au);
		if (err)
			return err;
	}
	fault_point("flip-before-write");
	sw.prev_share = sw.share;
	sw.share = share;
	/* until the color that lost all its share has no live flows left */
	sw.flags |= BGS_SW_DRAINING | BGS_SW_HAS_PREV;
	sw.generation++;
	switch_write(st, svc, sw);
	*changed = true;
	fault_point("flip-after-write");
	if (au) {
		au->gen_after = sw.generation;
		audit_record(au, 0);
	}
	return 0;
}

int bgs_change_share(const struct bgs_change *ch, const char *name, __u32 cur, bool has_prev,
		     __u32 prev, const char *where, bool quiet, __u32 *share)
{
	__u8 to;
	char pct[16];

	switch (ch->kind) {
	case BGS_CH_FLIP:
		to = ch->flip_to;
		if (to == BGS_COLOR_NONE && share_color(cur) == BGS_COLOR_NONE) {
			if (!quiet)
				pr_warn("'%s' is split%s (green %s): say which color to flip to\n",
					name, where, fmt_share(cur, pct, sizeof(pct)));
			return -EINVAL;
		}
		if (to == BGS_COLOR_NONE)
			to = !share_color(cur);
		*share = to == BGS_GREEN ? BGS_SHARE_ALL : 0;
		return 0;
	case BGS_CH_SHIFT:
		*share = ch->shift_color == BGS_GREEN ? ch->shift_pct :
							BGS_SHARE_ALL - ch->shift_pct;
		return 0;
	case BGS_CH_ROLLBACK:
		if (!has_prev) {
			if (!quiet)
				pr_warn("'%s' has not been flipped%s: nothing to roll back\n", name,
					where);
			return -ENOENT;
		}
		*share = prev;
		return 0;
	default:
		return -EINVAL;
	}
}
