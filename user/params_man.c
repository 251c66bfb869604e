// SPDX-License-Identifier: GPL-2.0
/* params_man.c: the man page from its template (doc/bgswitch.8.in) and the specs. The template's
 * lines @SYNOPSIS@, @USAGE CMD[, CMD...]@ and @OPTIONS CMD@ ... @END@ become the synopsis, a
 * command's tag and its option list; inside @OPTIONS, "@@name" starts the hand-written
 * paragraph of option --name (an option without one gets its table help).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "params.h"

#define LINE_LEN 4096
#define MAX_PROSE 64

/* Text with '-' as "\-" and '\' as "\e". */
static void roff(FILE *f, const char *s)
{
	for (; *s; s++) {
		if (*s == '-')
			fputs("\\-", f);
		else if (*s == '\\')
			fputs("\\e", f);
		else
			fputc(*s, f);
	}
}

/* "\fBa\fP|\fBb\fP" */
static void roff_words(FILE *f, const char *const *v)
{
	for (const char *const *w = v; *w; w++) {
		fputs(w == v ? "\\fB" : "|\\fB", f);
		roff(f, *w);
		fputs("\\fP", f);
	}
}

static void roff_value(FILE *f, const struct bgs_opt *o)
{
	if (o->type == BGS_OPT_BOOL || o->type == BGS_OPT_COUNT)
		return;
	fputc(' ', f);
	if (o->metavar || !o->values) {
		fputs("\\fI", f);
		roff(f, o->metavar ? o->metavar : "X");
		fputs("\\fP", f);
	} else {
		roff_words(f, o->values);
	}
}

static void roff_positionals(FILE *f, const struct bgs_pos *p)
{
	for (; p && p->name; p++) {
		fputs(p->optional ? " [" : " ", f);
		if (p->values) {
			roff_words(f, p->values);
		} else {
			fputs("\\fI", f);
			roff(f, p->name);
			fputs("\\fP", f);
		}
		if (p->many)
			fputs("...", f);
		if (p->optional)
			fputc(']', f);
	}
}

/* One synopsis line: the options accepted in the form want, --etcd first in the fleet form. */
static void synopsis_line(FILE *f, const struct bgs_cmd_spec *s, unsigned int want)
{
	const struct bgs_opt *o;

	fputs("\\fBbgswitch", f);
	if (*s->name)
		fputc(' ', f);
	roff(f, s->name);
	fputs("\\fP", f);
	if (!*s->name) {
		for (o = s->opts; o->name; o++) {
			fputs(" [\\fB\\-\\-", f);
			roff(f, o->name);
			fputs("\\fP", f);
			roff_value(f, o);
			fputc(']', f);
		}
	}
	roff_positionals(f, s->pos);
	for (o = s->opts; *s->name && o && o->name; o++) {
		unsigned int w = o->where ? o->where : BGS_OPT_LOCAL;
		bool etcd = want == BGS_OPT_FLEET && !strcmp(o->name, "etcd");

		if (!(w & want))
			continue;
		fputs(etcd ? " \\fB\\-\\-" : " [\\fB\\-\\-", f);
		roff(f, o->name);
		fputs("\\fP", f);
		roff_value(f, o);
		fputs(etcd ? "" : "]", f);
	}
	fputs("\n.br\n", f);
}

static bool fleet_form(const struct bgs_cmd_spec *s)
{
	for (const struct bgs_opt *o = s->opts; o && o->name; o++)
		if (o->where == BGS_OPT_FLEET)
			return true;
	return false;
}

static void gen_synopsis(FILE *f)
{
	int i;

	for (i = 0; bgs_cmd_specs[i]; i++) {
		const struct bgs_cmd_spec *s = bgs_cmd_specs[i];

		if (*s->name && (s->flags & BGS_SPEC_HIDDEN))
			continue;
		synopsis_line(f, s, BGS_OPT_LOCAL);
		if (fleet_form(s))
			synopsis_line(f, s, BGS_OPT_FLEET);
	}
	fputs("\\fBbgswitch\\fP [\\fICOMMAND\\fP] \\fB\\-\\-help\\fP\n.br\n"
	      "\\fBbgswitch \\-\\-version\\fP\n",
	      f);
}

/* "@USAGE service add, service del@": the tag of a command's paragraph. */
static int gen_usage(FILE *f, char *names)
{
	const struct bgs_cmd_spec *s;
	char *name, *save;
	bool first = true;

	for (name = strtok_r(names, ",", &save); name; name = strtok_r(NULL, ",", &save)) {
		name += strspn(name, " ");
		s = params_find(name);
		if (!s) {
			pr_warn("man template: no command '%s'\n", name);
			return -EINVAL;
		}
		fputs(first ? ".TP\n\\fB" : ".TQ\n\\fB", f);
		roff(f, s->name);
		fputs("\\fP", f);
		roff_positionals(f, s->pos);
		if (s->opts && s->opts[0].name)
			fputs(" [\\fIOPTIONS\\fP]", f);
		fputc('\n', f);
		first = false;
	}
	return 0;
}

/* The hand-written paragraphs of one @OPTIONS block, by option name. */
struct prose {
	char *name[MAX_PROSE];
	char *text[MAX_PROSE];
	int n;
};

static void prose_free(struct prose *p)
{
	for (int i = 0; i < p->n; i++) {
		free(p->name[i]);
		free(p->text[i]);
	}
}

/* Read up to @END@: the paragraph of every "@@name". */
static int prose_read(FILE *in, struct prose *p, const char *cmd)
{
	char line[LINE_LEN];
	size_t len = 0;
	FILE *cur = NULL;

	while (fgets(line, sizeof(line), in)) {
		if (!strcmp(line, "@END@\n") || !strncmp(line, "@@", 2)) {
			if (cur)
				fclose(cur);
			cur = NULL;
			if (line[0] == '@' && line[1] == 'E')
				return 0;
			if (p->n == MAX_PROSE)
				break;
			line[strcspn(line, "\n")] = '\0';
			p->name[p->n] = strdup(line + 2);
			cur = open_memstream(&p->text[p->n], &len);
			p->n++;
			if (!p->name[p->n - 1] || !cur)
				return -ENOMEM;
			continue;
		}
		if (cur)
			fputs(line, cur);
	}
	if (cur)
		fclose(cur);
	pr_warn("man template: @OPTIONS %s@ has no @END@, or too many options\n", cmd);
	return -EINVAL;
}

/* "Help text" as a sentence: capital first letter, final period. */
static void help_sentence(FILE *f, const char *help, bool fleet)
{
	size_t len = strlen(help);

	if (fleet)
		fputs("The fleet form: ", f);
	fputc(fleet ? help[0] : (help[0] >= 'a' && help[0] <= 'z' ? help[0] - 32 : help[0]), f);
	roff(f, help + 1);
	fputs(len && help[len - 1] == '.' ? "\n" : ".\n", f);
}

static void option_entry(FILE *f, const struct bgs_opt *o, const struct prose *p)
{
	int i;

	fputs(".TP\n", f);
	if (o->short_name)
		fprintf(f, "\\fB\\-%c\\fP, ", o->short_name);
	fputs("\\fB\\-\\-", f);
	roff(f, o->name);
	fputs("\\fP", f);
	roff_value(f, o);
	fputc('\n', f);
	for (i = 0; i < p->n; i++) {
		if (!strcmp(p->name[i], o->name)) {
			fputs(p->text[i], f);
			return;
		}
	}
	help_sentence(f, o->help, o->where == BGS_OPT_FLEET);
}

/* Every paragraph must belong to an option of the table. */
static int prose_check(const struct bgs_cmd_spec *s, const struct prose *p)
{
	const struct bgs_opt *o;
	int i;

	for (i = 0; i < p->n; i++) {
		for (o = s->opts; o && o->name && strcmp(o->name, p->name[i]); o++)
			;
		if (!o || !o->name) {
			pr_warn("man template: '%s' has no option --%s\n",
				*s->name ? s->name : "bgswitch", p->name[i]);
			return -EINVAL;
		}
	}
	return 0;
}

/* "@OPTIONS CMD@": the option list in table order, local options before fleet-only ones. */
static int gen_options(FILE *in, FILE *f, const char *cmd)
{
	const struct bgs_cmd_spec *s = params_find(strcmp(cmd, "bgswitch") ? cmd : "");
	struct prose p = { .n = 0 };
	const struct bgs_opt *o;
	int err, pass;

	if (!s) {
		pr_warn("man template: no command '%s'\n", cmd);
		return -EINVAL;
	}
	err = prose_read(in, &p, cmd);
	if (!err)
		err = prose_check(s, &p);
	if (err)
		goto out;
	if (*s->name)
		fputs(".RS\n", f);
	for (pass = 0; pass < 2; pass++)
		for (o = s->opts; o && o->name; o++)
			if ((o->where == BGS_OPT_FLEET) == pass)
				option_entry(f, o, &p);
	if (*s->name)
		fputs(".RE\n", f);
out:
	prose_free(&p);
	return err;
}

int params_gen_man(FILE *in, FILE *out)
{
	char line[LINE_LEN];
	int err = 0;

	while (!err && fgets(line, sizeof(line), in)) {
		size_t len = strlen(line);

		if (strncmp(line, "@", 1) || len < 3 || strcmp(line + len - 2, "@\n")) {
			fputs(line, out);
			continue;
		}
		line[len - 2] = '\0';
		if (!strcmp(line, "@SYNOPSIS"))
			gen_synopsis(out);
		else if (!strncmp(line, "@USAGE ", 7))
			err = gen_usage(out, line + 7);
		else if (!strncmp(line, "@OPTIONS ", 9))
			err = gen_options(in, out, line + 9);
		else
			fprintf(out, "%s@\n", line);
	}
	return err ? err : ferror(out) ? -EIO : 0;
}
