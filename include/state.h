/*
 * state: what this node remembers about its apps across restarts, in one
 * small non-secret JSON file next to the socket: for each app (client
 * description) its client_id, the scope set this node last registered, and
 * the consumer grants DigDir last refused. A restarted provider re-finds its
 * apps' clients with one GET each instead of listing the whole organisation.
 *
 * Nothing in it is trusted beyond a hint: every client_id is re-checked at
 * DigDir before use (digdir_ensure_client), and a missing, unreadable,
 * corrupt or foreign file is an empty memory, never an error. It never holds
 * key material.
 */
#ifndef MCP_STATE_H
#define MCP_STATE_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "err.h"

#define STATE_VERSION	1
#define STATE_MAX_BYTES (16 * 1024 * 1024)
#define STATE_MAX_APPS	65536

struct state;

/*
 * Loads path (or starts empty when it is missing or unusable, logging why)
 * for this cluster. NULL or "" path: no memory at all (nothing is kept). NULL
 * only on allocation failure. Thread-safe.
 */
struct state *state_open(const char *path, const char *cluster);

/* Writes what changed and frees. Accepts NULL. */
void state_close(struct state *st);

/* What the file says of an app: 0 with copies (either may be NULL; caller frees), or -ENOENT. */
int state_get(struct state *st, const char *description, char **ret_client_id, char **ret_written,
	      bool *ret_pending);

/*
 * A flight that may create a client starts: marked pending and written at
 * once, so that a node stopped mid-create knows to settle the app after it
 * restarts (its duplicates are cleaned up then).
 */
int state_pending(struct state *st, const char *description);

/*
 * The app's client and scope set after a successful flight (pending cleared;
 * NULL leaves a field as it was). Written at once.
 */
int state_settled(struct state *st, const char *description, const char *client_id,
		  const char *written);

/* The consumer grants DigDir refused at the app's last sync (NULL or empty: none). */
int state_refused(struct state *st, const char *description, const json_t *refused);

/* The refused grants last recorded for the app: a new reference, or NULL when none. */
json_t *state_get_refused(struct state *st, const char *description);

/* The descriptions still pending (a new array of strings), for the sweep after a restart. */
json_t *state_pending_apps(struct state *st);

/* The default path: beside the socket, "<socket dir>/maskinporten.state". Caller frees. */
char *state_default_path(const char *socket_path);

#endif
