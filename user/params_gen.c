// SPDX-License-Identifier: GPL-2.0
/* params_gen.c: the bash completion's tables and the man page's synopsis, usage tags and option
 * lists (params_man.c), from the specs: `bgswitch __gen completion`, `bgswitch __gen man`.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "log.h"
#include "params.h"

static bool listed(const struct bgs_cmd_spec *s)
{
	return !(s->flags & BGS_SPEC_HIDDEN);
}

static bool takes_arg(const struct bgs_opt *o)
{
	return o->type != BGS_OPT_BOOL && o->type != BGS_OPT_COUNT;
}

static unsigned int where(const struct bgs_opt *o)
{
	return o->where ? o->where : BGS_OPT_LOCAL;
}

/* ---- bash completion ---- */

/* "-m --mode -f --flows": the option words of spec accepted in the form want (0: all). */
static void opt_words(FILE *f, const struct bgs_cmd_spec *s, unsigned int want, bool args_only)
{
	const struct bgs_opt *o;
	bool sp = false;

	for (o = s->opts; o && o->name; o++) {
		if ((want && !(where(o) & want)) || (args_only && !takes_arg(o)))
			continue;
		if (o->short_name)
			fprintf(f, "%s-%c", sp ? " " : "", o->short_name);
		fprintf(f, "%s--%s", sp || o->short_name ? " " : "", o->name);
		sp = true;
	}
	if (!args_only)
		fprintf(f, "%s-h --help", sp ? " " : "");
}

static bool has_fleet_only(const struct bgs_cmd_spec *s)
{
	const struct bgs_opt *o;

	for (o = s->opts; o && o->name; o++)
		if (where(o) == BGS_OPT_FLEET)
			return true;
	return false;
}

/* How a value completes: "words:a b", or the kind ("file", "dir", "iface", "iface-list",
 * "service"), or nothing.
 */
static void value_kind(FILE *f, const char *const *values, const char *complete)
{
	const char *const *v;

	if (values) {
		fprintf(f, "words:");
		for (v = values; *v; v++)
			fprintf(f, "%s%s", v == values ? "" : " ", *v);
	} else if (complete) {
		fprintf(f, "%s", complete);
	}
}

static void gen_spec_case(FILE *f, const struct bgs_cmd_spec *s)
{
	fprintf(f, "\t\"%s\")\n\t\topts=\"", s->name);
	opt_words(f, s, BGS_OPT_LOCAL, false);
	fprintf(f, "\"\n\t\targopts=\"");
	opt_words(f, s, BGS_OPT_LOCAL, true);
	fprintf(f, "\"\n");
	if (has_fleet_only(s)) {
		fprintf(f, "\t\tfleetopts=\"");
		opt_words(f, s, BGS_OPT_FLEET, false);
		fprintf(f, "\"\n\t\tfleetargopts=\"");
		opt_words(f, s, BGS_OPT_FLEET, true);
		fprintf(f, "\"\n");
	}
	fprintf(f, "\t\t;;\n");
}

static void gen_optarg_cases(FILE *f, const struct bgs_cmd_spec *s)
{
	const struct bgs_opt *o;

	for (o = s->opts; o && o->name; o++) {
		if (!takes_arg(o) || (!o->values && !o->complete))
			continue;
		fprintf(f, "\t\"%s --%s\"", s->name, o->name);
		if (o->short_name)
			fprintf(f, " | \"%s -%c\"", s->name, o->short_name);
		fprintf(f, ") echo \"");
		value_kind(f, o->values, o->complete);
		fprintf(f, "\" ;;\n");
	}
}

static void gen_posarg_cases(FILE *f, const struct bgs_cmd_spec *s)
{
	const struct bgs_pos *p;
	int i;

	for (p = s->pos, i = 0; p && p->name; p++, i++) {
		if (!p->values && !p->complete)
			continue;
		fprintf(f, "\t\"%s %d\") echo \"", s->name, i);
		value_kind(f, p->values, p->complete);
		fprintf(f, "\" ;;\n");
	}
}

/* "service": "add set del list"; "" for a command without subcommands. */
static void gen_subcommands(FILE *f)
{
	const char *prev = "";
	size_t plen = 0;
	int i;

	fprintf(f, "_bgswitch_subs()\n{\n\tcase $1 in\n");
	for (i = 0; bgs_cmd_specs[i]; i++) {
		const char *name = bgs_cmd_specs[i]->name, *sp = strchr(name, ' ');

		if (!sp || !listed(bgs_cmd_specs[i]))
			continue;
		if ((size_t)(sp - name) != plen || strncmp(name, prev, plen)) {
			fprintf(f, "%s\t%.*s) echo \"", *prev ? "\" ;;\n" : "", (int)(sp - name),
				name);
			prev = name;
			plen = sp - name;
		} else {
			fputc(' ', f);
		}
		fprintf(f, "%s", sp + 1);
	}
	fprintf(f, "%s\tesac\n}\n\n", *prev ? "\" ;;\n" : "");
}

static void gen_commands(FILE *f)
{
	const char *prev = "";
	size_t plen = 0;
	int i;

	fprintf(f, "_bgswitch_commands=\"");
	for (i = 0; bgs_cmd_specs[i]; i++) {
		const char *name = bgs_cmd_specs[i]->name;
		size_t len = strcspn(name, " ");

		if (!listed(bgs_cmd_specs[i]) || (len == plen && !strncmp(name, prev, len)))
			continue;
		fprintf(f, "%s%.*s", *prev ? " " : "", (int)len, name);
		prev = name;
		plen = len;
	}
	fprintf(f, "\"\n_bgswitch_global_opts=\"");
	opt_words(f, params_find(""), 0, false);
	fprintf(f, "\"\n_bgswitch_global_argopts=\"");
	opt_words(f, params_find(""), 0, true);
	fprintf(f, "\"\n\n");
}

static void join_words(FILE *f, const char *const *v)
{
	for (const char *const *w = v; w && *w; w++)
		fprintf(f, "%s%s", w == v ? "" : " ", *w);
}

/* The tables as tab-separated lines, for the tests: "spec NAME LISTED SUMMARY", then its "opt
 * SPEC LONG SHORT ARG WHERE VALUES COMPLETE" and "pos SPEC INDEX NAME OPTIONAL VALUES COMPLETE"
 * lines (SPEC "" is the global options).
 */
static int gen_table(FILE *f)
{
	const struct bgs_opt *o;
	const struct bgs_pos *p;
	int i, n;

	for (i = 0; bgs_cmd_specs[i]; i++) {
		const struct bgs_cmd_spec *s = bgs_cmd_specs[i];

		fprintf(f, "spec\t%s\t%d\t%s\n", s->name, listed(s), s->summary);
		for (o = s->opts; o && o->name; o++) {
			fprintf(f, "opt\t%s\t%s\t%c\t%d\t%u\t", s->name, o->name,
				o->short_name ? o->short_name : '-', takes_arg(o), where(o));
			join_words(f, o->values);
			fprintf(f, "\t%s\n", o->complete ? o->complete : "");
		}
		for (p = s->pos, n = 0; p && p->name; p++, n++) {
			fprintf(f, "pos\t%s\t%d\t%s\t%d\t", s->name, n, p->name, p->optional);
			join_words(f, p->values);
			fprintf(f, "\t%s\n", p->complete ? p->complete : "");
		}
	}
	return ferror(f) ? -EIO : 0;
}

int do_gen(int argc, char **argv)
{
	if (argc == 2 && !strcmp(argv[1], "table"))
		return gen_table(stdout);
	if (argc == 2 && !strcmp(argv[1], "completion"))
		return params_gen_completion(stdin, stdout);
	if (argc == 2 && !strcmp(argv[1], "man"))
		return params_gen_man(stdin, stdout);
	pr_warn("usage: bgswitch __gen table, or __gen completion|man < TEMPLATE\n");
	return -EINVAL;
}

static int gen_completion_specs(FILE *f)
{
	int i;

	fprintf(f,
		"# Generated from the option tables of user/*.c by 'bgswitch __gen completion'.\n");
	gen_commands(f);
	gen_subcommands(f);
	fprintf(f,
		"# The options of a command: opts (the local form), argopts (those that take a\n"
		"# value), fleetopts and fleetargopts (the form with --etcd, where there is one).\n"
		"_bgswitch_spec()\n{\n\topts=\"-h --help\" argopts= fleetopts= fleetargopts=\n"
		"\tcase $1 in\n");
	for (i = 0; bgs_cmd_specs[i]; i++)
		if (listed(bgs_cmd_specs[i]))
			gen_spec_case(f, bgs_cmd_specs[i]);
	fprintf(f,
		"\tesac\n}\n\n# How the value of option $2 of command $1 (\"\": a global option)\n"
		"# completes.\n_bgswitch_optarg()\n{\n\tcase \"$1 $2\" in\n");
	for (i = 0; bgs_cmd_specs[i]; i++)
		if (listed(bgs_cmd_specs[i]) || !*bgs_cmd_specs[i]->name)
			gen_optarg_cases(f, bgs_cmd_specs[i]);
	fprintf(f, "\tesac\n}\n\n# How positional argument $2 (from 0) of command $1 completes.\n"
		   "_bgswitch_posarg()\n{\n\tcase \"$1 $2\" in\n");
	for (i = 0; bgs_cmd_specs[i]; i++)
		if (listed(bgs_cmd_specs[i]))
			gen_posarg_cases(f, bgs_cmd_specs[i]);
	fprintf(f, "\tesac\n}\n");
	return ferror(f) ? -EIO : 0;
}

int params_gen_completion(FILE *in, FILE *out)
{
	char line[1024];
	int err = 0;

	while (!err && fgets(line, sizeof(line), in)) {
		if (strcmp(line, "@SPECS@\n"))
			fputs(line, out);
		else
			err = gen_completion_specs(out);
	}
	return err ? err : ferror(out) ? -EIO : 0;
}
