// SPDX-License-Identifier: GPL-2.0
/* maglev.c: building a Maglev lookup table from a color's backends and their weights.
 *
 * Each backend has a preference list over the M positions, the permutation
 * (offset + j * skip) mod M with offset and skip from two hashes of its key (M prime, so every
 * skip visits every position). The backends take turns claiming their next preferred free
 * position until the table is full. With weights, a backend takes weight / max-weight turns per
 * round (a credit carried over between rounds), so its share of positions follows its weight.
 * Adding or removing one backend of N moves about 1/N of the positions (the paper's
 * "minimal disruption", measured in tests/test_maglev.py).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "maglev.h"
#include "bgswitch.h"

#define MAGLEV_EMPTY 0xffffffffU

bool maglev_is_prime(__u32 m)
{
	__u32 d;

	if (m < 2)
		return false;
	for (d = 2; (__u64)d * d <= m; d++)
		if (m % d == 0)
			return false;
	return true;
}

/* A table size a service may have: a prime from BGS_TABLE_MIN to BGS_TABLE_MAX, big enough for a
 * few backends, small enough to build quickly.
 */
bool maglev_size_ok(__u32 m)
{
	return m >= BGS_TABLE_MIN && m <= BGS_TABLE_MAX && maglev_is_prime(m);
}

/* FNV-1a over the key, then splitmix64's finalizer: stable across builds and nodes. */
static __u64 maglev_hash(const __u8 *p, size_t len, __u64 seed)
{
	__u64 h = 0xcbf29ce484222325ULL ^ seed;
	size_t i;

	for (i = 0; i < len; i++) {
		h ^= p[i];
		h *= 0x100000001b3ULL;
	}
	h ^= h >> 30;
	h *= 0xbf58476d1ce4e5b9ULL;
	h ^= h >> 27;
	h *= 0x94d049bb133111ebULL;
	h ^= h >> 31;
	return h;
}

void maglev_key(struct maglev_backend *b, const __u32 addr[4], __u16 port, __u8 family)
{
	memset(b->key, 0, sizeof(b->key));
	b->key[0] = family;
	memcpy(b->key + 2, &port, sizeof(port));
	memcpy(b->key + 4, addr, 16);
}

static int maglev_cmp(const void *a, const void *b)
{
	return memcmp(((const struct maglev_backend *)a)->key,
		      ((const struct maglev_backend *)b)->key,
		      sizeof(((struct maglev_backend *)0)->key));
}

/* Fill table[0..m-1] with backend slots. m must be a prime; the backends are sorted by key in
 * place, so that the table does not depend on the order they were given in. With no backend
 * of non-zero weight the table is left empty (-ENOENT).
 */
int maglev_build(struct maglev_backend *be, __u32 n, __u32 m, __u32 *table)
{
	__u64 *offset = NULL, *skip = NULL, *next = NULL, *credit = NULL;
	__u32 i, filled = 0, wmax = 0;
	__u64 c;
	int err = 0;

	if (!maglev_is_prime(m))
		return -EINVAL;
	for (i = 0; i < n; i++)
		if (be[i].weight > wmax)
			wmax = be[i].weight;
	if (!wmax)
		return -ENOENT;
	offset = calloc(n, sizeof(*offset));
	skip = calloc(n, sizeof(*skip));
	next = calloc(n, sizeof(*next));
	credit = calloc(n, sizeof(*credit));
	if (!offset || !skip || !next || !credit) {
		err = -ENOMEM;
		goto out;
	}
	qsort(be, n, sizeof(*be), maglev_cmp);
	for (i = 0; i < n; i++) {
		offset[i] = maglev_hash(be[i].key, sizeof(be[i].key), 0x6267737730ULL) % m;
		skip[i] = maglev_hash(be[i].key, sizeof(be[i].key), 0x6267737731ULL) % (m - 1) + 1;
	}
	for (i = 0; i < m; i++)
		table[i] = MAGLEV_EMPTY;
	for (i = 0; i < n; i++)
		be[i].positions = 0;
	while (filled < m) {
		for (i = 0; i < n && filled < m; i++) {
			if (!be[i].weight)
				continue;
			credit[i] += be[i].weight;
			while (credit[i] >= wmax && filled < m) {
				credit[i] -= wmax;
				do {
					c = (offset[i] + next[i] * skip[i]) % m;
					next[i]++;
				} while (table[c] != MAGLEV_EMPTY);
				table[c] = be[i].slot;
				be[i].positions++;
				filled++;
			}
		}
	}
out:
	free(offset);
	free(skip);
	free(next);
	free(credit);
	return err;
}
