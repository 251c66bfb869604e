// SPDX-License-Identifier: GPL-2.0
/* service.c: `service` and `backend`: defining services and their backends. */
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <bpf/bpf.h>

#include "audit.h"
#include "commands.h"
#include "fleet.h"
#include "log.h"
#include "maglev.h"
#include "state.h"
#include "util.h"

/* Commands that take only --help share this parser. Returns 1 after printing help. */
static int parse_help_only(int argc, char **argv, void (*usage)(void))
{
	static const struct option opts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int c;

	while ((c = getopt_cmd(argc, argv, "h", opts)) != -1) {
		if (c == 'h') {
			usage();
			return 1;
		}
		return -EINVAL;
	}
	return 0;
}

/* ---- service ---- */

static void service_usage(void)
{
	printf("Usage: bgswitch service add NAME VIP:PORT [--proto tcp|udp] [--lb maglev|modulo]\n"
	       "                           [--table-size M] [--split-by flow|client] [--reason TEXT]\n"
	       "       bgswitch service set NAME [--table-size M] [--split-by flow|client]\n"
	       "                           [--reason TEXT]\n"
	       "       bgswitch service del NAME [--force] [--reason TEXT]\n"
	       "       bgswitch service list\n"
	       "\n"
	       "A service is what clients address: a VIP, a port and a protocol. It starts on\n"
	       "blue with no backends; add them with 'bgswitch backend add'. New flows of a color\n"
	       "are spread over its backends by a Maglev lookup table of M positions (a prime;\n"
	       "more than 100 per backend keeps each within 1%% of its share), rebuilt and\n"
	       "swapped in with one write whenever the color's backends change. Changes are\n"
	       "written to the audit trail.\n"
	       "\n"
	       "  -p, --proto P        tcp (default) or udp\n"
	       "  -l, --lb maglev|modulo  Maglev tables (default), or flow hash modulo the\n"
	       "                       number of backends (no table, no weights)\n"
	       "  -M, --table-size M   Maglev table size, a prime from 251 to %d (default %d)\n"
	       "  -s, --split-by K     what a split between colors (shift) goes by: the hash of\n"
	       "                       each flow (default), or of the client's address alone,\n"
	       "                       so that all of one client's connections share a color\n"
	       "  -f, --force          delete even though flows are live, cutting them\n"
	       "  -m, --reason TEXT    why, for the audit trail\n"
	       "  -h, --help           this help\n",
	       BGS_TABLE_MAX, BGS_TABLE_SIZE);
}

static int service_add(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "proto", required_argument, NULL, 'p' },
		{ "lb", required_argument, NULL, 'l' },
		{ "table-size", required_argument, NULL, 'M' },
		{ "split-by", required_argument, NULL, 's' },
		{ "reason", required_argument, NULL, 'm' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct bgs_service rec, other;
	struct bgs_vip_addr va = { 0 };
	struct bgs_endpoint ep;
	struct bgs_switch sw = { .generation = 1, .share = 0 };
	struct bgs_set empty = { 0 };
	struct bgs_state st = { .lock_fd = -1 };
	struct bgs_audit au = { .fd = -1 };
	const char *reason = NULL;
	__u8 proto = IPPROTO_TCP;
	struct bgs_vip vip;
	__u32 svc, i, found = BGS_MAX_SERVICES, table_size = BGS_TABLE_SIZE, vflags = 0;
	char ebuf[BGS_ADDRSTR_LEN];
	bool opened = false, sized = false;
	__u8 lb = BGS_LB_MAGLEV;
	int c, err;

	while ((c = getopt_cmd(argc, argv, "p:l:M:s:m:h", opts)) != -1) {
		switch (c) {
		case 'p':
			if (parse_proto(optarg, &proto))
				return -EINVAL;
			break;
		case 'l':
			if (parse_lb(optarg, &lb))
				return -EINVAL;
			break;
		case 'M':
			if (parse_table_size(optarg, &table_size))
				return -EINVAL;
			sized = true;
			break;
		case 's':
			if (parse_split_by(optarg, &vflags))
				return -EINVAL;
			break;
		case 'm':
			if (audit_check_reason(optarg))
				return -EINVAL;
			reason = optarg;
			break;
		case 'h':
			service_usage();
			return 0;
		default:
			return -EINVAL;
		}
	}
	if (argc - optind != 2)
		return bad_args("service");
	if (check_name(argv[optind]) || parse_endpoint(argv[optind + 1], &ep))
		return -EINVAL;
	if (sized && lb == BGS_LB_MODULO) {
		pr_warn("--table-size: a service with --lb modulo has no table\n");
		return -EINVAL;
	}
	if (check_vip_addr(argv[optind + 1], &ep))
		return -EINVAL;
	err = state_need_root();
	if (err)
		return err;
	err = audit_open(&au, "service-add", reason);
	if (err)
		return err;
	err = state_open(&st, true);
	if (err)
		goto out;
	opened = true;
	err = state_repair(&st);
	if (err)
		goto out;

	memset(&rec, 0, sizeof(rec));
	snprintf(rec.name, sizeof(rec.name), "%s", argv[optind]);
	memcpy(rec.vip.addr, ep.addr, sizeof(ep.addr));
	rec.vip.port = ep.port;
	rec.vip.proto = proto;
	rec.vip.family = ep.family;
	rec.lb = lb;
	rec.table_size = lb == BGS_LB_MAGLEV ? table_size : 0;
	rec.vip_flags = vflags;
	snprintf(au.service, sizeof(au.service), "%s", rec.name);
	snprintf(au.to, sizeof(au.to), "%s/%s",
		 fmt_endpoint(ep.addr, ep.port, ep.family, ebuf, sizeof(ebuf)), proto_name(proto));
	au.gen_after = sw.generation;

	for (i = 0; i < BGS_MAX_SERVICES; i++) {
		if (!service_get(&st, i, &other)) {
			if (found == BGS_MAX_SERVICES)
				found = i;
			continue;
		}
		if (!strncmp(other.name, rec.name, BGS_NAME_LEN)) {
			pr_warn("service '%s' already exists\n", rec.name);
			err = -EEXIST;
			goto out;
		}
	}
	if (!bpf_map_lookup_elem(st.fd[BGS_M_VIPS], &rec.vip, &vip) &&
	    service_get(&st, vip.svc, &other)) {
		pr_warn("%s/%s already belongs to service '%s'\n",
			fmt_endpoint(ep.addr, ep.port, ep.family, ebuf, sizeof(ebuf)),
			proto_name(proto), other.name);
		err = -EEXIST;
		goto out;
	}
	if (found == BGS_MAX_SERVICES) {
		pr_warn("no room for another service (the build allows %d)\n", BGS_MAX_SERVICES);
		err = -ENOSPC;
		goto out;
	}
	svc = found;
	err = slots_forget(&st, svc);
	if (err)
		goto out;

	/* Everything the data plane will read first, the VIP entry that makes it visible last:
	 * killed before that, the service is an invisible record that the next command collects.
	 */
	for (i = 0; i < 4; i++) {
		__u32 idx = (svc << 2) | i;

		if (bpf_map_update_elem(st.fd[BGS_M_SETS], &idx, &empty, BPF_ANY))
			goto map_err;
	}
	err = tables_clear(&st, svc); /* an empty color needs none: it has no backend */
	if (err)
		goto out;
	switch_write(&st, svc, sw);
	err = percpu_zero(&st, BGS_M_SERVICE_STATS, svc, sizeof(struct bgs_service_stats));
	if (err)
		goto out;
	if (bpf_map_update_elem(st.fd[BGS_M_SERVICES], &svc, &rec, BPF_ANY))
		goto map_err;
	memcpy(va.addr, rec.vip.addr, sizeof(va.addr));
	va.family = rec.vip.family;
	err = refcount_add(&st, BGS_M_VIP_ADDRS, &va, 1);
	if (!err)
		err = vip_filter_add(&st, rec.vip.addr);
	if (err)
		goto out;
	fault_point("service-add-before-vip");
	vip.svc = svc;
	vip.flags = vflags;
	if (bpf_map_update_elem(st.fd[BGS_M_VIPS], &rec.vip, &vip, BPF_ANY)) {
		refcount_add(&st, BGS_M_VIP_ADDRS, &va, -1);
		goto map_err;
	}
	svc_index_set(&st, rec.name, svc); /* the next command finds it without a scan */
	if (lb == BGS_LB_MAGLEV)
		pr_info("service %s: %s/%s, active blue, maglev %u, generation 1\n", rec.name,
			fmt_endpoint(ep.addr, ep.port, ep.family, ebuf, sizeof(ebuf)),
			proto_name(proto), table_size);
	else
		pr_info("service %s: %s/%s, active blue, lb modulo, generation 1\n", rec.name,
			fmt_endpoint(ep.addr, ep.port, ep.family, ebuf, sizeof(ebuf)),
			proto_name(proto));
	err = 0;
	goto out;
map_err:
	err = -errno;
	pr_warn("cannot write the service: %s\n", strerror(errno));
out:
	audit_record(&au, err);
	audit_close(&au);
	if (opened)
		state_close(&st);
	return err;
}

/* A service of that name, visible or not: an invisible one is a `service add` or `service
 * del` that was killed half way.
 */
static bool service_record_named(const struct bgs_state *st, const char *name)
{
	struct bgs_service rec;
	__u32 i;

	for (i = 0; i < BGS_MAX_SERVICES; i++)
		if (!bpf_map_lookup_elem(st->fd[BGS_M_SERVICES], &i, &rec) && rec.name[0] &&
		    !strncmp(rec.name, name, BGS_NAME_LEN))
			return true;
	return false;
}

/* service_find() without its warning. */
static bool service_visible(const struct bgs_state *st, const char *name, __u32 *svc,
			    struct bgs_service *rec)
{
	__u32 i;

	for (i = 0; i < BGS_MAX_SERVICES; i++) {
		if (service_get(st, i, rec) && !strncmp(rec->name, name, BGS_NAME_LEN)) {
			*svc = i;
			return true;
		}
	}
	return false;
}

static int service_del(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "force", no_argument, NULL, 'f' },
		{ "reason", required_argument, NULL, 'm' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct bgs_flow_census *census = NULL;
	struct bgs_service rec, blank = { 0 };
	struct bgs_vip_addr va = { 0 };
	struct bgs_switch zero_sw = { 0 };
	struct bgs_state st = { .lock_fd = -1 };
	struct bgs_audit au = { .fd = -1 };
	const char *reason = NULL;
	char ebuf[BGS_ADDRSTR_LEN];
	struct bgs_backend be;
	__u64 live = 0;
	bool force = false, opened = false;
	__u32 svc, slot;
	int c, err;

	while ((c = getopt_cmd(argc, argv, "fm:h", opts)) != -1) {
		switch (c) {
		case 'f':
			force = true;
			break;
		case 'm':
			if (audit_check_reason(optarg))
				return -EINVAL;
			reason = optarg;
			break;
		case 'h':
			service_usage();
			return 0;
		default:
			return -EINVAL;
		}
	}
	if (argc - optind != 1)
		return bad_args("service");
	err = state_need_root();
	if (err)
		return err;
	err = audit_open(&au, "service-del", reason);
	if (err)
		return err;
	err = state_open(&st, true);
	if (err)
		goto out;
	opened = true;
	snprintf(au.service, sizeof(au.service), "%.*s", BGS_NAME_LEN - 1, argv[optind]);
	if (!service_record_named(&st, argv[optind])) {
		pr_warn("unknown service '%s'\n", argv[optind]);
		err = -ENOENT;
		au.service[0] = '\0'; /* not a change: not for the trail */
		goto out;
	}
	if (!service_visible(&st, argv[optind], &svc, &rec)) {
		/* Only an unfinished record: the repair finishes the delete. */
		err = state_repair(&st);
		if (!err)
			pr_info("service %s deleted (an interrupted delete finished)\n",
				argv[optind]);
		snprintf(au.detail, sizeof(au.detail), "finished an interrupted delete");
		goto out;
	}
	err = state_repair(&st);
	if (err)
		goto out;
	au.gen_before = switch_read(&st, svc).generation;
	snprintf(au.from, sizeof(au.from), "%s/%s",
		 fmt_endpoint(rec.vip.addr, rec.vip.port, rec.vip.family, ebuf, sizeof(ebuf)),
		 proto_name(rec.vip.proto));
	census = malloc(sizeof(*census));
	if (!census) {
		err = -ENOMEM;
		goto out;
	}
	err = flows_census(&st, census);
	if (err)
		goto out;
	for (slot = 0; slot < BGS_MAX_SLOTS; slot++)
		if (!bpf_map_lookup_elem(st.fd[BGS_M_BACKENDS], &slot, &be) &&
		    be.state != BGS_BACKEND_FREE && be.svc == svc)
			live += census->live[slot];
	if (live && !force) {
		pr_warn("service '%s' has %llu live flows; --force deletes it and cuts them\n",
			rec.name, (unsigned long long)live);
		err = -EBUSY;
		goto out;
	}

	/* The VIP entry goes first: from then on the data plane no longer sees the service, and
	 * a command killed after this point leaves an invisible record that repair collects.
	 */
	if (bpf_map_delete_elem(st.fd[BGS_M_VIPS], &rec.vip)) {
		err = -errno;
		pr_warn("cannot delete the VIP entry: %s\n", strerror(errno));
		goto out;
	}
	fault_point("service-del-after-vip");
	memcpy(va.addr, rec.vip.addr, sizeof(va.addr));
	va.family = rec.vip.family;
	refcount_add(&st, BGS_M_VIP_ADDRS, &va, -1);
	for (slot = 0; slot < BGS_MAX_SLOTS; slot++) {
		if (bpf_map_lookup_elem(st.fd[BGS_M_BACKENDS], &slot, &be) ||
		    be.state == BGS_BACKEND_FREE || be.svc != svc)
			continue;
		err = slot_release(&st, slot);
		if (err)
			goto out;
	}
	err = tables_clear(&st, svc);
	if (err)
		goto out;
	switch_write(&st, svc, zero_sw);
	fault_point("service-del-before-record");
	bpf_map_update_elem(st.fd[BGS_M_SERVICES], &svc, &blank, BPF_ANY);
	if (live) {
		snprintf(au.detail, sizeof(au.detail), "%llu live flows cut",
			 (unsigned long long)live);
		pr_info("service %s deleted; %llu live flows cut\n", rec.name,
			(unsigned long long)live);
	} else {
		pr_info("service %s deleted\n", rec.name);
	}
out:
	audit_record(&au, err);
	audit_close(&au);
	free(census);
	if (opened)
		state_close(&st);
	return err;
}

static int service_list(int argc, char **argv)
{
	struct bgs_service rec;
	struct bgs_set set;
	struct bgs_state st;
	char ebuf[BGS_ADDRSTR_LEN];
	int err, n = 0;
	__u32 svc;

	err = parse_help_only(argc, argv, service_usage);
	if (err)
		return err < 0 ? err : 0;
	if (argc - optind != 0)
		return bad_args("service");
	err = state_open(&st, false);
	if (err)
		return err;
	for (svc = 0; svc < BGS_MAX_SERVICES; svc++) {
		struct bgs_switch sw;
		__u32 blue, green;

		if (!service_get(&st, svc, &rec))
			continue;
		if (!n++)
			printf("%-20s %-24s %-5s %-6s %10s %5s %5s\n", "NAME", "VIP", "PROTO",
			       "ACTIVE", "GENERATION", "BLUE", "GREEN");
		sw = switch_read(&st, svc);
		blue = set_read(&st, svc, BGS_BLUE, &set) ? 0 : set.count;
		green = set_read(&st, svc, BGS_GREEN, &set) ? 0 : set.count;
		printf("%-20s %-24s %-5s %-6s %10u %5u %5u\n", rec.name,
		       fmt_endpoint(rec.vip.addr, rec.vip.port, rec.vip.family, ebuf, sizeof(ebuf)),
		       proto_name(rec.vip.proto), share_label(sw.share), sw.generation, blue,
		       green);
	}
	if (!n)
		printf("no services\n");
	state_close(&st);
	return 0;
}

/* Change what a split goes by: the record, then the VIP entry (one write the data plane sees). */
static int service_set_split(struct bgs_state *st, __u32 svc, struct bgs_service *rec, __u32 vflags)
{
	struct bgs_vip vip = { .svc = svc, .flags = vflags };
	__u32 old;
	int err;

	if (rec->vip_flags == vflags) {
		pr_info("%s: already split by %s\n", rec->name,
			vflags & BGS_VIP_SPLIT_CLIENT ? "client" : "flow");
		return 0;
	}
	/* The VIP entry (what the data plane reads) first, then the record; a record that cannot
	 * be written puts the entry back.
	 */
	if (bpf_map_update_elem(st->fd[BGS_M_VIPS], &rec->vip, &vip, BPF_EXIST))
		goto err;
	old = rec->vip_flags;
	rec->vip_flags = vflags;
	if (bpf_map_update_elem(st->fd[BGS_M_SERVICES], &svc, rec, BPF_ANY)) {
		err = -errno;
		vip.flags = rec->vip_flags = old;
		bpf_map_update_elem(st->fd[BGS_M_VIPS], &rec->vip, &vip, BPF_EXIST);
		errno = -err;
		goto err;
	}
	pr_info("%s: split by %s\n", rec->name, vflags & BGS_VIP_SPLIT_CLIENT ? "client" : "flow");
	return 0;
err:
	err = -errno;
	pr_warn("cannot write the service: %s\n", strerror(errno));
	return err;
}

static int service_set(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "table-size", required_argument, NULL, 'M' },
		{ "split-by", required_argument, NULL, 's' },
		{ "reason", required_argument, NULL, 'm' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	const char *split_by = NULL;
	struct bgs_state st = { .lock_fd = -1 };
	struct bgs_audit au = { .fd = -1 };
	struct bgs_set sets[BGS_NCOLORS];
	const char *reason = NULL;
	struct bgs_service rec;
	__u32 svc, m = 0, vflags = 0;
	bool opened = false;
	int c, err;

	while ((c = getopt_cmd(argc, argv, "M:s:m:h", opts)) != -1) {
		switch (c) {
		case 'M':
			if (parse_table_size(optarg, &m))
				return -EINVAL;
			break;
		case 's':
			if (parse_split_by(optarg, &vflags))
				return -EINVAL;
			split_by = optarg;
			break;
		case 'm':
			if (audit_check_reason(optarg))
				return -EINVAL;
			reason = optarg;
			break;
		case 'h':
			service_usage();
			return 0;
		default:
			return -EINVAL;
		}
	}
	if (argc - optind != 1)
		return bad_args("service");
	if (!m && !split_by) {
		pr_warn("service set: nothing to set (--table-size M, --split-by K)\n");
		return -EINVAL;
	}
	err = state_need_root();
	if (err)
		return err;
	err = audit_open(&au, "service-set", reason);
	if (err)
		return err;
	err = state_open(&st, true);
	if (err)
		goto out;
	opened = true;
	err = service_find(&st, argv[optind], &svc, &rec);
	if (err)
		goto out;
	snprintf(au.service, sizeof(au.service), "%s", rec.name);
	au.gen_before = au.gen_after = switch_read(&st, svc).generation;
	snprintf(au.from, sizeof(au.from), "table-size %u, split-by %s", rec.table_size,
		 rec.vip_flags & BGS_VIP_SPLIT_CLIENT ? "client" : "flow");
	snprintf(au.to, sizeof(au.to), "table-size %u, split-by %s", m ? m : rec.table_size,
		 split_by			      ? split_by :
		 rec.vip_flags & BGS_VIP_SPLIT_CLIENT ? "client" :
							"flow");
	/* Everything checked before anything is written. */
	if (m && rec.lb != BGS_LB_MAGLEV) {
		pr_warn("'%s' has no table (--lb modulo)\n", rec.name);
		err = -EINVAL;
		goto out;
	}
	if (m) {
		err = set_read(&st, svc, BGS_BLUE, &sets[BGS_BLUE]);
		if (!err)
			err = set_read(&st, svc, BGS_GREEN, &sets[BGS_GREEN]);
		if (err)
			goto out;
	}
	if (m && (sets[BGS_BLUE].count > m || sets[BGS_GREEN].count > m)) {
		pr_warn("a table of %u positions cannot hold the %u backends of a color of '%s'\n",
			m,
			sets[BGS_BLUE].count > sets[BGS_GREEN].count ? sets[BGS_BLUE].count :
								       sets[BGS_GREEN].count,
			rec.name);
		err = -EINVAL;
		goto out;
	}
	if (m && rec.table_size == m) {
		pr_info("%s: table size already %u\n", rec.name, m);
	} else if (m) {
		rec.table_size = m;
		/* Both colors' tables at the new size, made current with one switch store. */
		err = sets_commit(&st, svc, &rec, sets, (1 << BGS_BLUE) | (1 << BGS_GREEN));
		if (!err && bpf_map_update_elem(st.fd[BGS_M_SERVICES], &svc, &rec, BPF_ANY))
			err = -errno;
		if (err)
			goto out;
		au.gen_after = switch_read(&st, svc).generation;
		pr_info("%s: table size %u, generation %u\n", rec.name, m, au.gen_after);
	}
	if (split_by)
		err = service_set_split(&st, svc, &rec, vflags);
out:
	audit_record(&au, err);
	audit_close(&au);
	if (opened)
		state_close(&st);
	return err;
}

struct subcommand {
	const char *name;
	int (*func)(int argc, char **argv);
	const char *full; /* as option errors name it */
};

/* Run argv[1] of subs (NULL func: help). No subcommand, or an unknown one, is a usage error. */
static int subcommand_run(int argc, char **argv, const struct subcommand *subs, const char *list,
			  void (*usage)(void))
{
	const struct subcommand *s;

	if (argc < 2) {
		pr_warn("%s needs a subcommand: %s (see 'bgswitch %s --help')\n", bgs_cmd_name,
			list, bgs_cmd_name);
		return BGS_ERR_USAGE;
	}
	for (s = subs; s->name; s++) {
		if (strcmp(argv[1], s->name))
			continue;
		if (!s->func) {
			usage();
			return 0;
		}
		bgs_cmd_name = s->full;
		return s->func(argc - 1, argv + 1);
	}
	pr_warn("unknown %s subcommand '%s': %s (see 'bgswitch %s --help')\n", bgs_cmd_name,
		argv[1], list, bgs_cmd_name);
	return BGS_ERR_USAGE;
}

int do_service(int argc, char **argv)
{
	static const struct subcommand subs[] = {
		{ "add", service_add, "service add" },
		{ "set", service_set, "service set" },
		{ "del", service_del, "service del" },
		{ "list", service_list, "service list" },
		{ "-h", NULL, NULL },
		{ "--help", NULL, NULL },
		{ NULL, NULL, NULL },
	};

	if (fleet_wanted(argc, argv))
		return fleet_service(argc, argv);
	return subcommand_run(argc, argv, subs, "add, set, del or list", service_usage);
}

/* ---- backend ---- */

static void backend_usage(void)
{
	printf("Usage: bgswitch backend add NAME blue|green IP:PORT [--weight W] "
	       "[--if-generation G]\n"
	       "                            [--reason TEXT]\n"
	       "       bgswitch backend del NAME blue|green IP:PORT [--drain|--force]\n"
	       "                            [--if-generation G] [--reason TEXT]\n"
	       "\n"
	       "Add a backend to, or remove it from, one color of a service. The new set and its\n"
	       "lookup table take effect for new flows with one switch write. Adding a backend\n"
	       "that is there already with another --weight changes its weight. Removing a\n"
	       "backend that still has live flows is refused unless --drain (it leaves the set\n"
	       "at once and keeps its flows until they end; it is shown as draining) or --force\n"
	       "(its flows are cut).\n"
	       "\n"
	       "  -w, --weight W         add: its share of the color's new flows relative to the\n"
	       "                         others, 0 to %d (default 1; 0 takes no new flow)\n"
	       "  -d, --drain            del: let its live flows finish\n"
	       "  -f, --force            del: cut its live flows, and say how many\n"
	       "  -G, --if-generation G  change only if the service is at generation G\n"
	       "  -m, --reason TEXT      why, for the audit trail\n"
	       "  -h, --help             this help\n",
	       BGS_WEIGHT_MAX);
}

struct backend_args {
	struct bgs_state st;
	struct bgs_service rec;
	struct bgs_endpoint ep;
	struct bgs_set set;
	__u32 svc;
	__u8 color;
	int pos; /* index of the backend in the color's current set, or -1 */
	bool had_slot; /* a slot of this backend was in use before the repair */
};

/* A slot of this service, color and address in use (active or draining). */
static bool backend_find_slot(const struct backend_args *a, __u32 *out)
{
	struct bgs_backend be;
	__u32 slot;

	for (slot = 0; slot < BGS_MAX_SLOTS; slot++) {
		if (!bpf_map_lookup_elem(a->st.fd[BGS_M_BACKENDS], &slot, &be) &&
		    be.state != BGS_BACKEND_FREE && be.svc == a->svc && be.color == a->color &&
		    !memcmp(be.addr, a->ep.addr, sizeof(be.addr)) && be.port == a->ep.port) {
			*out = slot;
			return true;
		}
	}
	return false;
}

/* A free slot that still names this service, color and address: the backend was removed
 * (slot_release() keeps whose a slot was until it is used again).
 */
static bool backend_was_removed(const struct backend_args *a)
{
	struct bgs_backend be;
	__u32 slot;

	for (slot = 0; slot < BGS_MAX_SLOTS; slot++) {
		if (!bpf_map_lookup_elem(a->st.fd[BGS_M_BACKENDS], &slot, &be) &&
		    be.state == BGS_BACKEND_FREE && be.svc == a->svc && be.color == a->color &&
		    be.family == a->ep.family && !memcmp(be.addr, a->ep.addr, sizeof(be.addr)) &&
		    be.port == a->ep.port)
			return true;
	}
	return false;
}

/* With argv[optind..] NAME COLOR IP:PORT: open the state, check the generation, repair, and
 * find the backend in the current set. The audit record learns the service on the way.
 */
static int backend_prepare(int argc, char **argv, __s64 if_gen, struct bgs_audit *au,
			   struct backend_args *a)
{
	struct bgs_backend be;
	__u32 i, slot;
	int err;

	if (argc - optind != 3)
		return bad_args("backend");
	if (parse_color(argv[optind + 1], &a->color) || parse_endpoint(argv[optind + 2], &a->ep))
		return -EINVAL;
	if (check_backend_addr(argv[optind + 2], &a->ep))
		return -EINVAL;
	err = state_need_root();
	if (err)
		return err;
	err = audit_open(au, au->action, au->reason);
	if (err)
		return err;
	err = state_open(&a->st, true);
	if (err)
		return err;
	err = service_find(&a->st, argv[optind], &a->svc, &a->rec);
	if (!err) {
		snprintf(au->service, sizeof(au->service), "%s", a->rec.name);
		au->gen_before = au->gen_after = switch_read(&a->st, a->svc).generation;
		err = generation_check(&a->st, a->svc, a->rec.name, if_gen);
	}
	if (!err) {
		struct bgs_endpoint vip = { .port = a->rec.vip.port, .family = a->rec.vip.family };

		memcpy(vip.addr, a->rec.vip.addr, sizeof(vip.addr));
		err = check_backend_of(argv[optind + 2], &a->ep, &vip, a->rec.name);
	}
	if (!err) {
		a->had_slot = backend_find_slot(a, &slot);
		err = state_repair(&a->st);
	}
	if (!err)
		err = set_read(&a->st, a->svc, a->color, &a->set);
	if (err) {
		state_close(&a->st);
		return err;
	}
	a->pos = -1;
	for (i = 0; i < a->set.count; i++) {
		if (!bpf_map_lookup_elem(a->st.fd[BGS_M_BACKENDS], &a->set.slot[i], &be) &&
		    !memcmp(be.addr, a->ep.addr, sizeof(be.addr)) && be.port == a->ep.port) {
			a->pos = i;
			break;
		}
	}
	return 0;
}

/* A slot for the backend: its own draining slot if it is coming back, else a free one. */
/* A reply finds its flow under each service its backend's address and port serve, up to
 * BGS_ADDR_SVCS of them: refuse one more.
 */
static int backend_services_check(const struct backend_args *a, const char *ebuf)
{
	struct bgs_backend_addr ba = { 0 };
	struct bgs_backend_ref ref;
	__u32 i;

	memcpy(ba.addr, a->ep.addr, sizeof(ba.addr));
	ba.port = a->ep.port;
	ba.proto = a->rec.vip.proto;
	ba.family = a->ep.family;
	if (bpf_map_lookup_elem(a->st.fd[BGS_M_BACKEND_ADDRS], &ba, &ref) ||
	    ref.nsvc < BGS_ADDR_SVCS)
		return 0;
	for (i = 0; i < ref.nsvc; i++)
		if (ref.svc[i] == a->svc)
			return 0;
	pr_warn("%s already serves %d services, the most one backend address and port can\n", ebuf,
		BGS_ADDR_SVCS);
	return -ENOSPC;
}

static int backend_slot(struct backend_args *a, __u32 *out, bool *reused)
{
	struct bgs_backend be;
	__u32 slot, free_slot = BGS_MAX_SLOTS;

	for (slot = 0; slot < BGS_MAX_SLOTS; slot++) {
		if (bpf_map_lookup_elem(a->st.fd[BGS_M_BACKENDS], &slot, &be))
			return -errno;
		if (be.state == BGS_BACKEND_FREE) {
			if (free_slot == BGS_MAX_SLOTS)
				free_slot = slot;
			continue;
		}
		if (be.state == BGS_BACKEND_DRAINING && be.svc == a->svc && be.color == a->color &&
		    !memcmp(be.addr, a->ep.addr, sizeof(be.addr)) && be.port == a->ep.port) {
			*out = slot;
			*reused = true;
			return 0;
		}
	}
	if (free_slot == BGS_MAX_SLOTS) {
		pr_warn("no free backend slot (the build allows %d)\n", BGS_MAX_SLOTS);
		return -ENOSPC;
	}
	*out = free_slot;
	*reused = false;
	return 0;
}

/* "blue/10.0.1.1:8080": a backend as the audit trail names it. */
static void backend_label(const struct backend_args *a, char *buf, size_t len)
{
	char ebuf[BGS_ADDRSTR_LEN];

	snprintf(buf, len, "%s/%s", color_name(a->color),
		 fmt_endpoint(a->ep.addr, a->ep.port, a->ep.family, ebuf, sizeof(ebuf)));
}

/* The backend is there already: with another --weight, change its weight. */
static int backend_reweigh(struct backend_args *a, const char *ebuf, int weight,
			   struct bgs_audit *au)
{
	__u32 slot = a->set.slot[a->pos];
	struct bgs_backend be;
	__u16 old;
	int err;

	if (bpf_map_lookup_elem(a->st.fd[BGS_M_BACKENDS], &slot, &be))
		return -errno;
	if (weight < 0 || be.weight == weight) {
		pr_warn("%s is already a %s backend of '%s'\n", ebuf, color_name(a->color),
			a->rec.name);
		return -EEXIST;
	}
	snprintf(au->detail, sizeof(au->detail), "weight %u -> %d", be.weight, weight);
	old = be.weight;
	be.weight = weight;
	if (bpf_map_update_elem(a->st.fd[BGS_M_BACKENDS], &slot, &be, BPF_ANY))
		return -errno;
	err = set_commit(&a->st, a->svc, a->color, &a->set);
	if (err) {
		/* the table in force still has the old weight: so must the record */
		be.weight = old;
		bpf_map_update_elem(a->st.fd[BGS_M_BACKENDS], &slot, &be, BPF_ANY);
		return err;
	}
	au->gen_after = switch_read(&a->st, a->svc).generation;
	pr_info("%s: %s backend %s weight %d, generation %u\n", a->rec.name, color_name(a->color),
		ebuf, weight, au->gen_after);
	return 0;
}

static int backend_add(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "weight", required_argument, NULL, 'w' },
		{ "if-generation", required_argument, NULL, 'G' },
		{ "reason", required_argument, NULL, 'm' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct bgs_audit au = { .fd = -1, .action = "backend-add" };
	struct backend_args a;
	struct bgs_backend be = { 0 };
	struct bgs_set other;
	char ebuf[BGS_ADDRSTR_LEN];
	__s64 if_gen = -1;
	__u8 ocolor;
	bool reused = false, opened = false;
	__u32 slot, i;
	__u16 w;
	int c, err, weight = -1;

	while ((c = getopt_cmd(argc, argv, "w:G:m:h", opts)) != -1) {
		switch (c) {
		case 'w':
			if (parse_weight(optarg, &w))
				return -EINVAL;
			weight = w;
			break;
		case 'G':
			if (parse_generation(optarg, &if_gen))
				return -EINVAL;
			break;
		case 'm':
			if (audit_check_reason(optarg))
				return -EINVAL;
			au.reason = optarg;
			break;
		case 'h':
			backend_usage();
			return 0;
		default:
			return -EINVAL;
		}
	}
	err = backend_prepare(argc, argv, if_gen, &au, &a);
	if (err)
		goto out;
	opened = true;
	fmt_endpoint(a.ep.addr, a.ep.port, a.ep.family, ebuf, sizeof(ebuf));
	backend_label(&a, au.to, sizeof(au.to));
	if (weight >= 0 && weight != 1 && a.rec.lb != BGS_LB_MAGLEV) {
		pr_warn("--weight: '%s' spreads flows by modulo (--lb modulo), without weights\n",
			a.rec.name);
		err = -EINVAL;
		goto out;
	}
	if (a.pos >= 0) {
		err = backend_reweigh(&a, ebuf, weight, &au);
		goto out;
	}
	ocolor = !a.color;
	err = set_read(&a.st, a.svc, ocolor, &other);
	if (err)
		goto out;
	for (i = 0; i < other.count; i++) {
		if (!bpf_map_lookup_elem(a.st.fd[BGS_M_BACKENDS], &other.slot[i], &be) &&
		    !memcmp(be.addr, a.ep.addr, sizeof(be.addr)) && be.port == a.ep.port) {
			pr_warn("%s is a %s backend of '%s'; a backend serves one color\n", ebuf,
				color_name(ocolor), a.rec.name);
			err = -EEXIST;
			goto out;
		}
	}
	err = backend_services_check(&a, ebuf);
	if (err)
		goto out;
	if (a.rec.lb == BGS_LB_MAGLEV && a.set.count >= a.rec.table_size) {
		pr_warn("%s of '%s' has %u backends, as many as its table has positions (raise "
			"--table-size with 'service set')\n",
			color_name(a.color), a.rec.name, a.set.count);
		err = -ENOSPC;
		goto out;
	}
	if (a.set.count >= BGS_MAX_BACKENDS) {
		pr_warn("%s of '%s' is full (%d backends)\n", color_name(a.color), a.rec.name,
			BGS_MAX_BACKENDS);
		err = -ENOSPC;
		goto out;
	}
	err = backend_slot(&a, &slot, &reused);
	if (err)
		goto out;

	memset(&be, 0, sizeof(be));
	memcpy(be.addr, a.ep.addr, sizeof(be.addr));
	be.port = a.ep.port;
	be.family = a.ep.family;
	be.state = BGS_BACKEND_ACTIVE;
	be.svc = a.svc;
	be.color = a.color;
	be.proto = a.rec.vip.proto;
	be.weight = weight < 0 ? 1 : weight;
	if (bpf_map_update_elem(a.st.fd[BGS_M_BACKENDS], &slot, &be, BPF_ANY))
		goto map_err;
	/* The egress filter learns the address before any flow can go there. */
	err = addrs_resync(&a.st);
	if (err)
		goto out;
	/* Killed here, the slot is active but in no set: repair collects it. */
	fault_point("backend-add-before-commit");

	a.set.slot[a.set.count++] = slot;
	err = set_commit(&a.st, a.svc, a.color, &a.set);
	if (err)
		goto out;
	au.gen_after = switch_read(&a.st, a.svc).generation;
	pr_info("%s: %s backend %s added (%u in %s), generation %u\n", a.rec.name,
		color_name(a.color), ebuf, a.set.count, color_name(a.color), au.gen_after);
	goto out;
map_err:
	err = -errno;
	pr_warn("cannot write the backend: %s\n", strerror(errno));
out:
	if (opened)
		state_close(&a.st);
	audit_record(&au, err);
	audit_close(&au);
	return err;
}

static int backend_del(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "drain", no_argument, NULL, 'd' },
		{ "force", no_argument, NULL, 'f' },
		{ "if-generation", required_argument, NULL, 'G' },
		{ "reason", required_argument, NULL, 'm' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct bgs_audit au = { .fd = -1, .action = "backend-del" };
	struct bgs_flow_census *census = NULL;
	struct backend_args a;
	struct bgs_backend be;
	char ebuf[BGS_ADDRSTR_LEN];
	bool drain = false, force = false, opened = false;
	__s64 if_gen = -1;
	__u32 slot, live;
	int c, err;

	while ((c = getopt_cmd(argc, argv, "dfG:m:h", opts)) != -1) {
		switch (c) {
		case 'd':
			drain = true;
			break;
		case 'f':
			force = true;
			break;
		case 'G':
			if (parse_generation(optarg, &if_gen))
				return -EINVAL;
			break;
		case 'm':
			if (audit_check_reason(optarg))
				return -EINVAL;
			au.reason = optarg;
			break;
		case 'h':
			backend_usage();
			return 0;
		default:
			return -EINVAL;
		}
	}
	if (drain && force) {
		pr_warn("--drain lets a backend's flows finish, --force cuts them: choose one\n");
		return -EINVAL;
	}
	err = backend_prepare(argc, argv, if_gen, &au, &a);
	if (err)
		goto out;
	opened = true;
	fmt_endpoint(a.ep.addr, a.ep.port, a.ep.family, ebuf, sizeof(ebuf));
	backend_label(&a, au.from, sizeof(au.from));
	census = malloc(sizeof(*census));
	if (!census) {
		err = -ENOMEM;
		goto out;
	}
	err = flows_census(&a.st, census);
	if (err)
		goto out;

	if (a.pos < 0) {
		/* Out of the set already: draining, or an earlier removal that was interrupted. */
		if (backend_find_slot(&a, &slot)) {
			live = census->live[slot];
			if (!force || !live) {
				pr_info("%s: %s backend %s is already out of the set; %u live flows "
					"drain to it\n",
					a.rec.name, color_name(a.color), ebuf, live);
				au.service[0] = '\0'; /* nothing changed */
				goto out;
			}
			err = slot_release(&a.st, slot);
			if (err)
				goto out;
			snprintf(au.detail, sizeof(au.detail), "draining; %u live flows cut", live);
			pr_info("%s: %s backend %s removed; %u live flows cut\n", a.rec.name,
				color_name(a.color), ebuf, live);
			goto out;
		}
		if (a.had_slot) {
			snprintf(au.detail, sizeof(au.detail), "finished an interrupted removal");
			pr_info("%s: %s backend %s removed (an interrupted removal finished)\n",
				a.rec.name, color_name(a.color), ebuf);
			goto out;
		}
		if (backend_was_removed(&a)) {
			/* Its removal finished; only the command was cut short (README: a re-run
			 * says so and exits 0).
			 */
			pr_info("%s: %s backend %s already removed\n", a.rec.name,
				color_name(a.color), ebuf);
			au.service[0] = '\0'; /* nothing changed */
			goto out;
		}
		pr_warn("%s is not a %s backend of '%s'\n", ebuf, color_name(a.color), a.rec.name);
		err = -ENOENT;
		goto out;
	}
	slot = a.set.slot[a.pos];
	if (bpf_map_lookup_elem(a.st.fd[BGS_M_BACKENDS], &slot, &be)) {
		err = -errno;
		goto out;
	}
	live = census->live[slot];
	if (live && !drain && !force) {
		pr_warn("%s backend %s of '%s' still has %u live flows; --drain lets them finish, "
			"--force cuts them\n",
			color_name(a.color), ebuf, a.rec.name, live);
		err = -EBUSY;
		goto out;
	}

	a.set.slot[a.pos] = a.set.slot[--a.set.count];
	a.set.slot[a.set.count] = 0;
	err = set_commit(&a.st, a.svc, a.color, &a.set);
	if (err)
		goto out;
	au.gen_after = switch_read(&a.st, a.svc).generation;
	/* Killed here, the slot is active but in no set: repair treats it as draining. */
	fault_point("backend-del-after-commit");
	if (live && drain) {
		/* The slot outlives its place in the set while flows still point at it. */
		be.state = BGS_BACKEND_DRAINING;
		bpf_map_update_elem(a.st.fd[BGS_M_BACKENDS], &slot, &be, BPF_ANY);
		snprintf(au.detail, sizeof(au.detail), "draining %u live flows", live);
		pr_info("%s: %s backend %s removed from new flows; %u live flows drain to it\n",
			a.rec.name, color_name(a.color), ebuf, live);
		goto out;
	}
	/* Its flow entries go with the slot: live ones are cut (--force). */
	err = slot_release(&a.st, slot);
	if (err)
		goto out;
	if (live) {
		snprintf(au.detail, sizeof(au.detail), "%u live flows cut", live);
		pr_info("%s: %s backend %s removed; %u live flows cut\n", a.rec.name,
			color_name(a.color), ebuf, live);
	} else {
		pr_info("%s: %s backend %s removed\n", a.rec.name, color_name(a.color), ebuf);
	}
out:
	free(census);
	if (opened)
		state_close(&a.st);
	audit_record(&au, err);
	audit_close(&au);
	return err;
}

int do_backend(int argc, char **argv)
{
	static const struct subcommand subs[] = {
		{ "add", backend_add, "backend add" },
		{ "del", backend_del, "backend del" },
		{ "-h", NULL, NULL },
		{ "--help", NULL, NULL },
		{ NULL, NULL, NULL },
	};

	if (fleet_wanted(argc, argv))
		return fleet_backend(argc, argv);
	return subcommand_run(argc, argv, subs, "add or del", backend_usage);
}
