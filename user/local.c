// SPDX-License-Identifier: GPL-2.0
/* local.c: `local`: the cgroup socket hooks for local clients, and the namespaces they serve. */
#define _GNU_SOURCE /* setns */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "commands.h"
#include "local.h"
#include "log.h"
#include "specs.h"
#include "state.h"

#ifndef SO_NETNS_COOKIE
#define SO_NETNS_COOKIE 71
#endif

#define LINK_DIR "links"
#define CGROUP2_MNT "/run/bgswitch/cgroup2" /* where cgroup2 is mounted when it is nowhere */

/* The socket hooks: program name (pinned under progs/, its link under links/) and hook. */
static const struct {
	const char *name;
	enum bpf_attach_type type;
} hooks[] = {
	{ "bgs_connect4", BPF_CGROUP_INET4_CONNECT },
	{ "bgs_connect6", BPF_CGROUP_INET6_CONNECT },
	{ "bgs_sendmsg4", BPF_CGROUP_UDP4_SENDMSG },
	{ "bgs_sendmsg6", BPF_CGROUP_UDP6_SENDMSG },
	{ "bgs_recvmsg4", BPF_CGROUP_UDP4_RECVMSG },
	{ "bgs_recvmsg6", BPF_CGROUP_UDP6_RECVMSG },
	{ "bgs_peername4", BPF_CGROUP_INET4_GETPEERNAME },
	{ "bgs_peername6", BPF_CGROUP_INET6_GETPEERNAME },
	{ "bgs_release", BPF_CGROUP_INET_SOCK_RELEASE },
};
#define NHOOKS (sizeof(hooks) / sizeof(hooks[0]))

static int hook_path(char *buf, size_t len, const char *dir, const char *name)
{
	char rel[64];

	snprintf(rel, sizeof(rel), "%s/%s", dir, name);
	return state_pin_path(buf, len, rel);
}

/* attach: pin the hooks' programs next to the others, and move the hooks that are attached (their
 * pinned links) to this build's programs, each with one atomic link update.
 */
int local_progs_install(struct bpf_object *obj)
{
	char path[PATH_MAX];
	struct bpf_program *prog;
	size_t i;
	int fd, err;

	for (i = 0; i < NHOOKS; i++) {
		prog = bpf_object__find_program_by_name(obj, hooks[i].name);
		if (!prog || hook_path(path, sizeof(path), BGS_PROG_DIR, hooks[i].name))
			return -ENOENT;
		unlink(path);
		err = bpf_program__pin(prog, path);
		if (err) {
			pr_warn("cannot pin %s: %s\n", path, strerror(-err));
			return err;
		}
		if (hook_path(path, sizeof(path), LINK_DIR, hooks[i].name))
			return -ENAMETOOLONG;
		fd = bpf_obj_get(path);
		if (fd < 0)
			continue;
		err = bpf_link_update(fd, bpf_program__fd(prog), NULL);
		close(fd);
		if (err) {
			pr_warn("cannot move the %s hook to the new program: %s\n", hooks[i].name,
				strerror(-err));
			return err;
		}
		pr_debug("hook %s: program replaced\n", hooks[i].name);
	}
	return 0;
}

/* detach --purge: remove the hooks (their pinned links) and their programs' pins. */
void local_purge(void)
{
	char path[PATH_MAX];
	size_t i;

	for (i = 0; i < NHOOKS; i++) {
		if (!hook_path(path, sizeof(path), LINK_DIR, hooks[i].name))
			unlink(path);
		if (!hook_path(path, sizeof(path), BGS_PROG_DIR, hooks[i].name))
			unlink(path);
	}
	if (!state_pin_path(path, sizeof(path), LINK_DIR))
		rmdir(path);
}

/* The cgroup v2 hierarchy's root: where /proc/self/mounts has cgroup2, else mounted at
 * CGROUP2_MNT (and said so).
 */
static int cgroup2_root(char *buf, size_t len)
{
	char dev[256], dir[PATH_MAX], type[64];
	int found = 0;
	FILE *f;

	f = fopen("/proc/self/mounts", "re");
	if (!f) {
		pr_warn("cannot read /proc/self/mounts: %s\n", strerror(errno));
		return -errno;
	}
	while (!found && fscanf(f, "%255s %4095s %63s %*[^\n]", dev, dir, type) == 3)
		found = !strcmp(type, "cgroup2");
	fclose(f);
	if (found) {
		snprintf(buf, len, "%s", dir);
		return 0;
	}
	if ((mkdir("/run/bgswitch", 0755) && errno != EEXIST) ||
	    (mkdir(CGROUP2_MNT, 0755) && errno != EEXIST) ||
	    mount("cgroup2", CGROUP2_MNT, "cgroup2", 0, NULL)) {
		pr_warn("no cgroup2 hierarchy, and cannot mount one at %s: %s\n", CGROUP2_MNT,
			strerror(errno));
		return -errno;
	}
	pr_info("no cgroup2 hierarchy was mounted: mounted it at %s\n", CGROUP2_MNT);
	snprintf(buf, len, "%s", CGROUP2_MNT);
	return 0;
}

/* Attach every hook that is not attached yet at the cgroup v2 root, each by a link pinned under
 * links/ so that it outlives the command. A hook attached here is removed again on failure.
 */
static int hooks_attach(void)
{
	char root[PATH_MAX], path[PATH_MAX];
	bool made[NHOOKS] = { false };
	int cg = -1, prog, link, err = 0;
	size_t i;

	if (state_pin_path(path, sizeof(path), LINK_DIR))
		return -ENAMETOOLONG;
	if (mkdir(path, 0700) && errno != EEXIST) {
		pr_warn("cannot create %s: %s\n", path, strerror(errno));
		return -errno;
	}
	for (i = 0; i < NHOOKS; i++) {
		hook_path(path, sizeof(path), LINK_DIR, hooks[i].name);
		if (!access(path, F_OK))
			continue;
		if (cg < 0) {
			err = cgroup2_root(root, sizeof(root));
			if (err)
				goto out;
			cg = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
			if (cg < 0) {
				err = -errno;
				pr_warn("cannot open %s: %s\n", root, strerror(errno));
				goto out;
			}
		}
		hook_path(path, sizeof(path), BGS_PROG_DIR, hooks[i].name);
		prog = bpf_obj_get(path);
		if (prog < 0) {
			err = -errno;
			pr_warn("no pinned program %s (a state from an older build: 'attach "
				"--replace' pins it)\n",
				path);
			goto out;
		}
		link = bpf_link_create(prog, cg, hooks[i].type, NULL);
		close(prog);
		if (link < 0) {
			err = link;
			pr_warn("cannot attach %s at %s: %s\n", hooks[i].name, root,
				strerror(-err));
			goto out;
		}
		hook_path(path, sizeof(path), LINK_DIR, hooks[i].name);
		err = bpf_obj_pin(link, path);
		close(link);
		if (err) {
			err = -errno;
			pr_warn("cannot pin %s: %s\n", path, strerror(errno));
			goto out;
		}
		made[i] = true;
	}
	if (cg >= 0)
		pr_info("socket hooks attached at the cgroup v2 root %s\n", root);
out:
	for (i = 0; err && i < NHOOKS; i++) {
		if (made[i] && !hook_path(path, sizeof(path), LINK_DIR, hooks[i].name))
			unlink(path);
	}
	if (cg >= 0)
		close(cg);
	return err;
}

struct cookie_req {
	const char *path;
	__u64 cookie;
	int err;
};

/* The cookie of the network namespace the calling thread is in. */
static int own_netns_cookie(__u64 *cookie)
{
	socklen_t len = sizeof(*cookie);
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), err = 0;

	if (s < 0 && errno == EAFNOSUPPORT)
		s = socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (s < 0)
		return -errno;
	if (getsockopt(s, SOL_SOCKET, SO_NETNS_COOKIE, cookie, &len))
		err = -errno;
	close(s);
	return err;
}

/* A thread of its own enters the namespace (setns changes only the calling thread's), reads its
 * cookie, and ends: the command itself never leaves its namespace.
 */
static void *cookie_thread(void *arg)
{
	struct cookie_req *r = arg;
	int fd = open(r->path, O_RDONLY | O_CLOEXEC);

	if (fd < 0) {
		r->err = -errno;
		return NULL;
	}
	if (setns(fd, CLONE_NEWNET))
		r->err = errno == EINVAL ? -ENOTTY : -errno;
	else
		r->err = own_netns_cookie(&r->cookie);
	close(fd);
	return NULL;
}

/* The cookie of the network namespace at path, without a word on failure. */
static int netns_cookie_at(const char *path, __u64 *cookie)
{
	struct cookie_req r = { .path = path };
	pthread_t t;
	int err;

	err = pthread_create(&t, NULL, cookie_thread, &r);
	if (err)
		return -err;
	pthread_join(t, NULL);
	if (!r.err)
		*cookie = r.cookie;
	return r.err;
}

/* The cookie of the network namespace at path (NULL: the command's own). */
static int netns_cookie(const char *path, __u64 *cookie)
{
	int err = path ? netns_cookie_at(path, cookie) : own_netns_cookie(cookie);

	if (err)
		pr_warn("%s%s%s: %s\n", path ? "'" : "", path ? path : "this network namespace",
			path ? "'" : "",
			err == -ENOTTY ? "not a network namespace" : strerror(-err));
	return err;
}

/* A name for a namespace cookie: "this namespace", or its name under /run/netns. */
static void netns_name(__u64 cookie, char *buf, size_t len)
{
	char path[PATH_MAX];
	struct dirent *e;
	__u64 other;
	DIR *d;

	snprintf(buf, len, "-");
	if (!own_netns_cookie(&other) && other == cookie) {
		snprintf(buf, len, "(this namespace)");
		return;
	}
	d = opendir("/run/netns");
	if (!d)
		return;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/run/netns/%s", e->d_name);
		if (!netns_cookie_at(path, &other) && other == cookie) {
			snprintf(buf, len, "%s", path);
			break;
		}
	}
	closedir(d);
}

struct local_args {
	const char *netns;
};

static const struct bgs_opt local_opts[] = {
	{ .name = "netns",
	  .short_name = 'n',
	  .type = BGS_OPT_STR,
	  .off = offsetof(struct local_args, netns),
	  .metavar = "PATH",
	  .help = "the namespace (/run/netns/NAME, /proc/PID/ns/net); default: the one this "
		  "command runs in",
	  .complete = "file" },
	BGS_OPT_END,
};

#define LOCAL_HELP                                                                                \
	"Serve local clients: sockets of the named network namespaces that connect or send to a " \
	"VIP go to a backend chosen as a new flow's is (cgroup v2 socket hooks at the root, "     \
	"attached by the first 'local add' and removed by 'detach --purge')."

const struct bgs_cmd_spec bgs_spec_local_add = {
	.name = "local add",
	.summary = "serve the local clients of a network namespace",
	.description = LOCAL_HELP,
	.opts = local_opts,
};

const struct bgs_cmd_spec bgs_spec_local_del = {
	.name = "local del",
	.summary = "stop serving the local clients of a network namespace",
	.description = LOCAL_HELP,
	.opts = local_opts,
};

const struct bgs_cmd_spec bgs_spec_local_list = {
	.name = "local list",
	.summary = "list the network namespaces whose local clients are served",
};

static int local_list(struct bgs_state *st)
{
	__u64 key, next;
	char name[PATH_MAX];
	int err, n = 0;

	for (err = bpf_map_get_next_key(st->fd[BGS_M_LOCAL_NETNS], NULL, &key); !err;
	     err = bpf_map_get_next_key(st->fd[BGS_M_LOCAL_NETNS], &key, &next), key = next) {
		netns_name(key, name, sizeof(name));
		printf("netns cookie %llu %s\n", (unsigned long long)key, name);
		n++;
	}
	if (!n)
		printf("no local namespaces\n");
	return 0;
}

static int local_change(struct bgs_state *st, bool add, const char *path)
{
	const char *what = path ? path : "this network namespace";
	__u32 one = 1;
	__u64 cookie;
	int err;

	err = netns_cookie(path, &cookie);
	if (err)
		return err;
	if (!add) {
		if (bpf_map_delete_elem(st->fd[BGS_M_LOCAL_NETNS], &cookie)) {
			pr_warn("%s is not a local namespace\n", what);
			return -ENOENT;
		}
		pr_info("%s (netns cookie %llu): local clients no longer served\n", what,
			(unsigned long long)cookie);
		return 0;
	}
	err = hooks_attach();
	if (err)
		return err;
	if (bpf_map_update_elem(st->fd[BGS_M_LOCAL_NETNS], &cookie, &one, BPF_NOEXIST)) {
		if (errno == EEXIST) {
			pr_info("%s (netns cookie %llu): already served\n", what,
				(unsigned long long)cookie);
			return 0;
		}
		pr_warn("cannot add %s: %s\n", what, strerror(errno));
		return -errno;
	}
	pr_info("%s (netns cookie %llu): local clients served\n", what, (unsigned long long)cookie);
	return 0;
}

/* local add|del|list: parse, then open the state under its lock. */
static int local_run(const struct bgs_cmd_spec *spec, int argc, char **argv)
{
	struct local_args a = { 0 };
	struct bgs_parsed p;
	struct bgs_state st;
	int err;

	err = params_parse(spec, argc, argv, &a, &p);
	if (err || p.help)
		return err;
	err = state_open(&st, true);
	if (err)
		return err;
	if (spec == &bgs_spec_local_list)
		err = local_list(&st);
	else
		err = local_change(&st, spec == &bgs_spec_local_add, a.netns);
	state_close(&st);
	return err;
}

static int local_add(int argc, char **argv)
{
	return local_run(&bgs_spec_local_add, argc, argv);
}

static int local_del(int argc, char **argv)
{
	return local_run(&bgs_spec_local_del, argc, argv);
}

static int local_ls(int argc, char **argv)
{
	return local_run(&bgs_spec_local_list, argc, argv);
}

int do_local(int argc, char **argv)
{
	static const struct bgs_subcmd subs[] = {
		{ "add", local_add },
		{ "del", local_del },
		{ "list", local_ls },
		{ NULL, NULL },
	};

	return params_subcommand("local", subs, argc, argv);
}
