/*
 * config: command-line flags, each with an environment variable of the same
 * name (--cluster-name and MPCSI_CLUSTER_NAME) for the DaemonSet. Flags win
 * over the environment. One table serves every subcommand; each subcommand
 * reads the fields it needs and config_require() names what is missing.
 */
#ifndef MCP_CONFIG_H
#define MCP_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "err.h"
#include "log.h"

#define CONFIG_SOCKET_DEFAULT	   "/var/run/secrets-store-csi-providers/maskinporten.sock"
#define CONFIG_PROVIDER_NAME	   "maskinporten"
#define CONFIG_KUBELET_DIR_DEFAULT "/var/lib/kubelet"
#define CONFIG_MOUNT_DIR_DEFAULT   "/var/run/secrets/nais.io/maskinporten"

enum write_mode { WRITE_MODE_DRIVER = 0, WRITE_MODE_PROVIDER };

struct config {
	/* Identity and upstream services. */
	const char *cluster_name;
	const char *digdir_url;
	const char *well_known_url;
	const char *admin_client_id;
	const char *admin_key_file;
	const char *admin_cert_file;
	const char *admin_kid;
	const char *admin_scopes;
	const char *org_number;	  /* the organisation's number; "": from the admin token */
	const char *scope_prefix; /* the organisation's scope prefix at DigDir, for `exposes` */
	bool trust_metadata_endpoints;
	const char *client_name;
	const char *client_uri;
	const char *default_scope;

	/* Keys. */
	const char *seed_file;
	int64_t epoch_length; /* seconds */

	/* HTTP. */
	const char *ca_file;
	const char *https_proxy;
	bool allow_http;
	long connect_timeout_ms;
	long request_timeout_ms;
	long mount_timeout_ms;	/* our own budget, below kubelet's 2 minutes */
	long flight_timeout_ms; /* one provisioning flight, which outlives a Mount's deadline */
	long max_listing_bytes; /* the largest DigDir listing read */
	long listing_reuse_ms;	/* how old a shared listing a lookup may use */

	/* Serving. */
	const char *socket_path;
	unsigned socket_mode;
	const char *state_file;	  /* NULL: beside the socket; "": none */
	const char *metrics_addr; /* host:port of /metrics (and the probes without probe_addr) */
	const char *probe_addr;	  /* host:port of /healthz and /readyz; "": on metrics_addr */
	enum write_mode write_mode;
	const char *kubelet_dir;
	long revalidate_interval_s;
	long scope_flip_window_ms; /* two scope sets for one app within this: refused */
	long metadata_refresh_ms;  /* Maskinporten's metadata is fetched again this often */
	long cache_size;
	int workers;
	long worker_idle_ms; /* a worker beyond the first leaves after this long idle */
	long max_message_bytes;
	long socket_wait_ms;	  /* another provider answers on the socket: wait this long */
	long queue_max_bytes;	  /* bytes of Mounts waiting for a worker */
	long connection_idle_ms;  /* close gRPC connections idle this long; 0: never */
	long shutdown_grace_ms;	  /* on SIGTERM: running Mounts get this before cancelling */
	bool check_only;	  /* serve --check */
	int64_t time_offset_s;	  /* tests only: shifts this process's clock (epochs, skew) */
	long test_crash_in_write; /* tests only: writer_test_crash_after() */

	/* Logging. */
	enum log_level log_level;
	enum log_format log_format;

	/* Subcommand arguments. */
	const char *namespace_name; /* mount */
	const char *service_account;
	const char *pod_name;
	const char *pod_uid;
	const char *dir;     /* mount: where to write; token: what to read */
	const char *scopes;  /* mount: SecretProviderClass parameter `scopes` */
	const char *exposes; /* mount: parameter `exposes` */
	const char *file_permission;
	const char *extra_params; /* mount: more parameters as a JSON object */
	const char *client_id;	  /* keys derive */
	int64_t epoch;		  /* keys derive --epoch, -1: unset */
	const char *at;		  /* keys derive --at TIME */
	const char *output;	  /* keys derive --private FILE */
	bool json;		  /* token --json, client --json */
	bool permanent;		  /* client delete --permanent */
	bool drop_foreign_keys;	  /* client adopt --drop-foreign-keys */

	/* Positional arguments left after the flags (subcommand words). */
	int argc;
	char **argv;
};

/* The defaults, before flags and environment. */
void config_defaults(struct config *cfg);

/*
 * Parses the environment and then argv (argv[0] is the subcommand's name).
 * Returns 0, or -EINVAL with err naming the bad flag or variable.
 * On "--help" returns 1 after printing usage to stdout.
 */
int config_parse(struct config *cfg, int argc, char **argv, const char *usage, struct err *err);

/*
 * Checks that every named field is set: config_require(cfg, err, "cluster-name",
 * "digdir-url", NULL). Returns 0 or -EINVAL naming the first missing flag.
 */
int config_require(const struct config *cfg, struct err *err, ...);

/* Parses "30d", "12h", "90s", "1500ms" or a plain number of seconds into ms. */
int config_parse_duration_ms(const char *s, int64_t *ret_ms);

/*
 * Prints the flag reference of one command (one line each, with its
 * variable): "serve", "mount", "token", "client", "derive" or "grant" (keys);
 * NULL or another name prints every flag.
 */
void config_print_flags(const char *command);

#endif
