// SPDX-License-Identifier: GPL-2.0
/* doccheck.c: the fleet document decoder (user/fleet_doc.c, the one the agent and the --etcd
 * commands use) driven from stdin, for tests/test_fleet_doc.py and `make fuzz`.
 *
 * Usage: bgs-doccheck KEYNAME < records
 * A record is "<length>\n" and that many bytes. For each, one line: "ok <the document as the
 * encoder writes it>" or "invalid <why>". An accepted document is encoded again and decoded
 * again: if that is refused, or encodes differently, the line is "roundtrip <why>".
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fleet.h"
#include "log.h"

static int check_one(const char *key, const char *doc, size_t len, struct fleet_service *s,
		     struct fleet_service *again)
{
	char why[FLEET_WHY_LEN], *enc, *enc2;
	int err = 0;

	if (fleet_doc_decode(doc, len, key, s, why, sizeof(why))) {
		printf("invalid %s\n", why);
		return 0;
	}
	enc = fleet_doc_encode(s);
	if (!enc)
		return -1;
	if (fleet_doc_decode(enc, strlen(enc), key, again, why, sizeof(why))) {
		printf("roundtrip %s\n", why);
	} else {
		enc2 = fleet_doc_encode(again);
		if (enc2 && !strcmp(enc, enc2))
			printf("ok %s\n", enc);
		else
			printf("roundtrip encodes differently\n");
		err = enc2 ? 0 : -1;
		free(enc2);
	}
	free(enc);
	return err;
}

int main(int argc, char **argv)
{
	struct fleet_service *s = malloc(sizeof(*s)), *again = malloc(sizeof(*again));
	size_t len, cap = 0;
	char *buf = NULL;
	int err = 0;

	if (argc != 2 || !s || !again) {
		fprintf(stderr, "usage: bgs-doccheck KEYNAME < records\n");
		return 2;
	}
	while (!err && scanf("%zu", &len) == 1 && getchar() == '\n') {
		if (len + 1 > cap) {
			char *p = realloc(buf, len + 1);

			if (!p)
				return 1;
			buf = p;
			cap = len + 1;
		}
		if (fread(buf, 1, len, stdin) != len)
			return 1;
		buf[len] = '\0';
		err = check_one(argv[1], buf, len, s, again);
	}
	fflush(stdout);
	free(buf);
	free(s);
	free(again);
	return err ? 1 : 0;
}
