// SPDX-License-Identifier: GPL-2.0
/* params.c: parsing a command line and printing --help from a command's option table. */
#include <errno.h>
#include <getopt.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "audit.h"
#include "fleet.h"
#include "log.h"
#include "params.h"
#include "state.h"
#include "util.h"

#define MAX_OPTS 63 /* bgs_parsed.seen has a bit per option; one more for --help */
#define HELP_VAL 1000 /* getopt_long's value of --help; opts[i] has 1001 + i */

const char *const bgs_words_color[] = { "blue", "green", NULL };
const char *const bgs_words_proto[] = { "tcp", "udp", NULL };
const char *const bgs_words_lb[] = { "maglev", "modulo", NULL };
const char *const bgs_words_split[] = { "flow", "client", NULL };
const char *const bgs_words_mode[] = { "auto", "native", "generic", NULL };

static bool has_arg(const struct bgs_opt *o)
{
	return o->type != BGS_OPT_BOOL && o->type != BGS_OPT_COUNT;
}

static unsigned int opt_where(const struct bgs_opt *o)
{
	return o->where ? o->where : BGS_OPT_LOCAL;
}

static int count_opts(const struct bgs_cmd_spec *spec)
{
	int n = 0;

	while (spec->opts && spec->opts[n].name)
		n++;
	return n;
}

/* getopt_long's tables: long options (each returns HELP_VAL + 1 + its index) and the short
 * option string ("-h" is --help unless the table gives 'h' to another option).
 */
static void build_getopt(const struct bgs_cmd_spec *spec, int n, struct option *lo, char *shorts)
{
	bool h_taken = false;
	char *s = shorts;
	int i;

	if (spec->flags & BGS_SPEC_STOP)
		*s++ = '+';
	*s++ = ':'; /* a missing value returns ':', told apart from an unknown option */
	for (i = 0; i < n; i++) {
		const struct bgs_opt *o = &spec->opts[i];

		lo[i] = (struct option){ o->name, has_arg(o) ? required_argument : no_argument,
					 NULL, HELP_VAL + 1 + i };
		if (!o->short_name)
			continue;
		h_taken |= o->short_name == 'h';
		*s++ = o->short_name;
		if (has_arg(o))
			*s++ = ':';
	}
	lo[n] = (struct option){ "help", no_argument, NULL, HELP_VAL };
	lo[n + 1] = (struct option){ 0 };
	if (!h_taken)
		*s++ = 'h';
	*s = '\0';
}

/* The index in the table of what getopt_long returned, or -1 for --help. */
static int opt_index(const struct bgs_cmd_spec *spec, int n, int c)
{
	int i;

	if (c == HELP_VAL)
		return -1;
	if (c > HELP_VAL)
		return c - HELP_VAL - 1;
	for (i = 0; i < n; i++)
		if (spec->opts[i].short_name == c)
			return i;
	return -1; /* 'h' */
}

/* One line on what getopt_long refused ('?' unknown, ':' no value). */
static void getopt_error(const struct bgs_cmd_spec *spec, int argc, char **argv, int c)
{
	const char *arg = optind > 0 && optind <= argc ? argv[optind - 1] : "", *name = spec->name;
	const char *sp = *name ? " " : "";
	char shortopt[3] = { '-', (char)optopt, 0 };

	/* A long option is named as it was written; a short one by its letter. */
	if (strncmp(arg, "--", 2))
		arg = shortopt;
	if (c == ':')
		pr_warn("option '%s' needs a value (see 'bgswitch%s%s --help')\n", arg, sp, name);
	else if (optopt && !strncmp(arg, "--", 2) && strchr(arg, '='))
		pr_warn("option '%.*s' takes no value (see 'bgswitch%s%s --help')\n",
			(int)(strchr(arg, '=') - arg), arg, sp, name);
	else
		pr_warn("unknown option '%s' (see 'bgswitch%s%s --help')\n", arg, sp, name);
}

/* Convert and check one option's value into its place in cfg. */
static int store(const struct bgs_opt *o, const char *arg, char *cfg)
{
	void *dst = cfg + o->off;
	__u32 v;

	switch (o->type) {
	case BGS_OPT_BOOL:
		*(bool *)dst = true;
		return 0;
	case BGS_OPT_COUNT:
		(*(int *)dst)++;
		return 0;
	case BGS_OPT_STR:
		*(const char **)dst = arg;
		return o->parse ? o->parse(arg, dst) : 0;
	case BGS_OPT_U32:
		if (parse_u32(arg, o->min, o->max, &v)) {
			pr_warn("--%s: '%s' is not a number from %llu to %llu\n", o->name, arg,
				(unsigned long long)o->min, (unsigned long long)o->max);
			return -EINVAL;
		}
		*(__u32 *)dst = v;
		return 0;
	case BGS_OPT_DURATION:
		return parse_duration_ns(arg, o->min, o->max, dst);
	case BGS_OPT_FUNC:
		return o->parse(arg, dst);
	}
	return -EINVAL;
}

/* An option only the fleet form takes makes it the fleet form; every other option given must
 * then be one the fleet form takes.
 */
static int check_where(const struct bgs_cmd_spec *spec, int n, struct bgs_parsed *out)
{
	const struct bgs_opt *fleet_only = NULL;
	int i;

	/* Named in the message: --etcd if given, else the first fleet-only option given. */
	for (i = 0; i < n; i++)
		if ((out->seen >> i & 1) && opt_where(&spec->opts[i]) == BGS_OPT_FLEET &&
		    (!fleet_only || !strcmp(spec->opts[i].name, "etcd")))
			fleet_only = &spec->opts[i];
	if (!fleet_only)
		return 0;
	out->fleet = true;
	for (i = 0; i < n; i++) {
		if (!(out->seen >> i & 1) || opt_where(&spec->opts[i]) & BGS_OPT_FLEET)
			continue;
		pr_warn("--%s is not accepted with --%s (see 'bgswitch %s --help')\n",
			spec->opts[i].name, fleet_only->name, spec->name);
		return -EINVAL;
	}
	return 0;
}

static int check_positionals(const struct bgs_cmd_spec *spec, struct bgs_parsed *out)
{
	int need = 0, max = 0;
	bool many = false;
	const struct bgs_pos *p;

	for (p = spec->pos; p && p->name; p++) {
		max++;
		need += !p->optional;
		many |= p->many;
	}
	if (out->npos < need || (!many && out->npos > max)) {
		pr_warn("wrong number of arguments (see 'bgswitch %s --help')\n", spec->name);
		return -EINVAL;
	}
	return 0;
}

int params_parse(const struct bgs_cmd_spec *spec, int argc, char **argv, void *cfg,
		 struct bgs_parsed *out)
{
	struct option lo[MAX_OPTS + 2];
	char shorts[3 * MAX_OPTS + 4];
	int n = count_opts(spec), c, i, err, saved = opterr;

	memset(out, 0, sizeof(*out));
	if (n > MAX_OPTS)
		return -E2BIG;
	build_getopt(spec, n, lo, shorts);
	optind = 0; /* 0: glibc re-initialises getopt */
	opterr = 0;
	while ((c = getopt_long(argc, argv, shorts, lo, NULL)) != -1) {
		if (c == '?' || c == ':') {
			getopt_error(spec, argc, argv, c);
			err = -EINVAL;
			goto out;
		}
		i = opt_index(spec, n, c);
		if (i < 0) {
			params_usage(spec, stdout);
			out->help = true;
			err = 0;
			goto out;
		}
		err = store(&spec->opts[i], optarg, cfg);
		if (err)
			goto out;
		out->seen |= 1ULL << i;
	}
	out->pos = argv + optind;
	out->npos = argc - optind;
	err = check_where(spec, n, out);
	if (!err && !(spec->flags & BGS_SPEC_STOP))
		err = check_positionals(spec, out);
out:
	opterr = saved;
	optind = 0; /* a parser after this one (getopt_long) starts over */
	return err;
}

bool params_seen(const struct bgs_cmd_spec *spec, const struct bgs_parsed *p, const char *name)
{
	int i;

	for (i = 0; spec->opts && spec->opts[i].name; i++)
		if (!strcmp(spec->opts[i].name, name))
			return p->seen >> i & 1;
	return false;
}

int params_fleet_prefix(const char *arg, void *dst)
{
	if (fleet_check_prefix(arg))
		return -EINVAL;
	*(const char **)dst = arg;
	return 0;
}

const struct bgs_cmd_spec *params_find(const char *name)
{
	int i;

	for (i = 0; bgs_cmd_specs[i]; i++)
		if (!strcmp(bgs_cmd_specs[i]->name, name))
			return bgs_cmd_specs[i];
	return NULL;
}

/* Converters for .parse: the shared words and numbers, into the types the commands keep. */
int params_color(const char *arg, void *dst)
{
	return parse_color(arg, dst);
}

int params_proto(const char *arg, void *dst)
{
	return parse_proto(arg, dst);
}

int params_lb(const char *arg, void *dst)
{
	return parse_lb(arg, dst);
}

int params_split_by(const char *arg, void *dst)
{
	return parse_split_by(arg, dst);
}

int params_table_size(const char *arg, void *dst)
{
	return parse_table_size(arg, dst);
}

int params_weight(const char *arg, void *dst)
{
	return parse_weight(arg, dst);
}

int params_generation(const char *arg, void *dst)
{
	return parse_generation(arg, dst);
}

int params_reason(const char *arg, void *dst)
{
	if (audit_check_reason(arg))
		return -EINVAL;
	*(const char **)dst = arg;
	return 0;
}
