// SPDX-License-Identifier: GPL-2.0
/* params_help.c: a command's --help and the subcommand dispatch, from its option table. */
#include <errno.h>
#include <string.h>

#include "log.h"
#include "params.h"
#include "state.h"
#include "util.h"

#define HELP_COL 26 /* where an option's help starts */
#define WRAP_COL 80

static void wrap_from(FILE *f, const char *text, int indent, int col);

/* "-m, --mode M" or "    --purge": the left column of an option. */
static int opt_left(const struct bgs_opt *o, char *buf, size_t len)
{
	char sh[5] = "    ";
	size_t n;

	if (o->short_name)
		snprintf(sh, sizeof(sh), "-%c, ", o->short_name);
	n = snprintf(buf, len, "%s--%s", sh, o->name);
	if (o->type == BGS_OPT_BOOL || o->type == BGS_OPT_COUNT || n >= len)
		return n;
	if (o->metavar)
		return n + snprintf(buf + n, len - n, " %s", o->metavar);
	for (const char *const *v = o->values; v && *v && n < len; v++)
		n += snprintf(buf + n, len - n, "%s%s", v == o->values ? " " : "|", *v);
	return n;
}

static void opt_line(const struct bgs_opt *o, FILE *f)
{
	char left[96];
	int n = opt_left(o, left, sizeof(left));

	if (n + 4 > HELP_COL)
		fprintf(f, "  %s\n", left);
	else
		fprintf(f, "  %-*s", HELP_COL - 2, left);
	wrap_from(f, o->help, HELP_COL, n + 4 > HELP_COL ? 0 : HELP_COL);
}

/* "bgswitch flip NAME [blue|green] [options]" */
void params_usage_line(const struct bgs_cmd_spec *spec, FILE *f)
{
	const struct bgs_pos *p;

	fprintf(f, "bgswitch%s%s", *spec->name ? " " : "", spec->name);
	if (spec->opts && spec->opts[0].name)
		fprintf(f, " [options]");
	for (p = spec->pos; p && p->name; p++)
		fprintf(f, p->optional ? " [%s%s]" : " %s%s", p->name, p->many ? "..." : "");
	fputc('\n', f);
}

static void fleet_section(const struct bgs_cmd_spec *spec, FILE *f)
{
	const struct bgs_opt *o;
	bool any = false, fleet_only = false;

	for (o = spec->opts; o && o->name; o++)
		fleet_only |= o->where == BGS_OPT_FLEET;
	if (!fleet_only)
		return;
	fprintf(f, "\nThe fleet form, with --etcd (see Fleet in bgswitch(8)):\n");
	for (o = spec->opts; o->name; o++)
		if (o->where == BGS_OPT_FLEET)
			opt_line(o, f);
	for (o = spec->opts; o->name; o++) {
		if (o->where != BGS_OPT_BOTH)
			continue;
		fprintf(f, "%s--%s", any ? ", " : "  with --etcd, also: ", o->name);
		any = true;
	}
	if (any)
		fputc('\n', f);
}

/* Text filled to WRAP_COL columns from column indent; '\n' breaks a line where it stands. */
void params_wrap(FILE *f, const char *text, int indent)
{
	wrap_from(f, text, indent, 0);
}

/* The same, from column col of a line already begun (col > 0: that far). */
static void wrap_from(FILE *f, const char *text, int indent, int col)
{
	bool word_before = false; /* on this line */
	int len;

	while (*text) {
		if (*text == '\n' || *text == ' ') {
			if (*text == '\n') {
				fputc('\n', f);
				col = 0;
				word_before = false;
			}
			text++;
			continue;
		}
		len = strcspn(text, " \n");
		if (word_before && col + 1 + len > WRAP_COL) {
			fputc('\n', f);
			col = 0;
			word_before = false;
		}
		if (!col)
			col = fprintf(f, "%*s", indent, "");
		col += fprintf(f, "%s%.*s", word_before ? " " : "", len, text);
		word_before = true;
		text += len;
	}
	if (col)
		fputc('\n', f);
}

/* bgswitch --help: every command's summary. */
static void command_list(FILE *f)
{
	int i;

	fprintf(f, "\nCommands:\n");
	for (i = 0; bgs_cmd_specs[i]; i++)
		if (!(bgs_cmd_specs[i]->flags & BGS_SPEC_HIDDEN))
			fprintf(f, "  %-14s %s\n", bgs_cmd_specs[i]->name,
				bgs_cmd_specs[i]->summary);
}

void params_usage(const struct bgs_cmd_spec *spec, FILE *f)
{
	const struct bgs_opt *o;

	fprintf(f, "Usage: ");
	params_usage_line(spec, f);
	fputc('\n', f);
	params_wrap(f, spec->description ? spec->description : spec->summary, 0);
	if (!*spec->name)
		command_list(f);
	fprintf(f, "\nOptions:\n");
	for (o = spec->opts; o && o->name; o++)
		if (o->where != BGS_OPT_FLEET)
			opt_line(o, f);
	fprintf(f, "  %-*s%s\n", HELP_COL - 2, "-h, --help", "this help");
	fleet_section(spec, f);
}

static void subcommand_usage(const char *cmd, const struct bgs_subcmd *subs, FILE *f)
{
	const struct bgs_subcmd *s;
	char full[64];

	for (s = subs; s->name; s++) {
		const struct bgs_cmd_spec *spec;

		snprintf(full, sizeof(full), "%s %s", cmd, s->name);
		spec = params_find(full);
		if (!spec)
			continue;
		fprintf(f, "%s ", s == subs ? "Usage:" : "      ");
		params_usage_line(spec, f);
	}
	fprintf(f, "\n");
	for (s = subs; s->name; s++) {
		const struct bgs_cmd_spec *spec;

		snprintf(full, sizeof(full), "%s %s", cmd, s->name);
		spec = params_find(full);
		if (spec)
			fprintf(f, "  %-6s %s\n", s->name, spec->summary);
	}
	fprintf(f, "\n'bgswitch %s SUBCOMMAND --help' for its options.\n", cmd);
}

/* "add, set, del or list" */
static void subcommand_list(const struct bgs_subcmd *subs, char *buf, size_t len)
{
	size_t n = 0;
	int i;

	buf[0] = '\0';
	for (i = 0; subs[i].name && n < len; i++)
		n += snprintf(buf + n, len - n, "%s%s", i ? (subs[i + 1].name ? ", " : " or ") : "",
			      subs[i].name);
}

int params_subcommand(const char *cmd, const struct bgs_subcmd *subs, int argc, char **argv)
{
	static char full[64];
	const struct bgs_subcmd *s;
	char list[128];

	subcommand_list(subs, list, sizeof(list));
	if (argc < 2) {
		pr_warn("%s needs a subcommand: %s (see 'bgswitch %s --help')\n", cmd, list, cmd);
		return BGS_ERR_USAGE;
	}
	if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
		subcommand_usage(cmd, subs, stdout);
		return 0;
	}
	for (s = subs; s->name; s++) {
		if (strcmp(argv[1], s->name))
			continue;
		snprintf(full, sizeof(full), "%s %s", cmd, s->name);
		bgs_cmd_name = full; /* for the messages of getopt_cmd() */
		return s->func(argc - 1, argv + 1);
	}
	pr_warn("unknown %s subcommand '%s': %s (see 'bgswitch %s --help')\n", cmd, argv[1], list,
		cmd);
	return BGS_ERR_USAGE;
}
