/*
 * app: the upstream clients a command needs, built from the configuration in
 * one place: http, maskinporten (metadata, admin token), digdir and the key
 * seed. The serve command and the client subcommands share it.
 */
#ifndef MCP_APP_H
#define MCP_APP_H

#include <stdbool.h>

#include "config.h"
#include "digdir.h"
#include "err.h"
#include "http.h"
#include "keys.h"
#include "maskinporten.h"

#define APP_NEED_SEED	(1u << 0) /* --seed-file is required and loaded */
#define APP_NEED_DIGDIR (1u << 1) /* DigDir and admin credentials are required */

/*
 * Owns http, mp and dd (freed by app_close); cfg is borrowed. SECRET: seed
 * holds key material (wiped by app_close).
 */
struct app {
	struct config *cfg;
	struct http *http;
	struct mp *mp;
	struct digdir *dd;
	struct keys_seed seed;
	bool have_seed;
};

/*
 * Builds what flags ask for; the seed is also loaded whenever --seed-file is
 * set. Returns 0, or a negative errno with err naming the missing flag or the
 * failure. On failure app is closed again.
 */
int app_open(struct app *app, struct config *cfg, unsigned flags, struct err *err);

/* An http client with the configuration's CA, proxy and timeouts. NULL with err filled. */
struct http *app_http_new(const struct config *cfg, struct err *err);

/* Releases everything app_open made. Accepts a zeroed or closed app. */
void app_close(struct app *app);

#endif
