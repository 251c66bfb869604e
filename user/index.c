// SPDX-License-Identifier: GPL-2.0
/* index.c: the service index, service name -> id, so that a command finds its service with one
 * lookup instead of a scan of every service id.
 *
 * It is a hint, never the truth: service_find() checks the record it points at (its name, and
 * its VIP entry pointing back), and a missing or stale entry costs a scan, which sets it right.
 * So nothing else has to keep it in step, a command killed half way cannot make it lie, and an
 * LRU hash bounds it without any clean-up. No BPF program reads it: it is no part of the map
 * layout, and a state attached by an older build gets it from the first command that opens it.
 */
#include <errno.h>
#include <limits.h>
#include <string.h>
#include <unistd.h>
#include <bpf/bpf.h>

#include "log.h"
#include "state.h"

#define INDEX_ENTRIES (2 * BGS_MAX_SERVICES)

static int index_key(const char *name, char key[BGS_NAME_LEN])
{
	size_t n = strnlen(name, BGS_NAME_LEN);

	if (n == BGS_NAME_LEN)
		return -ENAMETOOLONG; /* no service has such a name */
	memset(key, 0, BGS_NAME_LEN);
	memcpy(key, name, n);
	return 0;
}

/* Make the index and pin it; a command that pinned one first wins, and its index is used. */
static int index_create(const char *path)
{
	LIBBPF_OPTS(bpf_map_create_opts, opts);
	int fd, err;

	fd = bpf_map_create(BPF_MAP_TYPE_LRU_HASH, "bgs_svc_index", BGS_NAME_LEN, sizeof(__u32),
			    INDEX_ENTRIES, &opts);
	if (fd < 0)
		return -errno;
	if (!bpf_obj_pin(fd, path))
		return fd;
	err = -errno;
	close(fd);
	if (err != -EEXIST)
		return err;
	fd = bpf_obj_get(path);
	return fd < 0 ? -errno : fd;
}

/* Open the index, making it if the state has none. Without it (any error) commands scan. */
void svc_index_open(struct bgs_state *st)
{
	char path[PATH_MAX];
	int fd;

	st->index_fd = -1;
	if (state_pin_path(path, sizeof(path), BGS_INDEX_NAME))
		return;
	fd = bpf_obj_get(path);
	if (fd < 0 && errno == ENOENT)
		fd = index_create(path);
	else if (fd < 0)
		fd = -errno;
	if (fd < 0) {
		pr_debug("no service index at %s: %s (services are found by a scan)\n", path,
			 strerror(-fd));
		return;
	}
	st->index_fd = fd;
}

/* The id the index gives a name: 0, or -ENOENT when it has none (or there is no index). */
int svc_index_get(const struct bgs_state *st, const char *name, __u32 *svc)
{
	char key[BGS_NAME_LEN];

	if (st->index_fd < 0 || index_key(name, key))
		return -ENOENT;
	return bpf_map_lookup_elem(st->index_fd, key, svc) ? -ENOENT : 0;
}

void svc_index_set(const struct bgs_state *st, const char *name, __u32 svc)
{
	char key[BGS_NAME_LEN];

	if (st->index_fd >= 0 && !index_key(name, key) &&
	    bpf_map_update_elem(st->index_fd, key, &svc, BPF_ANY))
		pr_debug("cannot update the service index: %s\n", strerror(errno));
}

void svc_index_forget(const struct bgs_state *st, const char *name)
{
	char key[BGS_NAME_LEN];

	if (st->index_fd >= 0 && !index_key(name, key))
		bpf_map_delete_elem(st->index_fd, key);
}
