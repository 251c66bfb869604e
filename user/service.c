// SPDX-License-Identifier: GPL-2.0
/* service.c: `service` and `backend`: defining services and their backends. Each command parses
 * its arguments once into a struct bgs_change, then applies it here (ops.h) or, in the fleet
 * form (--etcd), writes it as a document (fleet.c), and prints what was done.
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit.h"
#include "commands.h"
#include "fleet.h"
#include "log.h"
#include "ops.h"
#include "spec_service.h"
#include "specs.h"
#include "state.h"
#include "util.h"

/* ---- parsing: one parser for the local and the fleet forms (spec_service.c's tables) ---- */

static const struct bgs_cmd_spec *const change_specs[] = {
	[BGS_CH_SERVICE_ADD] = &bgs_spec_service_add,
	[BGS_CH_SERVICE_SET] = &bgs_spec_service_set,
	[BGS_CH_SERVICE_DEL] = &bgs_spec_service_del,
	[BGS_CH_SERVICE_LIST] = &bgs_spec_service_list,
	[BGS_CH_BACKEND_ADD] = &bgs_spec_backend_add,
	[BGS_CH_BACKEND_DEL] = &bgs_spec_backend_del,
};

/* The converted options into ch. */
static void change_of_args(const struct bgs_cmd_spec *spec, const struct bgs_parsed *p,
			   const struct service_args *sa, struct bgs_change *ch)
{
	ch->if_generation = sa->if_gen;
	ch->reason = sa->reason;
	ch->fleet = p->fleet;
	ch->conn = sa->conn;
	ch->wait = sa->wait;
	ch->timeout_ns = sa->timeout_ns;
	ch->svc.proto = sa->proto;
	ch->svc.lb = sa->lb;
	ch->svc.table_size = sa->table_size;
	ch->svc.vip_flags = sa->split_flags;
	ch->svc.set_table = params_seen(spec, p, "table-size");
	ch->svc.set_split = params_seen(spec, p, "split-by");
	ch->svc.force = ch->be.force = sa->force;
	ch->be.drain = sa->drain;
	ch->be.weight = params_seen(spec, p, "weight") ? sa->weight : -1;
}

/* The positional arguments: NAME [VIP:PORT], or NAME COLOR IP:PORT. */
static int change_args(char **args, struct bgs_change *ch)
{
	bool backend = ch->kind == BGS_CH_BACKEND_ADD || ch->kind == BGS_CH_BACKEND_DEL;
	bool add = ch->kind == BGS_CH_SERVICE_ADD;
	struct bgs_endpoint *ep = backend ? &ch->be.ep : &ch->svc.vip;

	if (ch->kind == BGS_CH_SERVICE_LIST)
		return 0;
	if (add && check_name(args[0]))
		return -EINVAL;
	ch->name = args[0];
	if (!ch->fleet && strlen(args[0]) >= BGS_NAME_LEN) {
		pr_warn("unknown service '%s'\n", args[0]); /* longer than any */
		return -ENOENT;
	}
	snprintf(ch->service, sizeof(ch->service), "%s", args[0]);
	snprintf(ch->svc.name, sizeof(ch->svc.name), "%s", args[0]);
	snprintf(ch->be.service, sizeof(ch->be.service), "%s", args[0]);
	if (backend && parse_color(args[1], &ch->be.color))
		return -EINVAL;
	if (!add && !backend)
		return 0;
	snprintf(ch->addr_text, sizeof(ch->addr_text), "%s", args[backend ? 2 : 1]);
	if (parse_endpoint(ch->addr_text, ep))
		return -EINVAL;
	if (add && ch->svc.set_table && ch->svc.lb == BGS_LB_MODULO) {
		pr_warn("--table-size: a service with --lb modulo has no table\n");
		return -EINVAL;
	}
	if (add)
		return check_vip_addr(ch->addr_text, ep);
	if (!ch->fleet || ch->kind == BGS_CH_BACKEND_ADD)
		return check_backend_addr(ch->addr_text, ep);
	return 0;
}

/* Parse a service or backend command into ch. ch->help: --help was asked (and printed). */
static int change_parse(int argc, char **argv, enum bgs_change_kind kind, struct bgs_change *ch)
{
	const struct bgs_cmd_spec *spec = change_specs[kind];
	struct service_args sa = {
		.conn.prefix = FLEET_DEFAULT_PREFIX,
		.timeout_ns = FLEET_WAIT_DEFAULT_NS,
		.proto = IPPROTO_TCP,
		.lb = BGS_LB_MAGLEV,
		.table_size = BGS_TABLE_SIZE,
		.if_gen = -1,
	};
	struct bgs_parsed p;
	int err;

	memset(ch, 0, sizeof(*ch));
	ch->kind = kind;
	err = params_parse(spec, argc, argv, &sa, &p);
	ch->help = p.help;
	if (err || p.help)
		return err;
	change_of_args(spec, &p, &sa, ch);
	if (ch->fleet && !ch->conn.eo.endpoints) {
		pr_warn("an option of the fleet form without --etcd (see 'bgswitch %s --help')\n",
			spec->name);
		return -EINVAL;
	}
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
	return change_args(p.pos, ch);
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
	if (err || ch.help)
		return err;
	if (ch.fleet)
		return fleet_service(&ch);
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

/* The local services, one line each. */
static int service_list_local(void)
{
	struct bgs_service rec;
	struct bgs_set set;
	struct bgs_state st;
	char ebuf[BGS_ADDRSTR_LEN];
	int err, n = 0;
	__u32 svc;

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

	err = change_parse(argc, argv, BGS_CH_SERVICE_LIST, &ch);
	if (err || ch.help)
		return err;
	return ch.fleet ? fleet_service(&ch) : service_list_local();
}

int do_service(int argc, char **argv)
{
	static const struct bgs_subcmd subs[] = {
		{ "add", service_add },	  { "set", service_set }, { "del", service_del },
		{ "list", service_list }, { NULL, NULL },
	};

	return params_subcommand("service", subs, argc, argv);
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
	if (err || ch.help)
		return err;
	if (ch.fleet)
		return fleet_backend(&ch);
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
	static const struct bgs_subcmd subs[] = {
		{ "add", backend_add },
		{ "del", backend_del },
		{ NULL, NULL },
	};

	return params_subcommand("backend", subs, argc, argv);
}
