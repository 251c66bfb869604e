// SPDX-License-Identifier: GPL-2.0
/* flipbench: what a flip costs the process that makes it, for `make bench`.
 *
 *   flipbench bench SWITCH_PIN SVC COUNT   COUNT flips of service SVC, back and forth; prints
 *                                          {"flips", "total_ns", "ns_per_flip"} as JSON
 *   flipbench shift SWITCH_PIN SVC COUNT   COUNT shifts of service SVC, the green share going
 *                                          round 10%, 25%, 50% and 0%; prints {"flips",
 *                                          "total_ns", "ns_per_flip"} as JSON
 *   flipbench once SWITCH_PIN SVC [AT_NS]  one flip to the other color, at CLOCK_MONOTONIC
 *                                          time AT_NS if given (everything else is done
 *                                          before, so that the flip disturbs a load as little
 *                                          as a flip can); prints the times just before and
 *                                          just after the store, as JSON
 *
 * SWITCH_PIN is a pinned bgs_switch map. Like `bgswitch flip` and `bgswitch shift`
 * (user/cutover.c switch_share() and user/state.c switch_write()), it mmaps the map and changes
 * a service's word with one aligned 64-bit release store (layout 3): prev_share = share,
 * share = the new green share (a flip: 0 <-> BGS_SHARE_ALL), the DRAINING and HAS_PREV flags
 * set, generation + 1. It does not check that the color has backends, nor take the pin root's
 * lock: it is meant for a benchmark's private state only.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#include <linux/types.h>
#include <bpf/bpf.h>

#include "bgswitch.h"

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

_Static_assert(sizeof(struct bgs_switch) == sizeof(__u64), "the switch word is 8 bytes");

/* The switch word with a new green share (0.01 % units), as switch_share() makes it. */
static inline __u64 with_share(__u64 w, __u32 share)
{
	struct bgs_switch sw;

	memcpy(&sw, &w, sizeof(sw));
	sw.prev_share = sw.share;
	sw.share = share;
	sw.flags |= BGS_SW_DRAINING | BGS_SW_HAS_PREV;
	sw.generation++;
	memcpy(&w, &sw, sizeof(w));
	return w;
}

/* A flip: every new flow to the other color (from a split: to green). One load, one store. */
static inline void flip(__u64 *word)
{
	__u64 w = __atomic_load_n(word, __ATOMIC_ACQUIRE);
	struct bgs_switch sw;

	memcpy(&sw, &w, sizeof(sw));
	__atomic_store_n(word, with_share(w, sw.share >= BGS_SHARE_ALL ? 0 : BGS_SHARE_ALL),
			 __ATOMIC_RELEASE);
}

/* A shift: the green share `share`. One load, one store. */
static inline void set_share(__u64 *word, __u32 share)
{
	__atomic_store_n(word, with_share(__atomic_load_n(word, __ATOMIC_ACQUIRE), share),
			 __ATOMIC_RELEASE);
}

static const __u32 shift_steps[4] = { 1000, 2500, 5000, 0 };

int main(int argc, char **argv)
{
	unsigned long svc, count = 0, i;
	size_t len = (size_t)BGS_MAX_SERVICES * sizeof(__u64);
	uint64_t t0, t1;
	__u64 *map;
	int fd;

	if (argc < 4 ||
	    (strcmp(argv[1], "bench") && strcmp(argv[1], "shift") && strcmp(argv[1], "once")) ||
	    (strcmp(argv[1], "once") && argc != 5) ||
	    (!strcmp(argv[1], "once") && argc != 4 && argc != 5)) {
		fprintf(stderr, "usage: flipbench bench|shift SWITCH_PIN SVC COUNT | "
				"once SWITCH_PIN SVC [AT_NS]\n");
		return 2;
	}
	svc = strtoul(argv[3], NULL, 0);
	if (argc == 5)
		count = strtoul(argv[4], NULL, 0); /* COUNT, or AT_NS */
	if (svc >= BGS_MAX_SERVICES) {
		fprintf(stderr, "flipbench: service id %lu out of range\n", svc);
		return 2;
	}
	fd = bpf_obj_get(argv[2]);
	if (fd < 0) {
		fprintf(stderr, "flipbench: %s: %s\n", argv[2], strerror(errno));
		return 1;
	}
	len = (len + 4095) & ~(size_t)4095;
	map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (map == MAP_FAILED) {
		fprintf(stderr, "flipbench: mmap %s: %s\n", argv[2], strerror(errno));
		return 1;
	}
	if (!strcmp(argv[1], "once")) {
		if (count) {
			struct timespec at = { .tv_sec = count / 1000000000ul,
					       .tv_nsec = count % 1000000000ul };

			(void)*(volatile __u64 *)&map[svc]; /* fault the page in */
			while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &at, NULL) == EINTR)
				;
		}
		t0 = now_ns();
		flip(&map[svc]);
		t1 = now_ns();
		printf("{\"t_start_ns\": %llu, \"t_end_ns\": %llu, \"active\": %u}\n",
		       (unsigned long long)t0, (unsigned long long)t1,
		       (unsigned)(((struct bgs_switch *)&map[svc])->share >= BGS_SHARE_ALL));
	} else if (!strcmp(argv[1], "shift")) {
		set_share(&map[svc], shift_steps[0]); /* fault the page in */
		t0 = now_ns();
		for (i = 0; i < count; i++)
			set_share(&map[svc], shift_steps[i & 3]);
		t1 = now_ns();
		set_share(&map[svc], 0);
		printf("{\"flips\": %lu, \"total_ns\": %llu, \"ns_per_flip\": %.3f}\n", count,
		       (unsigned long long)(t1 - t0), count ? (double)(t1 - t0) / count : 0.0);
	} else {
		flip(&map[svc]); /* fault the page in */
		flip(&map[svc]);
		t0 = now_ns();
		for (i = 0; i < count; i++)
			flip(&map[svc]);
		t1 = now_ns();
		printf("{\"flips\": %lu, \"total_ns\": %llu, \"ns_per_flip\": %.3f}\n", count,
		       (unsigned long long)(t1 - t0), count ? (double)(t1 - t0) / count : 0.0);
	}
	munmap(map, len);
	close(fd);
	return 0;
}
