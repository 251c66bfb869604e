// SPDX-License-Identifier: GPL-2.0
/* cmdtime: the wall time of commands, from spawn to exit, for `make bench` (part "cmd").
 *
 *   cmdtime ROUNDS [--in FILE] CMD [ARG...] [--|--- [--in FILE] CMD [ARG...]]...
 *
 * Runs the commands in turn, ROUNDS rounds of one run each (so that a change of load on the
 * machine falls on all of them alike), and prints {"ns": [[run, ...], ...]}: one list of wall
 * times in ns per command, in the order given. "--" separates commands, "---" groups of them:
 * a group's commands run in their order, and round r starts with group r (modulo the groups),
 * so that no command always follows the same one. Each run is posix_spawn() to waitpid(), with
 * stdout to /dev/null, stdin from FILE (--in) or /dev/null, stderr inherited. A run that exits
 * non-zero stops it: exit status 1, and the command on stderr.
 */
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>

#define MAX_CMDS 16

extern char **environ;

struct cmd {
	char **argv;
	int group;
	const char *in; /* stdin, or NULL: /dev/null */
	uint64_t *ns;
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static bool is_sep(const char *arg)
{
	return !strcmp(arg, "--") || !strcmp(arg, "---");
}

/* Split argv at "--" and "---" into commands; each may start with --in FILE. Returns their
 * count, and the count of groups in *ngroups.
 */
static int parse_cmds(int argc, char **argv, struct cmd *cmds, int *ngroups)
{
	int n = 0, i = 0, group = 0;

	while (i < argc) {
		if (n == MAX_CMDS)
			return -1;
		cmds[n].group = group;
		cmds[n].in = NULL;
		if (i + 1 < argc && !strcmp(argv[i], "--in")) {
			cmds[n].in = argv[i + 1];
			i += 2;
		}
		if (i >= argc || is_sep(argv[i]))
			return -1;
		cmds[n].argv = &argv[i];
		while (i < argc && !is_sep(argv[i]))
			i++;
		if (i < argc) {
			group += !strcmp(argv[i], "---");
			argv[i++] = NULL; /* ends this command's argv */
		}
		n++;
	}
	*ngroups = group + 1;
	return n;
}

/* One run of a command: its wall time in *ns. Returns 0, or -1 (said on stderr). */
static int run_one(const struct cmd *c, uint64_t *ns)
{
	posix_spawn_file_actions_t fa;
	uint64_t t0;
	pid_t pid;
	int status, err;

	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 0, c->in ? c->in : "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
	t0 = now_ns();
	err = posix_spawnp(&pid, c->argv[0], &fa, NULL, c->argv, environ);
	if (!err) {
		while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
			;
		*ns = now_ns() - t0;
	}
	posix_spawn_file_actions_destroy(&fa);
	if (err) {
		fprintf(stderr, "cmdtime: %s: %s\n", c->argv[0], strerror(err));
		return -1;
	}
	if (!WIFEXITED(status) || WEXITSTATUS(status)) {
		fprintf(stderr, "cmdtime: %s exited with status %d\n", c->argv[0],
			WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct cmd cmds[MAX_CMDS];
	int n, i, r, g, ngroups = 0;
	long rounds;

	rounds = argc > 2 ? strtol(argv[1], NULL, 10) : 0;
	n = rounds > 0 && rounds <= 1000000 ? parse_cmds(argc - 2, argv + 2, cmds, &ngroups) : -1;
	if (n <= 0) {
		fprintf(stderr, "usage: cmdtime ROUNDS [--in FILE] CMD [ARG...] "
				"[--|--- [--in FILE] CMD [ARG...]]...\n");
		return 2;
	}
	for (i = 0; i < n; i++) {
		cmds[i].ns = calloc(rounds, sizeof(uint64_t));
		if (!cmds[i].ns)
			return 1;
	}
	for (r = 0; r < rounds; r++)
		for (g = 0; g < ngroups; g++)
			for (i = 0; i < n; i++)
				if (cmds[i].group == (r + g) % ngroups &&
				    run_one(&cmds[i], &cmds[i].ns[r]))
					return 1;
	printf("{\"ns\": [");
	for (i = 0; i < n; i++) {
		printf("%s[", i ? ", " : "");
		for (r = 0; r < rounds; r++)
			printf("%s%llu", r ? ", " : "", (unsigned long long)cmds[i].ns[r]);
		printf("]");
	}
	printf("]}\n");
	return 0;
}
