// SPDX-License-Identifier: GPL-2.0
/* attach.c: `attach` and `detach`: the skeleton lifecycle, pins, XDP ingress and TC egress. */
#include <errno.h>
#include <stddef.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/if_link.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "bgswitch.skel.h"
#include "commands.h"
#include "local.h"
#include "log.h"
#include "specs.h"
#include "state.h"
#include "util.h"

enum attach_mode {
	MODE_AUTO,
	MODE_NATIVE,
	MODE_GENERIC,
};

static const char *xdp_mode_name(__u8 attach_mode)
{
	switch (attach_mode) {
	case XDP_ATTACHED_DRV:
		return "native";
	case XDP_ATTACHED_SKB:
		return "generic";
	case XDP_ATTACHED_HW:
		return "offload";
	default:
		return "none";
	}
}

static __u32 mode_flags(enum attach_mode mode)
{
	return mode == MODE_NATIVE  ? XDP_FLAGS_DRV_MODE :
	       mode == MODE_GENERIC ? XDP_FLAGS_SKB_MODE :
				      0;
}

static __u32 attached_flags(__u8 attach_mode)
{
	return attach_mode == XDP_ATTACHED_SKB ? XDP_FLAGS_SKB_MODE :
	       attach_mode == XDP_ATTACHED_DRV ? XDP_FLAGS_DRV_MODE :
						 0;
}

/* What runs on the interface now, and whether it belongs to this state (the one under the pin
 * root): its programs are those it recorded for the interface, or those it has pinned.
 */
struct iface_view {
	__u32 xdp_id;
	__u8 xdp_mode;
	bool xdp_ours;
	char xdp_name[BPF_OBJ_NAME_LEN];
	__u32 tc_id;
	bool tc_ours;
	bool recorded; /* bgs_ifaces holds exactly these two programs */
};

static int prog_name_by_id(__u32 id, char *name, size_t len)
{
	struct bpf_prog_info info = { 0 };
	__u32 info_len = sizeof(info);
	int fd, err = 0;

	fd = bpf_prog_get_fd_by_id(id);
	if (fd < 0)
		return -errno;
	if (bpf_obj_get_info_by_fd(fd, &info, &info_len))
		err = -errno;
	else
		snprintf(name, len, "%s", info.name);
	close(fd);
	return err;
}

static __u32 pinned_prog_id(const char *name)
{
	struct bpf_prog_info info = { 0 };
	__u32 len = sizeof(info), id = 0;
	char rel[64], path[PATH_MAX];
	int fd;

	snprintf(rel, sizeof(rel), "%s/%s", BGS_PROG_DIR, name);
	if (state_pin_path(path, sizeof(path), rel))
		return 0;
	fd = bpf_obj_get(path);
	if (fd < 0)
		return 0;
	if (!bpf_obj_get_info_by_fd(fd, &info, &len))
		id = info.id;
	close(fd);
	return id;
}

/* Does the pin root hold every map this build uses? A state made by an earlier build of the
 * same layout may lack those added since (the local clients' maps): attach then loads, and
 * libbpf creates and pins them.
 */
static bool pins_complete(void)
{
	char path[PATH_MAX];
	int i;

	for (i = 0; i < BGS_M_COUNT; i++) {
		if (state_pin_path(path, sizeof(path), bgs_map_names[i]) || access(path, F_OK))
			return false;
	}
	return true;
}

static bool recorded_iface(int ifindex, struct bgs_iface *rec)
{
	char path[PATH_MAX];
	__u32 key = ifindex;
	bool found;
	int fd;

	memset(rec, 0, sizeof(*rec));
	state_pin_path(path, sizeof(path), "bgs_ifaces");
	fd = bpf_obj_get(path);
	if (fd < 0)
		return false;
	found = !bpf_map_lookup_elem(fd, &key, rec);
	close(fd);
	return found;
}

static int iface_inspect(int ifindex, struct iface_view *v)
{
	struct bgs_iface rec;
	bool has_rec;
	LIBBPF_OPTS(bpf_xdp_query_opts, q);
	DECLARE_LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex, .attach_point = BPF_TC_EGRESS);
	DECLARE_LIBBPF_OPTS(bpf_tc_opts, tc, .handle = BGS_TC_HANDLE, .priority = BGS_TC_PRIORITY);
	int err;

	memset(v, 0, sizeof(*v));
	err = bpf_xdp_query(ifindex, 0, &q);
	if (err) {
		pr_warn("cannot query XDP on ifindex %d: %s\n", ifindex, strerror(-err));
		return err;
	}
	v->xdp_id = q.prog_id;
	v->xdp_mode = q.attach_mode;
	if (v->xdp_id)
		prog_name_by_id(v->xdp_id, v->xdp_name, sizeof(v->xdp_name));
	if (!bpf_tc_query(&hook, &tc))
		v->tc_id = tc.prog_id;

	has_rec = recorded_iface(ifindex, &rec);
	v->xdp_ours = v->xdp_id && ((has_rec && v->xdp_id == rec.xdp_prog_id) ||
				    v->xdp_id == pinned_prog_id("bgs_ingress"));
	v->tc_ours = v->tc_id && ((has_rec && v->tc_id == rec.tc_prog_id) ||
				  v->tc_id == pinned_prog_id("bgs_egress"));
	v->recorded = has_rec && v->xdp_id == rec.xdp_prog_id && v->tc_id == rec.tc_prog_id;
	return 0;
}

/* Read what the pinned state already says: its layout and its flow-table size. */
static int pinned_flow_entries(__u32 *entries)
{
	struct bpf_map_info info = { 0 };
	__u32 len = sizeof(info), zero = 0;
	struct bgs_config cfg;
	char path[PATH_MAX];
	int fd, err = 0;

	*entries = 0;
	state_pin_path(path, sizeof(path), "bgs_config");
	fd = bpf_obj_get(path);
	if (fd >= 0) {
		if (!bpf_map_lookup_elem(fd, &zero, &cfg) && cfg.layout_version)
			err = state_check_layout(&cfg);
		close(fd);
		if (err)
			return err;
	}
	state_pin_path(path, sizeof(path), "bgs_flows");
	fd = bpf_obj_get(path);
	if (fd < 0)
		return 0;
	if (!bpf_obj_get_info_by_fd(fd, &info, &len))
		*entries = info.max_entries;
	close(fd);
	return 0;
}

/* The kernel adds BPF_F_RDONLY_PROG to a devmap's flags when it creates it (bgs_tx_ports), so
 * the pinned map's flags differ from the object's and libbpf would refuse to reuse it ("parameter
 * mismatch"): take that one flag from the pinned map before loading.
 */
static void adopt_pinned_flags(struct bgswitch_bpf *skel)
{
	struct bpf_map_info info;
	char path[PATH_MAX];
	struct bpf_map *map;
	__u32 len;
	int fd;

	bpf_object__for_each_map(map, skel->obj) {
		if (state_pin_path(path, sizeof(path), bpf_map__name(map)))
			continue;
		fd = bpf_obj_get(path);
		if (fd < 0)
			continue;
		memset(&info, 0, sizeof(info));
		len = sizeof(info);
		if (!bpf_obj_get_info_by_fd(fd, &info, &len) &&
		    (info.map_flags ^ bpf_map__map_flags(map)) == BPF_F_RDONLY_PROG)
			bpf_map__set_map_flags(map, info.map_flags);
		close(fd);
	}
}

static int pin_prog(struct bpf_program *prog, const char *name)
{
	char rel[64], path[PATH_MAX];
	int err;

	snprintf(rel, sizeof(rel), "%s/%s", BGS_PROG_DIR, name);
	err = state_pin_path(path, sizeof(path), rel);
	if (err)
		return err;
	unlink(path);
	err = bpf_program__pin(prog, path);
	if (err)
		pr_warn("cannot pin %s: %s\n", path, strerror(-err));
	return err;
}

static int config_init(struct bgswitch_bpf *skel, __u32 flows)
{
	int fd = bpf_map__fd(skel->maps.bgs_config);
	struct bgs_config cfg = { 0 };
	__u32 zero = 0;

	if (!bpf_map_lookup_elem(fd, &zero, &cfg) && cfg.layout_version)
		return 0;
	cfg.layout_version = BGS_LAYOUT_VERSION;
	cfg.flow_entries = flows;
	cfg.tcp_idle_ns = BGS_TCP_IDLE_SEC * 1000000000ULL;
	cfg.udp_idle_ns = BGS_UDP_IDLE_SEC * 1000000000ULL;
	cfg.closing_ns = BGS_CLOSING_SEC * 1000000000ULL;
	config_set_limits(&cfg, flows / BGS_NEW_FLOW_TURNOVER, flows / BGS_NEW_FLOW_BURST_DIV);
	if (bpf_map_update_elem(fd, &zero, &cfg, BPF_ANY)) {
		pr_warn("cannot write bgs_config: %s\n", strerror(errno));
		return -errno;
	}
	return 0;
}

static const char *want_mode_name(enum attach_mode mode)
{
	return mode == MODE_NATIVE ? "native" : mode == MODE_GENERIC ? "generic" : "auto";
}

/* Why the kernel refused, in its own words when it gave some ("veth: Peer MTU is too large to
 * set XDP"), else the errno's.
 */
static const char *attach_why(int err)
{
	return *bgs_log_kernel_msg() ? bgs_log_kernel_msg() : strerror(-err);
}

/* A mode change: the kernel holds one XDP mode at a time ("Native and generic XDP can't be active
 * at the same time"), so the old mode's program goes first and the new one follows; if the new
 * mode fails, the old program goes back. Detached with REPLACE: only the program we saw.
 */
static int change_xdp_mode(int ifindex, const char *ifname, int prog_fd, enum attach_mode mode,
			   const struct iface_view *v, int old_fd)
{
	LIBBPF_OPTS(bpf_xdp_attach_opts, opts, .old_prog_fd = old_fd);
	__u32 old_flags = attached_flags(v->xdp_mode);
	int err, err2;

	err = bpf_xdp_detach(ifindex, old_flags | XDP_FLAGS_REPLACE, &opts);
	if (err) {
		pr_warn("cannot detach the %s-mode program from %s: %s\n",
			xdp_mode_name(v->xdp_mode), ifname, attach_why(err));
		return err;
	}
	bgs_log_kernel_msg_clear();
	err = bpf_xdp_attach(ifindex, prog_fd, mode_flags(mode) | XDP_FLAGS_UPDATE_IF_NOEXIST,
			     NULL);
	if (!err)
		return 0;
	err2 = bpf_xdp_attach(ifindex, old_fd, old_flags | XDP_FLAGS_UPDATE_IF_NOEXIST, NULL);
	if (err2)
		pr_warn("cannot attach XDP to %s in %s mode: %s; and the %s-mode program (id %u) "
			"could not be put back (%s): %s has no XDP program\n",
			ifname, want_mode_name(mode), attach_why(err), xdp_mode_name(v->xdp_mode),
			v->xdp_id, strerror(-err2), ifname);
	else
		pr_warn("cannot attach XDP to %s in %s mode: %s; the %s-mode program (id %u) is "
			"attached again\n",
			ifname, want_mode_name(mode), attach_why(err), xdp_mode_name(v->xdp_mode),
			v->xdp_id);
	return err;
}

/* Put prog_fd on the interface: in one step where a program runs in the same mode (REPLACE
 * against the one we saw, old_fd: no packet meets neither), else as a mode change.
 */
static int attach_xdp(int ifindex, const char *ifname, int prog_fd, enum attach_mode mode,
		      const struct iface_view *v, int old_fd)
{
	LIBBPF_OPTS(bpf_xdp_attach_opts, opts);
	__u32 flags = mode_flags(mode);
	int err;

	bgs_log_kernel_msg_clear();
	if (v->xdp_id && flags && flags != attached_flags(v->xdp_mode))
		return change_xdp_mode(ifindex, ifname, prog_fd, mode, v, old_fd);
	if (v->xdp_id) {
		opts.old_prog_fd = old_fd;
		flags = attached_flags(v->xdp_mode) | XDP_FLAGS_REPLACE;
	} else {
		flags |= XDP_FLAGS_UPDATE_IF_NOEXIST;
	}
	err = bpf_xdp_attach(ifindex, prog_fd, flags, &opts);
	if (err)
		pr_warn("cannot attach XDP to %s in %s mode: %s\n", ifname, want_mode_name(mode),
			attach_why(err));
	return err;
}

static int attach_tc(int ifindex, const char *ifname, int prog_fd)
{
	DECLARE_LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex, .attach_point = BPF_TC_EGRESS);
	DECLARE_LIBBPF_OPTS(bpf_tc_opts, opts, .handle = BGS_TC_HANDLE, .priority = BGS_TC_PRIORITY,
			    .prog_fd = prog_fd, .flags = BPF_TC_F_REPLACE);
	int err;

	/* libbpf 1.1 has no tcx: a clsact qdisc with a direct-action cls_bpf filter. */
	err = bpf_tc_hook_create(&hook);
	if (err && err != -EEXIST) {
		pr_warn("cannot create the clsact qdisc on %s: %s\n", ifname, strerror(-err));
		return err;
	}
	err = bpf_tc_attach(&hook, &opts);
	if (err)
		pr_warn("cannot attach the TC egress program to %s: %s\n", ifname, strerror(-err));
	return err;
}

static void detach_tc(int ifindex)
{
	DECLARE_LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex, .attach_point = BPF_TC_EGRESS);
	DECLARE_LIBBPF_OPTS(bpf_tc_opts, opts, .handle = BGS_TC_HANDLE,
			    .priority = BGS_TC_PRIORITY);

	bpf_tc_detach(&hook, &opts);
}

/* The interfaces of --xdp-egress IF[,IF...], checked before anything changes. */
struct tx_ports {
	__u32 ifindex[BGS_MAX_IFACES];
	__u32 n;
};

static int parse_tx_ports(const char *list, struct tx_ports *tp)
{
	char buf[BGS_MAX_IFACES * (IF_NAMESIZE + 1)], *tok, *rest;

	tp->n = 0;
	if (!*list)
		return 0; /* "": no interface, the registered list is emptied */
	if (snprintf(buf, sizeof(buf), "%s", list) >= (int)sizeof(buf)) {
		pr_warn("--xdp-egress: too many interfaces\n");
		return -E2BIG;
	}
	/* strsep, not strtok: ",,," or "a,,b" names an empty interface, refused. */
	for (rest = buf; (tok = strsep(&rest, ","));) {
		if (!*tok) {
			pr_warn("--xdp-egress '%s' has an empty interface name\n", list);
			return -EINVAL;
		}
		if (tp->n == BGS_MAX_IFACES) {
			pr_warn("--xdp-egress: at most %d interfaces\n", BGS_MAX_IFACES);
			return -E2BIG;
		}
		tp->ifindex[tp->n] = if_nametoindex(tok);
		if (!tp->ifindex[tp->n]) {
			pr_warn("--xdp-egress: no interface '%s'\n", tok);
			return -ENODEV;
		}
		tp->n++;
	}
	return 0;
}

/* Make the fast path's redirect targets exactly the interfaces of tp. */
static int set_tx_ports(int fd, const struct tx_ports *tp)
{
	__u32 key, next, i;
	bool keep;
	int err;

	for (err = bpf_map_get_next_key(fd, NULL, &key); !err; key = next) {
		err = bpf_map_get_next_key(fd, &key, &next);
		for (keep = false, i = 0; i < tp->n && !keep; i++)
			keep = tp->ifindex[i] == key;
		if (!keep)
			bpf_map_delete_elem(fd, &key);
	}
	for (i = 0; i < tp->n; i++) {
		if (bpf_map_update_elem(fd, &tp->ifindex[i], &tp->ifindex[i], BPF_ANY)) {
			err = -errno;
			pr_warn("--xdp-egress: cannot register ifindex %u: %s\n", tp->ifindex[i],
				strerror(errno));
			return err;
		}
	}
	return 0;
}

static int purge_pins(void);

/* A change of XDP mode cannot be one step (see change_xdp_mode()): refused unless asked for. */
static int check_mode_change(const char *ifname, enum attach_mode mode, const struct iface_view *v,
			     bool replace, bool change_mode)
{
	const char *from = xdp_mode_name(v->xdp_mode), *to = want_mode_name(mode);

	if (!v->xdp_id || !mode_flags(mode) || mode_flags(mode) == attached_flags(v->xdp_mode))
		return 0;
	if (replace) {
		pr_warn("--replace keeps the XDP mode (%s); a change of mode cannot be atomic "
			"(--change-mode without --replace makes one)\n",
			from);
		return -EINVAL;
	}
	if (change_mode)
		return 0;
	pr_warn("%s runs XDP in %s mode: a change to %s mode cannot be atomic (the kernel runs "
		"one mode at a time, so connections can fail meanwhile); --change-mode makes it "
		"anyway, and puts %s back if %s fails\n",
		ifname, from, to, from, to);
	return -EBUSY;
}

/* The programs on the interface before this command: what a failure puts back. */
struct old_progs {
	int xdp_fd, tc_fd;
};

static int old_progs_get(const struct iface_view *v, struct old_progs *old)
{
	old->xdp_fd = v->xdp_id ? bpf_prog_get_fd_by_id(v->xdp_id) : -1;
	old->tc_fd = v->tc_id ? bpf_prog_get_fd_by_id(v->tc_id) : -1;
	if ((v->xdp_id && old->xdp_fd < 0) || (v->tc_id && old->tc_fd < 0)) {
		int err = -errno;

		pr_warn("cannot hold the programs attached now (XDP id %u, TC id %u): %s\n",
			v->xdp_id, v->tc_id, strerror(-err));
		return err;
	}
	return 0;
}

static void old_progs_put(struct old_progs *old)
{
	if (old->xdp_fd >= 0)
		close(old->xdp_fd);
	if (old->tc_fd >= 0)
		close(old->tc_fd);
}

static void repin(int fd, const char *name)
{
	char rel[64], path[PATH_MAX];

	snprintf(rel, sizeof(rel), "%s/%s", BGS_PROG_DIR, name);
	if (fd < 0 || state_pin_path(path, sizeof(path), rel))
		return;
	unlink(path);
	bpf_obj_pin(fd, path);
}

/* The XDP attach failed (or an earlier step): the old XDP program still runs (or none), so put
 * back the TC program and the pins as they were, and the interface is exactly as before.
 */
static void iface_restore(int ifindex, const char *ifname, const struct iface_view *v,
			  const struct old_progs *old, bool tc_done, bool pins_done)
{
	if (tc_done && v->tc_id)
		attach_tc(ifindex, ifname, old->tc_fd);
	else if (tc_done)
		detach_tc(ifindex);
	if (pins_done && v->xdp_ours)
		repin(old->xdp_fd, "bgs_ingress");
	if (pins_done && v->tc_ours)
		repin(old->tc_fd, "bgs_egress");
}

/* What attach's command line asks for. */
struct attach_args {
	int mode; /* enum attach_mode */
	__u32 flows; /* 0: the pinned table's size, or the default */
	bool force, replace, change_mode;
	struct tx_ports tx; /* --xdp-egress, when given */
};

static int parse_mode(const char *arg, void *dst)
{
	static const int modes[] = { MODE_AUTO, MODE_NATIVE, MODE_GENERIC };
	int i;

	for (i = 0; bgs_words_mode[i]; i++) {
		if (!strcmp(arg, bgs_words_mode[i])) {
			*(int *)dst = modes[i];
			return 0;
		}
	}
	pr_warn("unknown mode '%s' (auto, native or generic)\n", arg);
	return -EINVAL;
}

static int parse_tx_ports_opt(const char *arg, void *dst)
{
	return parse_tx_ports(arg, dst);
}

static const struct bgs_pos iface_pos[] = {
	{ .name = "IFACE", .complete = "iface" },
	BGS_POS_END,
};

static const struct bgs_opt attach_opts[] = {
	{ .name = "mode",
	  .short_name = 'm',
	  .type = BGS_OPT_FUNC,
	  .off = offsetof(struct attach_args, mode),
	  .help = "XDP mode: auto (default: native where the driver has it), native, or generic",
	  .values = bgs_words_mode,
	  .parse = parse_mode },
	{ .name = "flows",
	  .short_name = 'f',
	  .type = BGS_OPT_U32,
	  .off = offsetof(struct attach_args, flows),
	  .metavar = "N",
	  .help = "flow-table entries (default 1048576); fixed once the state exists",
	  .min = 1024,
	  .max = 1U << 28 },
	{ .name = "force",
	  .short_name = 'F',
	  .type = BGS_OPT_BOOL,
	  .off = offsetof(struct attach_args, force),
	  .help = "replace an XDP program or TC filter that is not this state's" },
	{ .name = "xdp-egress",
	  .short_name = 'e',
	  .type = BGS_OPT_FUNC,
	  .off = offsetof(struct attach_args, tx),
	  .metavar = "IF[,IF...]",
	  .help = "interfaces the fast path may XDP_REDIRECT to (each must take XDP frames: a "
		  "native driver, or a veth whose peer has GRO or XDP on); replaces the "
		  "registered list. Routes back out of IFACE always use XDP_TX; any other route "
		  "uses the stack",
	  .complete = "iface-list",
	  .parse = parse_tx_ports_opt },
	{ .name = "replace",
	  .short_name = 'R',
	  .type = BGS_OPT_BOOL,
	  .off = offsetof(struct attach_args, replace),
	  .help = "load this build's programs with the pinned maps and swap them in for the "
		  "attached ones atomically (an upgrade: no flow is dropped); IFACE must be "
		  "attached by this state" },
	{ .name = "change-mode",
	  .short_name = 'C',
	  .type = BGS_OPT_BOOL,
	  .off = offsetof(struct attach_args, change_mode),
	  .help = "allow a change of XDP mode on an attached IFACE: not atomic (the kernel runs "
		  "one mode at a time), so refused without it; if the new mode fails the old "
		  "program is attached again" },
	BGS_OPT_END,
};

_Static_assert(BGS_DEFAULT_FLOWS == 1048576, "attach's help text");

const struct bgs_cmd_spec bgs_spec_attach = {
	.name = "attach",
	.summary = "load the data plane and attach it to an interface",
	.description = "Load the data plane, pin its maps and programs under the pin root, and "
		       "attach XDP on IFACE's ingress and TC on its egress. Running it again "
		       "changes nothing.",
	.pos = iface_pos,
	.opts = attach_opts,
};

/* One attach: what it was asked, what it found, and what it has done so far (undone on error). */
struct attach_ctx {
	struct attach_args a;
	bool egress; /* --xdp-egress given */
	const char *ifname;
	int ifindex;
	bool created; /* the pin root did not exist */
	int lock_fd;
	struct iface_view v; /* before */
	struct old_progs old;
	struct bgswitch_bpf *skel;
	bool pins_done, tc_done, xdp_done;
};

static int attach_parse(struct attach_ctx *c, int argc, char **argv, bool *help)
{
	struct bgs_parsed p;
	int err;

	err = params_parse(&bgs_spec_attach, argc, argv, &c->a, &p);
	*help = p.help;
	if (err || p.help)
		return err;
	c->egress = params_seen(&bgs_spec_attach, &p, "xdp-egress");
	c->ifname = p.pos[0];
	c->ifindex = if_nametoindex(c->ifname);
	if (!c->ifindex) {
		pr_warn("no interface '%s'\n", c->ifname);
		return -ENODEV;
	}
	return 0;
}

/* The flow table's size: fixed once pinned. */
static int attach_flows(struct attach_ctx *c)
{
	__u32 pinned;
	int err;

	err = pinned_flow_entries(&pinned);
	if (err)
		return err;
	if (pinned && c->a.flows && c->a.flows != pinned) {
		pr_warn("the pinned flow table has %u entries, not %u; it keeps its flows, so its "
			"size is fixed ('detach --purge' to start over)\n",
			pinned, c->a.flows);
		return -EEXIST;
	}
	if (!c->a.flows)
		c->a.flows = pinned ? pinned : BGS_DEFAULT_FLOWS;
	return 0;
}

/* Programs on the interface that are not this state's are replaced only with --force. */
static int attach_check_foreign(const struct attach_ctx *c)
{
	const struct iface_view *v = &c->v;

	if (v->xdp_id && !v->xdp_ours && !c->a.force) {
		if (!strcmp(v->xdp_name, "bgs_ingress"))
			pr_warn("%s is attached by another bgswitch state (XDP program id %u); "
				"detach it with that state's --pin-root, or use --force\n",
				c->ifname, v->xdp_id);
		else
			pr_warn("%s already runs XDP program '%s' (id %u); refusing to replace it "
				"(--force replaces it)\n",
				c->ifname, v->xdp_name, v->xdp_id);
		return -EBUSY;
	}
	if (v->tc_id && !v->tc_ours && !c->a.force) {
		pr_warn("%s already has a TC egress filter with bgswitch's handle (program id %u); "
			"refusing to replace it (--force replaces it)\n",
			c->ifname, v->tc_id);
		return -EBUSY;
	}
	return 0;
}

/* The plan: lock the state, look at the interface, refuse what must be refused. Sets *done
 * when the interface is attached as asked already (nothing to load).
 */
static int attach_plan(struct attach_ctx *c, bool *done)
{
	const struct iface_view *v = &c->v;
	int err;

	*done = false;
	err = state_need_root();
	if (!err)
		err = state_prepare_fs(&c->created);
	if (!err)
		err = state_lock(&c->lock_fd);
	if (!err)
		err = attach_flows(c);
	if (!err)
		err = iface_inspect(c->ifindex, &c->v);
	if (!err)
		err = attach_check_foreign(c);
	if (!err)
		err = check_mode_change(c->ifname, c->a.mode, v, c->a.replace, c->a.change_mode);
	if (err)
		return err;
	if (c->a.replace) {
		/* An upgrade in place: both programs are swapped, never detached, so the mode
		 * stays and no packet meets an interface without its program.
		 */
		if (v->xdp_ours)
			return 0;
		pr_warn("--replace: %s is not attached by the state at %s (attach it first)\n",
			c->ifname, bgs_pin_root);
		return -ENOENT;
	}
	*done = v->xdp_ours && v->tc_ours && v->recorded && pins_complete() &&
		(!mode_flags(c->a.mode) || mode_flags(c->a.mode) == attached_flags(v->xdp_mode));
	return 0;
}

/* Attached as asked already: only --xdp-egress may change. */
static int attach_already(const struct attach_ctx *c)
{
	char path[PATH_MAX];
	int fd, err;

	if (c->egress) {
		state_pin_path(path, sizeof(path), "bgs_tx_ports");
		fd = bpf_obj_get(path);
		err = fd < 0 ? -errno : set_tx_ports(fd, &c->a.tx);
		if (fd >= 0)
			close(fd);
		if (err)
			return err;
	}
	pr_info("%s: already attached (%s XDP ingress, TC egress), state at %s\n", c->ifname,
		xdp_mode_name(c->v.xdp_mode), bgs_pin_root);
	return 0;
}

/* Load the data plane with the pinned maps and pin its programs. */
static int attach_load(struct attach_ctx *c)
{
	LIBBPF_OPTS(bpf_object_open_opts, open_opts, .pin_root_path = bgs_pin_root);
	int err;

	err = old_progs_get(&c->v, &c->old);
	if (err)
		return err;
	c->skel = bgswitch_bpf__open_opts(&open_opts);
	if (!c->skel) {
		err = -errno;
		pr_warn("cannot open the BPF object: %s\n", strerror(errno));
		return err;
	}
	bpf_map__set_max_entries(c->skel->maps.bgs_flows, c->a.flows);
	adopt_pinned_flags(c->skel);
	err = bgswitch_bpf__load(c->skel);
	if (err) {
		pr_warn("cannot load the data plane: %s (run with -v for the verifier's log)\n",
			strerror(-err));
		return err;
	}
	err = config_init(c->skel, c->a.flows);
	if (err)
		return err;
	fault_point("attach-after-load");
	c->pins_done = true;
	err = pin_prog(c->skel->progs.bgs_ingress, "bgs_ingress");
	if (!err)
		err = pin_prog(c->skel->progs.bgs_egress, "bgs_egress");
	if (!err)
		err = local_progs_install(c->skel->obj);
	if (!err)
		fault_point("attach-after-pin");
	return err;
}

/* Record what runs on the interface now, and say so. */
static int attach_record(const struct attach_ctx *c)
{
	struct bgs_iface rec = { 0 };
	struct iface_view after;
	__u32 key = c->ifindex;
	int err;

	err = iface_inspect(c->ifindex, &after);
	if (err)
		return err;
	snprintf(rec.name, sizeof(rec.name), "%s", c->ifname);
	rec.xdp_prog_id = after.xdp_id;
	rec.tc_prog_id = after.tc_id;
	rec.xdp_flags = attached_flags(after.xdp_mode);
	if (bpf_map_update_elem(bpf_map__fd(c->skel->maps.bgs_ifaces), &key, &rec, BPF_ANY)) {
		err = -errno;
		pr_warn("cannot record the attachment: %s\n", strerror(errno));
		return err;
	}
	if (c->a.replace)
		pr_info("%s: programs replaced (XDP id %u -> %u, TC id %u -> %u), pinned maps "
			"reused, state at %s\n",
			c->ifname, c->v.xdp_id, after.xdp_id, c->v.tc_id, after.tc_id,
			bgs_pin_root);
	else
		pr_info("%s: attached (%s XDP ingress, TC egress), flow table %u entries, state at "
			"%s\n",
			c->ifname, xdp_mode_name(after.xdp_mode), c->a.flows, bgs_pin_root);
	return 0;
}

/* The apply: TC, then XDP, then the redirect targets, then the record. */
static int attach_apply(struct attach_ctx *c)
{
	int err;

	/* TC first: on its own it only rewrites replies of flows XDP recorded, so whatever stops
	 * this command half way never leaves an interface translating one way only.
	 */
	err = attach_tc(c->ifindex, c->ifname, bpf_program__fd(c->skel->progs.bgs_egress));
	if (err)
		return err;
	c->tc_done = true;
	fault_point("attach-after-tc");
	err = attach_xdp(c->ifindex, c->ifname, bpf_program__fd(c->skel->progs.bgs_ingress),
			 c->a.mode, &c->v, c->old.xdp_fd);
	if (err)
		return err;
	c->xdp_done = true;
	/* After the attach: one that fails leaves the registered list as it was. */
	if (c->egress) {
		err = set_tx_ports(bpf_map__fd(c->skel->maps.bgs_tx_ports), &c->a.tx);
		if (err)
			return err;
	}
	fault_point("attach-before-record");
	return attach_record(c);
}

/* Leave the interface as it was on an error (a half attachment would translate one way only),
 * and release what the attach held.
 */
static void attach_finish(struct attach_ctx *c, int err)
{
	if (err && c->xdp_done && !c->v.xdp_id)
		bpf_xdp_detach(c->ifindex, mode_flags(c->a.mode), NULL);
	if (err && !c->xdp_done)
		iface_restore(c->ifindex, c->ifname, &c->v, &c->old, c->tc_done,
			      c->pins_done && !c->created);
	else if (err && c->tc_done && !c->v.tc_id)
		detach_tc(c->ifindex);
	old_progs_put(&c->old);
	bgswitch_bpf__destroy(c->skel);
	/* A failed first attach leaves no state behind: half a state is worse than none. */
	if (err && c->created)
		purge_pins();
	if (c->lock_fd >= 0)
		close(c->lock_fd);
}

int do_attach(int argc, char **argv)
{
	struct attach_ctx c = { .lock_fd = -1, .old = { -1, -1 } };
	bool help, done;
	int err;

	err = attach_parse(&c, argc, argv, &help);
	if (err || help)
		return err;
	err = attach_plan(&c, &done);
	if (!err && done)
		err = attach_already(&c);
	else if (!err)
		err = attach_load(&c);
	if (!err && !done)
		err = attach_apply(&c);
	attach_finish(&c, err);
	return err;
}

struct detach_args {
	bool purge;
};

static const struct bgs_opt detach_opts[] = {
	{ .name = "purge",
	  .short_name = 'p',
	  .type = BGS_OPT_BOOL,
	  .off = offsetof(struct detach_args, purge),
	  .help = "also remove the pinned state (refused while another interface is still "
		  "attached)" },
	BGS_OPT_END,
};

const struct bgs_cmd_spec bgs_spec_detach = {
	.name = "detach",
	.summary = "remove the data plane from an interface",
	.description = "Remove the XDP and TC programs from IFACE. Services, backends and flows "
		       "stay pinned, so a later attach carries on where this one stopped.",
	.pos = iface_pos,
	.opts = detach_opts,
};

static int purge_pins(void)
{
	char path[PATH_MAX];
	int i, err = 0;

	local_purge();
	for (i = 0; i < BGS_M_COUNT; i++) {
		state_pin_path(path, sizeof(path), bgs_map_names[i]);
		if (unlink(path) && errno != ENOENT)
			err = -errno;
	}
	state_pin_path(path, sizeof(path), BGS_INDEX_NAME);
	unlink(path);
	state_pin_path(path, sizeof(path), BGS_PROG_DIR "/bgs_ingress");
	unlink(path);
	state_pin_path(path, sizeof(path), BGS_PROG_DIR "/bgs_egress");
	unlink(path);
	state_pin_path(path, sizeof(path), BGS_PROG_DIR);
	rmdir(path);
	if (rmdir(bgs_pin_root) && errno != ENOENT)
		err = -errno;
	if (err)
		pr_warn("could not remove all of %s: %s\n", bgs_pin_root, strerror(-err));
	return err;
}

/* A purge is refused while the state is attached to another interface: checked first, so that
 * a refused purge changes nothing.
 */
static int detach_purge_check(struct bgs_state *st, int ifindex)
{
	struct bgs_iface rec;
	__u32 key, next;
	int err;

	for (err = bpf_map_get_next_key(st->fd[BGS_M_IFACES], NULL, &key); !err;
	     err = bpf_map_get_next_key(st->fd[BGS_M_IFACES], &key, &next), key = next) {
		if ((int)key != ifindex && !bpf_map_lookup_elem(st->fd[BGS_M_IFACES], &key, &rec)) {
			pr_warn("cannot purge: the state is still attached to %s; detach it first\n",
				rec.name);
			return -EBUSY;
		}
	}
	return 0;
}

/* Take this state's programs off the interface and forget it. Sets *had when there was any. */
static int detach_iface(struct bgs_state *st, int ifindex, const char *ifname, bool *had)
{
	struct iface_view v;
	__u32 ifkey = ifindex;
	int err;

	*had = false;
	err = iface_inspect(ifindex, &v);
	if (err)
		return err;
	if (v.xdp_id && v.xdp_ours) {
		err = bpf_xdp_detach(ifindex, attached_flags(v.xdp_mode), NULL);
		if (err) {
			pr_warn("cannot detach XDP from %s: %s\n", ifname, strerror(-err));
			return err;
		}
		*had = true;
	}
	if (v.tc_id && v.tc_ours) {
		detach_tc(ifindex);
		*had = true;
	}
	if (!bpf_map_delete_elem(st->fd[BGS_M_IFACES], &ifkey))
		*had = true;
	return 0;
}

int do_detach(int argc, char **argv)
{
	struct detach_args a = { 0 };
	struct bgs_parsed p;
	struct bgs_state st;
	const char *ifname;
	int ifindex, err;
	bool had;

	err = params_parse(&bgs_spec_detach, argc, argv, &a, &p);
	if (err || p.help)
		return err;
	ifname = p.pos[0];
	ifindex = if_nametoindex(ifname);
	if (!ifindex) {
		pr_warn("no interface '%s'\n", ifname);
		return -ENODEV;
	}
	err = state_need_root();
	if (!err)
		err = state_open(&st, true);
	if (err)
		return err;
	err = a.purge ? detach_purge_check(&st, ifindex) : 0;
	if (!err)
		err = detach_iface(&st, ifindex, ifname, &had);
	if (err)
		goto out;
	if (had)
		pr_info("%s: detached\n", ifname);
	if (!had && !a.purge) {
		pr_warn("%s is not attached\n", ifname);
		err = -ENOENT;
	}
	if (err || !a.purge)
		goto out;
	state_close(&st);
	err = purge_pins();
	if (!err)
		pr_info("removed the pinned state at %s\n", bgs_pin_root);
	return err;
out:
	state_close(&st);
	return err;
}
