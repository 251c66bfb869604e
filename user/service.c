// SPDX-License-Identifier: GPL-2.0
/* service.c: `service` and `backend`: defining services and their backends. Each command parses
 * its arguments once into a struct bgs_change, then applies it here (ops.h) or, in the fleet
 * form (--etcd), writes it as a document (fleet.c), and prints what was done.
 */
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit.h"
#include "commands.h"
#include "fleet.h"
#include "log.h"
#include "ops.h"
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

/* ---- parsing: one parser for the local and the fleet forms ---- */

enum {
	O_PROTO = 1 << 0,
	O_LB = 1 << 1,
	O_TABLE = 1 << 2,
	O_SPLIT = 1 << 3,
	O_FORCE = 1 << 4,
	O_DRAIN = 1 << 5,
	O_WEIGHT = 1 << 6,
	O_GEN = 1 << 7,
	O_REASON = 1 << 8,
	O_CONN = 1 << 9, /* --etcd, --prefix, --cacert, --cert, --key, --insecure */
	O_WAIT = 1 << 10, /* --wait, --timeout */
};

/* Each command: its name, positional arguments and the options of its two forms. */
static const struct change_form {
	const char *cmd;
	int npos;
	unsigned int local, fleet;
} forms[] = {
	[BGS_CH_SERVICE_ADD] = { "service add", 2, O_PROTO | O_LB | O_TABLE | O_SPLIT | O_REASON,
				 O_PROTO | O_LB | O_TABLE | O_SPLIT | O_WAIT },
	[BGS_CH_SERVICE_SET] = { "service set", 1, O_TABLE | O_SPLIT | O_REASON, 0 },
	[BGS_CH_SERVICE_DEL] = { "service del", 1, O_FORCE | O_REASON, O_FORCE | O_GEN | O_WAIT },
	[BGS_CH_SERVICE_LIST] = { "service list", 0, 0, 0 },
	[BGS_CH_BACKEND_ADD] = { "backend add", 3, O_WEIGHT | O_GEN | O_REASON,
				 O_WEIGHT | O_GEN | O_WAIT },
	[BGS_CH_BACKEND_DEL] = { "backend del", 3, O_DRAIN | O_FORCE | O_GEN | O_REASON,
				 O_DRAIN | O_FORCE | O_GEN | O_WAIT },
};

static const struct option change_opts[] = {
	{ "proto", required_argument, NULL, 'p' },
	{ "lb", required_argument, NULL, 'l' },
	{ "table-size", required_argument, NULL, 'M' },
	{ "split-by", required_argument, NULL, 's' },
	{ "force", no_argument, NULL, 'f' },
	{ "drain", no_argument, NULL, 'd' },
	{ "weight", required_argument, NULL, 'w' },
	{ "if-generation", required_argument, NULL, 'G' },
	{ "reason", required_argument, NULL, 'm' },
	{ "etcd", required_argument, NULL, 'E' },
	{ "prefix", required_argument, NULL, 'x' },
	{ "cacert", required_argument, NULL, 'C' },
	{ "cert", required_argument, NULL, 'c' },
	{ "key", required_argument, NULL, 'k' },
	{ "insecure", no_argument, NULL, 'I' },
	{ "wait", no_argument, NULL, 'W' },
	{ "timeout", required_argument, NULL, 't' },
	{ "help", no_argument, NULL, 'h' },
	{ 0 },
};

static unsigned int opt_bit(int c)
{
	static const char letters[] = "plMsfdwGm";
	const char *p = strchr(letters, c);

	if (c && p)
		return 1u << (p - letters);
	if (c && strchr("ExCckI", c))
		return O_CONN;
	if (c == 'W' || c == 't')
		return O_WAIT;
	return 0;
}

/* One option's value into the change. */
static int change_opt(struct bgs_change *ch, int c, const char *arg)
{
	__u16 w;

	switch (c) {
	case 'p':
		return parse_proto(arg, &ch->svc.proto);
	case 'l':
		return parse_lb(arg, &ch->svc.lb);
	case 'M':
		ch->svc.set_table = true;
		return parse_table_size(arg, &ch->svc.table_size);
	case 's':
		ch->svc.set_split = true;
		return parse_split_by(arg, &ch->svc.vip_flags);
	case 'f':
		ch->svc.force = ch->be.force = true;
		return 0;
	case 'd':
		ch->be.drain = true;
		return 0;
	case 'w':
		if (parse_weight(arg, &w))
			return -EINVAL;
		ch->be.weight = w;
		return 0;
	case 'G':
		return parse_generation(arg, &ch->if_generation);
	case 'm':
		ch->reason = arg;
		return audit_check_reason(arg);
	case 'W':
		ch->wait = true;
		return 0;
	case 't':
		return parse_duration_ns(arg, 0, 24 * 3600 * 1000000000ULL, &ch->timeout_ns);
	default:
		return fleet_conn_opt(&ch->conn, c, arg) < 0 ? -EINVAL : 0;
	}
}

/* The options of argv into ch, for its form: the fleet one if --etcd is given. */
static int change_opts_parse(int argc, char **argv, struct bgs_change *ch)
{
	const struct change_form *f = &forms[ch->kind];
	unsigned int allowed = ch->fleet ? f->fleet | O_CONN | O_REASON : f->local;
	int c;

	while ((c = getopt_cmd(argc, argv, "p:l:M:s:fdw:G:m:E:x:C:c:k:IWt:h", change_opts)) != -1) {
		if (c == 'h') {
			ch->help = true;
			return 0;
		}
		if (c == '?')
			return -EINVAL;
		if (!(opt_bit(c) & allowed)) {
			if (ch->fleet)
				pr_warn("'%s --etcd': an option that only a local %s takes (see "
					"--help)\n",
					f->cmd, f->cmd);
			else
				pr_warn("unknown option '%s' (see 'bgswitch %s --help')\n",
					argv[optind - 1], f->cmd);
			return -EINVAL;
		}
		if (change_opt(ch, c, optarg))
			return -EINVAL;
	}
	return 0;
}

/* The positional arguments: NAME [VIP:PORT], or NAME COLOR IP:PORT. */
static int change_args(char **args, struct bgs_change *ch)
{
	bool backend = ch->kind == BGS_CH_BACKEND_ADD || ch->kind == BGS_CH_BACKEND_DEL;
	struct bgs_endpoint *ep = backend ? &ch->be.ep : &ch->svc.vip;

	if (forms[ch->kind].npos >= 1) {
		if (ch->kind == BGS_CH_SERVICE_ADD && check_name(args[0]))
			return -EINVAL;
		snprintf(ch->service, sizeof(ch->service), "%s", args[0]);
		snprintf(ch->svc.name, sizeof(ch->svc.name), "%s", args[0]);
		snprintf(ch->be.service, sizeof(ch->be.service), "%s", args[0]);
	}
	if (backend && parse_color(args[1], &ch->be.color))
		return -EINVAL;
	if (forms[ch->kind].npos >= 2) {
		snprintf(ch->addr_text, sizeof(ch->addr_text), "%s", args[backend ? 2 : 1]);
		if (parse_endpoint(ch->addr_text, ep))
			return -EINVAL;
	}
	if (ch->kind == BGS_CH_SERVICE_ADD && ch->svc.set_table && ch->svc.lb == BGS_LB_MODULO) {
		pr_warn("--table-size: a service with --lb modulo has no table\n");
		return -EINVAL;
	}
	if (ch->kind == BGS_CH_SERVICE_ADD)
		return check_vip_addr(ch->addr_text, ep);
	if (backend && (!ch->fleet || ch->kind == BGS_CH_BACKEND_ADD))
		return check_backend_addr(ch->addr_text, ep);
	return 0;
}

/* Parse a service or backend command into ch (its kind set). ch->help: only --help was asked. */
static int change_parse(int argc, char **argv, enum bgs_change_kind kind, struct bgs_change *ch)
{
	const struct change_form *f = &forms[kind];
	const char *family = kind >= BGS_CH_BACKEND_ADD ? "backend" : "service";
	int err;

	memset(ch, 0, sizeof(*ch));
	ch->kind = kind;
	ch->if_generation = -1;
	ch->fleet = fleet_wanted(argc, argv);
	ch->conn.prefix = FLEET_DEFAULT_PREFIX;
	ch->timeout_ns = FLEET_WAIT_DEFAULT_NS;
	ch->svc.proto = IPPROTO_TCP;
	ch->svc.lb = BGS_LB_MAGLEV;
	ch->svc.table_size = BGS_TABLE_SIZE;
	ch->be.weight = -1;
	err = change_opts_parse(argc, argv, ch);
	if (err || ch->help)
		return err;
	if (ch->fleet && kind == BGS_CH_SERVICE_SET)
		return bad_args(family); /* no fleet form */
	if (argc - optind != f->npos)
		return bad_args(family);
	if (ch->fleet && ch->be.force && kind == BGS_CH_BACKEND_DEL) {
		pr_warn("backend del --etcd: backends leave a fleet with --drain (their flows "
			"finish); --force is for one node\n");
		return -EINVAL;
	}
	if (!ch->fleet && ch->be.drain && ch->be.force) {
		pr_warn("--drain lets a backend's flows finish, --force cuts them: choose one\n");
		return -EINVAL;
	}
	if (kind == BGS_CH_SERVICE_SET && !ch->svc.set_table && !ch->svc.set_split) {
		pr_warn("service set: nothing to set (--table-size M, --split-by K)\n");
		return -EINVAL;
	}
	return change_args(argv + optind, ch);
}

/* Apply a local change: open and lock the state, run the operation, close. */
static int change_apply(const struct bgs_change *ch, struct bgs_op *op)
{
	struct bgs_state st;
	int err;

	err = state_open(&st, true);
	if (err)
		return err;
	err = bgs_change_apply(&st, ch, op);
	state_close(&st);
	return err;
}

static void service_added(const struct bgs_change *ch)
{
	const struct bgs_service_spec *sp = &ch->svc;
	char ebuf[BGS_ADDRSTR_LEN];

	fmt_endpoint(sp->vip.addr, sp->vip.port, sp->vip.family, ebuf, sizeof(ebuf));
	if (sp->lb == BGS_LB_MAGLEV)
		pr_info("service %s: %s/%s, active blue, maglev %u, generation 1\n", sp->name, ebuf,
			proto_name(sp->proto), sp->table_size);
	else
		pr_info("service %s: %s/%s, active blue, lb modulo, generation 1\n", sp->name, ebuf,
			proto_name(sp->proto));
}

static void service_was_set(const struct bgs_change *ch, const struct bgs_op *op)
{
	const char *split = ch->svc.vip_flags & BGS_VIP_SPLIT_CLIENT ? "client" : "flow";

	if (op->did & BGS_DID_TABLE)
		pr_info("%s: table size %u, generation %u\n", ch->service, ch->svc.table_size,
			op->generation);
	else if (ch->svc.set_table && !op->error[0])
		pr_info("%s: table size already %u\n", ch->service, ch->svc.table_size);
	if (op->did & BGS_DID_SPLIT)
		pr_info("%s: split by %s\n", ch->service, split);
	else if (ch->svc.set_split && !op->error[0])
		pr_info("%s: already split by %s\n", ch->service, split);
}

static void service_deleted(const struct bgs_change *ch, const struct bgs_op *op)
{
	if (op->done == BGS_DONE_FINISHED)
		pr_info("service %s deleted (an interrupted delete finished)\n", ch->service);
	else if (op->live)
		pr_info("service %s deleted; %llu live flows cut\n", ch->service,
			(unsigned long long)op->live);
	else
		pr_info("service %s deleted\n", ch->service);
}

/* service add, set and del: parse, apply here or in the fleet, say what was done. */
static int service_change(int argc, char **argv, enum bgs_change_kind kind)
{
	struct bgs_change ch;
	struct bgs_op op = { 0 };
	int err;

	err = change_parse(argc, argv, kind, &ch);
	if (!err && ch.fleet)
		return fleet_service(&ch);
	if (err || ch.help) {
		if (ch.help)
			service_usage();
		return err;
	}
	err = change_apply(&ch, &op);
	if (kind == BGS_CH_SERVICE_SET)
		service_was_set(&ch, &op);
	if (err)
		return err;
	if (kind == BGS_CH_SERVICE_ADD)
		service_added(&ch);
	else if (kind == BGS_CH_SERVICE_DEL)
		service_deleted(&ch, &op);
	return 0;
}

static int service_add(int argc, char **argv)
{
	return service_change(argc, argv, BGS_CH_SERVICE_ADD);
}

static int service_set(int argc, char **argv)
{
	return service_change(argc, argv, BGS_CH_SERVICE_SET);
}

static int service_del(int argc, char **argv)
{
	return service_change(argc, argv, BGS_CH_SERVICE_DEL);
}

static int service_list_local(int argc, char **argv)
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

static int service_list(int argc, char **argv)
{
	struct bgs_change ch;
	int err;

	if (fleet_wanted(argc, argv)) {
		err = change_parse(argc, argv, BGS_CH_SERVICE_LIST, &ch);
		return err ? err : fleet_service(&ch);
	}
	return service_list_local(argc, argv);
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

	return subcommand_run(argc, argv, subs, "add, set, del or list", service_usage);
}

/* ---- backend ---- */

/* What backend add or del did, as one line. */
static void backend_done(const struct bgs_change *ch, const struct bgs_op *op)
{
	const char *name = ch->service, *col = color_name(ch->be.color);
	char ebuf[BGS_ADDRSTR_LEN];
	unsigned long long live = op->live;

	fmt_endpoint(ch->be.ep.addr, ch->be.ep.port, ch->be.ep.family, ebuf, sizeof(ebuf));
	if (op->done == BGS_DONE_ADDED)
		pr_info("%s: %s backend %s added (%u in %s), generation %u\n", name, col, ebuf,
			op->count, col, op->generation);
	else if (op->done == BGS_DONE_REWEIGHED)
		pr_info("%s: %s backend %s weight %d, generation %u\n", name, col, ebuf,
			ch->be.weight, op->generation);
	else if (op->done == BGS_DONE_OUT_OF_SET)
		pr_info("%s: %s backend %s is already out of the set; %llu live flows drain to "
			"it\n",
			name, col, ebuf, live);
	else if (op->done == BGS_DONE_FINISHED)
		pr_info("%s: %s backend %s removed (an interrupted removal finished)\n", name, col,
			ebuf);
	else if (op->done == BGS_DONE_NOTHING)
		pr_info("%s: %s backend %s already removed\n", name, col, ebuf);
	else if (op->done == BGS_DONE_DRAINING)
		pr_info("%s: %s backend %s removed from new flows; %llu live flows drain to it\n",
			name, col, ebuf, live);
	else if (live)
		pr_info("%s: %s backend %s removed; %llu live flows cut\n", name, col, ebuf, live);
	else
		pr_info("%s: %s backend %s removed\n", name, col, ebuf);
}

/* backend add and del: parse, apply here or in the fleet, say what was done. */
static int backend_change(int argc, char **argv, enum bgs_change_kind kind)
{
	struct bgs_change ch;
	struct bgs_op op = { 0 };
	int err;

	err = change_parse(argc, argv, kind, &ch);
	if (!err && ch.fleet)
		return fleet_backend(&ch);
	if (err || ch.help) {
		if (ch.help)
			backend_usage();
		return err;
	}
	err = change_apply(&ch, &op);
	if (!err)
		backend_done(&ch, &op);
	return err;
}

static int backend_add(int argc, char **argv)
{
	return backend_change(argc, argv, BGS_CH_BACKEND_ADD);
}

static int backend_del(int argc, char **argv)
{
	return backend_change(argc, argv, BGS_CH_BACKEND_DEL);
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

	return subcommand_run(argc, argv, subs, "add or del", backend_usage);
}
