// SPDX-License-Identifier: GPL-2.0
/* watch.c: `watch`: a live terminal view of new flows and live flows per color, with history. */
#include <errno.h>
#include <stddef.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <sys/ioctl.h>

#include "commands.h"
#include "log.h"
#include "specs.h"
#include "snapshot.h"
#include "state.h"
#include "util.h"

#define HIST 240 /* samples kept per color; the screen shows as many as fit */

/* History of one service, keyed by service id and name so a re-created service starts afresh. */
struct watch_hist {
	__u32 svc;
	char name[BGS_NAME_LEN];
	double rate[BGS_NCOLORS][HIST]; /* new flows per second */
	double live[BGS_NCOLORS][HIST];
	int n;
};

static volatile sig_atomic_t stop_sig, resized;

static void on_signal(int sig)
{
	if (sig == SIGWINCH)
		resized = 1;
	else
		stop_sig = sig;
}

static const char *const spark[] = { " ", "▁", "▂", "▃", "▄", "▅", "▆", "▇", "█" };

static void sparkline(const double *v, int n, int width, double max)
{
	int i, start = n > width ? n - width : 0, lvl;

	for (i = 0; i < width - (n - start); i++)
		fputs(" ", stdout);
	for (i = start; i < n; i++) {
		lvl = max > 0 ? (int)(v[i] / max * 8 + 0.999) : 0;
		if (v[i] > 0 && lvl < 1)
			lvl = 1;
		fputs(spark[lvl > 8 ? 8 : lvl], stdout);
	}
}

static struct watch_hist *hist_for(struct watch_hist **h, size_t *nh, __u32 svc, const char *name)
{
	struct watch_hist *nhp;
	size_t i;

	for (i = 0; i < *nh; i++)
		if ((*h)[i].svc == svc && !strncmp((*h)[i].name, name, BGS_NAME_LEN))
			return &(*h)[i];
	nhp = realloc(*h, (*nh + 1) * sizeof(**h));
	if (!nhp)
		return NULL;
	*h = nhp;
	memset(&nhp[*nh], 0, sizeof(nhp[*nh]));
	nhp[*nh].svc = svc;
	snprintf(nhp[*nh].name, sizeof(nhp[*nh].name), "%s", name);
	return &nhp[(*nh)++];
}

static void hist_push(double *v, int n, double x)
{
	if (n == HIST)
		memmove(v, v + 1, (HIST - 1) * sizeof(*v));
	v[n == HIST ? HIST - 1 : n] = x;
}

static __u64 new_flows_of(const struct bgs_snapshot *s, __u32 svc, int c)
{
	size_t i;

	for (i = 0; i < s->nsvcs; i++)
		if (s->svcs[i].svc == svc)
			return s->svcs[i].color[c].tot.new_flows;
	return 0;
}

/* One node counter, and its rate since the last screen. */
static void draw_stat(const struct bgs_snapshot *prev, const struct bgs_snapshot *cur,
		      enum bgs_stat id, double secs, bool first)
{
	__u64 now = cur->stats[id], before = prev->stats[id];

	printf("  %s %llu", bgs_stat_names[id], (unsigned long long)now);
	if (!first && secs > 0 && now > before)
		printf(" (%.0f/s)", (now - before) / secs);
}

/* The node's flow-table health: LRU evictions, flows over the insert limit (untracked), RSTs
 * that missed; and packets from backend addresses left untouched, by reason.
 */
static void draw_node(const struct bgs_snapshot *prev, const struct bgs_snapshot *cur, double secs,
		      bool first)
{
	printf("flow table  evicted %llu", (unsigned long long)cur->evicted);
	draw_stat(prev, cur, BGS_STAT_UNTRACKED, secs, first);
	draw_stat(prev, cur, BGS_STAT_RST_MISS, secs, first);
	printf("\nreplies untouched");
	draw_stat(prev, cur, BGS_STAT_REPLY_NO_FLOW, secs, first);
	draw_stat(prev, cur, BGS_STAT_REPLY_WRONG_DEV, secs, first);
	draw_stat(prev, cur, BGS_STAT_REPLY_SUPERSEDED, secs, first);
	printf("\n");
}

static void draw(const struct bgs_snapshot *prev, const struct bgs_snapshot *cur,
		 struct watch_hist **h, size_t *nh, double secs, bool first)
{
	static const char *const ansi[BGS_NCOLORS] = { "\033[1;34m", "\033[1;32m" };
	struct winsize ws = { 0 };
	char ebuf[BGS_ADDRSTR_LEN], tbuf[16], pct[16];
	int width, spark_w, c;
	time_t t = time(NULL);
	size_t i;

	if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) || ws.ws_col < 40)
		ws.ws_col = 80;
	width = ws.ws_col;
	spark_w = (width - 46) / 2;
	if (spark_w < 4)
		spark_w = 4;
	strftime(tbuf, sizeof(tbuf), "%H:%M:%S", localtime(&t));

	fputs("\033[H\033[2J", stdout);
	printf("bgswitch watch  %s  %s   flows %llu live / %llu entries   (q quits)\n\n",
	       bgs_pin_root, tbuf, (unsigned long long)cur->live_total,
	       (unsigned long long)cur->flow_entries);
	if (!cur->nsvcs)
		printf("no services\n");
	for (i = 0; i < cur->nsvcs; i++) {
		const struct bgs_service_view *sv = &cur->svcs[i];
		struct watch_hist *wh = hist_for(h, nh, sv->svc, sv->rec.name);
		double rmax = 0, lmax = 0;
		int k;

		if (!wh)
			continue;
		for (c = 0; c < BGS_NCOLORS; c++) {
			__u64 now = sv->color[c].tot.new_flows,
			      before = new_flows_of(prev, sv->svc, c);
			double r = !first && secs > 0 && now >= before ? (now - before) / secs : 0;

			hist_push(wh->rate[c], wh->n, r);
			hist_push(wh->live[c], wh->n, sv->color[c].live);
		}
		if (wh->n < HIST)
			wh->n++;
		for (c = 0; c < BGS_NCOLORS; c++)
			for (k = 0; k < wh->n; k++) {
				rmax = wh->rate[c][k] > rmax ? wh->rate[c][k] : rmax;
				lmax = wh->live[c][k] > lmax ? wh->live[c][k] : lmax;
			}

		printf("%s  %s/%s  active %s%s\033[0m", sv->rec.name,
		       fmt_endpoint(sv->rec.vip.addr, sv->rec.vip.port, sv->rec.vip.family, ebuf,
				    sizeof(ebuf)),
		       proto_name(sv->rec.vip.proto),
		       share_color(sv->sw.share) == BGS_COLOR_NONE ?
			       "" :
			       ansi[share_color(sv->sw.share)],
		       share_label(sv->sw.share));
		if (share_color(sv->sw.share) == BGS_COLOR_NONE)
			printf(" (green %s)", fmt_share(sv->sw.share, pct, sizeof(pct)));
		printf("  generation %u\n", sv->sw.generation);
		printf("  %-6s %9s %-*s %8s %-*s\n", "COLOR", "NEW/S", spark_w, "", "LIVE", spark_w,
		       "");
		for (c = 0; c < BGS_NCOLORS; c++) {
			printf("  %s%-6s\033[0m %9.1f ", ansi[c], color_name(c),
			       wh->rate[c][wh->n - 1]);
			sparkline(wh->rate[c], wh->n, spark_w, rmax);
			printf(" %8llu ", (unsigned long long)sv->color[c].live);
			sparkline(wh->live[c], wh->n, spark_w, lmax);
			if (c != share_color(sv->sw.share) &&
			    share_color(sv->sw.share) != BGS_COLOR_NONE && sv->color[c].live)
				printf(" draining");
			printf("\n");
		}
		printf("\n");
	}
	draw_node(prev, cur, secs, first);
	fflush(stdout);
}

struct watch_args {
	__u32 interval;
};

static const struct bgs_pos watch_pos[] = {
	{ .name = "NAME", .complete = "service", .optional = true },
	BGS_POS_END,
};

static const struct bgs_opt watch_opts[] = {
	{ .name = "interval",
	  .short_name = 'i',
	  .type = BGS_OPT_U32,
	  .off = offsetof(struct watch_args, interval),
	  .metavar = "MS",
	  .help = "refresh period (default 1000, at least 100)",
	  .min = 100,
	  .max = 60000 },
	BGS_OPT_END,
};

const struct bgs_cmd_spec bgs_spec_watch = {
	.name = "watch",
	.summary = "a live view of new and live flows per color",
	.description = "A live view, refreshed every second: new flows per second and live flows "
		       "per color, with their history, for every service (or NAME). After a flip "
		       "the new color rises and the old color's live flows drain away. Below them, "
		       "the node's flow-table evictions, flows over the insert limit (untracked), "
		       "RSTs that missed, and replies left untouched by reason. q or Ctrl-C quits "
		       "and restores the terminal.",
	.pos = watch_pos,
	.opts = watch_opts,
};

/* Signals stop the view; keys are read one at a time, unechoed. Returns whether stdin is a
 * terminal (then *saved is its mode, to restore).
 */
static bool watch_terminal(struct termios *saved)
{
	struct sigaction sa = { 0 };
	struct termios raw;
	bool tty_in;

	sa.sa_handler = on_signal;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	sigaction(SIGWINCH, &sa, NULL);
	tty_in = isatty(STDIN_FILENO) && !tcgetattr(STDIN_FILENO, saved);
	if (tty_in) {
		raw = *saved;
		raw.c_lflag &= ~(ICANON | ECHO);
		raw.c_cc[VMIN] = 0;
		raw.c_cc[VTIME] = 0;
		tcsetattr(STDIN_FILENO, TCSANOW, &raw);
	}
	return tty_in;
}

/* Draw from *prev on, every interval, until q or a signal. */
static int watch_loop(struct bgs_state *st, const char *name, __u32 interval, bool tty_in,
		      struct bgs_snapshot *prev)
{
	struct bgs_snapshot cur = { 0 };
	struct watch_hist *hist = NULL;
	bool first = true;
	size_t nhist = 0;
	int err = 0;

	draw(prev, prev, &hist, &nhist, 0, true);
	while (!stop_sig) {
		struct pollfd pfd = { .fd = STDIN_FILENO, .events = POLLIN };
		__u64 deadline = prev->taken_ns + (__u64)interval * 1000000ULL, now = now_ns();
		int ms = deadline > now ? (int)((deadline - now) / 1000000ULL) : 0;
		char ch;

		if (poll(&pfd, tty_in ? 1 : 0, ms) > 0 && read(STDIN_FILENO, &ch, 1) == 1 &&
		    (ch == 'q' || ch == 'Q'))
			break;
		if (stop_sig)
			break;
		if (now_ns() < deadline && !resized)
			continue;
		resized = 0;
		err = snapshot_take(st, name, &cur);
		if (err)
			break;
		draw(prev, &cur, &hist, &nhist, (cur.taken_ns - prev->taken_ns) / 1e9, first);
		first = false;
		snapshot_free(prev);
		*prev = cur;
		memset(&cur, 0, sizeof(cur));
	}
	snapshot_free(&cur);
	free(hist);
	return err;
}

int do_watch(int argc, char **argv)
{
	struct watch_args a = { .interval = 1000 };
	struct bgs_snapshot prev = { 0 };
	struct termios saved;
	const char *name;
	struct bgs_parsed p;
	struct bgs_state st;
	bool tty_in;
	int err;

	err = params_parse(&bgs_spec_watch, argc, argv, &a, &p);
	if (err || p.help)
		return err;
	name = p.npos ? p.pos[0] : NULL;
	if (!isatty(STDOUT_FILENO)) {
		pr_warn("watch needs a terminal; use 'status' or 'status --json' in scripts\n");
		return -ENOTTY;
	}
	err = state_open(&st, false);
	if (err)
		return err;
	err = snapshot_take(&st, name, &prev);
	if (err)
		goto out_state;
	tty_in = watch_terminal(&saved);
	fputs("\033[?1049h\033[?25l", stdout); /* alternate screen, cursor hidden */
	err = watch_loop(&st, name, a.interval, tty_in, &prev);
	fputs("\033[?25h\033[?1049l", stdout);
	fflush(stdout);
	if (tty_in)
		tcsetattr(STDIN_FILENO, TCSANOW, &saved);
	snapshot_free(&prev);
out_state:
	state_close(&st);
	return err;
}
