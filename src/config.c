/*
 * config: one table of flags, each with its environment variable, shared by
 * every subcommand. Values are borrowed from argv and environ, which live as
 * long as the process. Never prints a value: some name secret files.
 */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "keys.h"

enum opt_type {
	T_STR,
	T_BOOL,
	T_SECONDS,
	T_MS,
	T_LONG,
	T_INT,
	T_MODE,
	T_EPOCH,
	T_LOGLEVEL,
	T_LOGFORMAT,
	T_WRITEMODE,
	T_OFFSET
};

/* The commands a flag belongs to, for each command's --help. */
#define C_SERVE	 (1u << 0)
#define C_MOUNT	 (1u << 1)
#define C_TOKEN	 (1u << 2)
#define C_CLIENT (1u << 3)
#define C_KEYS	 (1u << 4)
#define C_ALL	 (C_SERVE | C_MOUNT | C_TOKEN | C_CLIENT | C_KEYS)
/* DigDir and the admin client: serve and client administration. */
#define C_ADMIN (C_SERVE | C_CLIENT)
/* Outgoing HTTPS: serve, client and token. */
#define C_HTTPS (C_SERVE | C_CLIENT | C_TOKEN)

struct opt {
	const char *name;
	enum opt_type type;
	size_t offset;
	unsigned commands; /* C_* */
	const char *help;
};

#define F(field) offsetof(struct config, field)

static const struct opt opts[] = {
	{ "cluster-name", T_STR, F(cluster_name), C_SERVE,
	  "cluster name, first part of client descriptions" },
	{ "digdir-url", T_STR, F(digdir_url), C_ADMIN, "DigDir admin API base URL" },
	{ "well-known-url", T_STR, F(well_known_url), C_ADMIN,
	  "Maskinporten metadata document URL" },
	{ "admin-client-id", T_STR, F(admin_client_id), C_ADMIN, "admin (self-service) client id" },
	{ "admin-key-file", T_STR, F(admin_key_file), C_ADMIN, "admin client's private key, PEM" },
	{ "admin-cert-file", T_STR, F(admin_cert_file), C_ADMIN,
	  "business certificate chain, PEM (x5c)" },
	{ "admin-kid", T_STR, F(admin_kid), C_ADMIN,
	  "kid of a pre-registered admin key (without a chain)" },
	{ "admin-scopes", T_STR, F(admin_scopes), C_ADMIN,
	  "scopes of the admin token (idporten:dcr.read idporten:dcr.write); "
	  "idporten:scopes.write is added only for `exposes`" },
	{ "org-number", T_STR, F(org_number), C_ADMIN,
	  "the organisation's number (else the admin token's consumer)" },
	{ "scope-prefix", T_STR, F(scope_prefix), C_ADMIN,
	  "the organisation's scope prefix at DigDir, needed for `exposes`" },
	{ "trust-metadata-endpoints", T_BOOL, F(trust_metadata_endpoints), C_ADMIN,
	  "accept a token endpoint and JWKS URI off the issuer's origin" },
	{ "client-name", T_STR, F(client_name), C_ADMIN, "client_name of new clients" },
	{ "client-uri", T_STR, F(client_uri), C_ADMIN, "client_uri of new clients" },
	{ "default-scope", T_STR, F(default_scope), C_ADMIN,
	  "scope registered when an app consumes none" },
	{ "seed-file", T_STR, F(seed_file), C_SERVE | C_CLIENT | C_KEYS,
	  "cluster key seed (>= 32 bytes, mode 0600)" },
	{ "epoch-length", T_SECONDS, F(epoch_length), C_SERVE | C_CLIENT | C_KEYS,
	  "key epoch length (30d)" },
	{ "ca-file", T_STR, F(ca_file), C_HTTPS, "CA bundle for DigDir and Maskinporten" },
	{ "https-proxy", T_STR, F(https_proxy), C_HTTPS,
	  "proxy for HTTPS (else HTTPS_PROXY, NO_PROXY)" },
	{ "allow-http", T_BOOL, F(allow_http), C_HTTPS, "allow plain http:// URLs (tests only)" },
	{ "connect-timeout", T_MS, F(connect_timeout_ms), C_HTTPS, "connect timeout (5s)" },
	{ "request-timeout", T_MS, F(request_timeout_ms), C_HTTPS,
	  "one HTTP attempt's timeout (30s)" },
	{ "mount-timeout", T_MS, F(mount_timeout_ms), C_HTTPS,
	  "budget of one Mount, or of the whole command (110s)" },
	{ "flight-timeout", T_MS, F(flight_timeout_ms), C_SERVE,
	  "budget of one provisioning flight, which goes on after a Mount's deadline (5m)" },
	{ "max-listing", T_LONG, F(max_listing_bytes), C_ADMIN,
	  "largest DigDir client listing read, bytes (256 MiB)" },
	{ "listing-reuse", T_MS, F(listing_reuse_ms), C_SERVE,
	  "how old a client listing concurrent lookups may share (2s)" },
	{ "socket", T_STR, F(socket_path), C_SERVE | C_MOUNT | C_CLIENT,
	  "provider socket path (client: where the state file is)" },
	{ "socket-mode", T_MODE, F(socket_mode), C_SERVE, "socket file mode, octal (0600)" },
	{ "state-file", T_STR, F(state_file), C_SERVE | C_CLIENT,
	  "non-secret memory of each app's client across restarts (beside the socket; \"\": "
	  "none)" },
	{ "socket-wait", T_MS, F(socket_wait_ms), C_SERVE,
	  "wait this long for another live provider on --socket to stop (40s)" },
	{ "metrics-addr", T_STR, F(metrics_addr), C_SERVE,
	  "host:port for /metrics (and the probes without --probe-addr)" },
	{ "probe-addr", T_STR, F(probe_addr), C_SERVE,
	  "host:port for /healthz and /readyz, apart from /metrics" },
	{ "write-mode", T_WRITEMODE, F(write_mode), C_SERVE,
	  "driver (files in the answer) or provider" },
	{ "kubelet-dir", T_STR, F(kubelet_dir), C_SERVE, "kubelet root (provider write mode)" },
	{ "revalidate-interval", T_SECONDS, F(revalidate_interval_s), C_SERVE,
	  "re-check known clients (1h)" },
	{ "scope-flip-window", T_MS, F(scope_flip_window_ms), C_SERVE,
	  "an app asking for its previous scope set again within this is refused (5m)" },
	{ "metadata-refresh", T_MS, F(metadata_refresh_ms), C_SERVE,
	  "fetch Maskinporten's metadata again this often (24h)" },
	{ "cache-size", T_LONG, F(cache_size), C_SERVE, "clients kept in memory (4096)" },
	{ "workers", T_INT, F(workers), C_SERVE,
	  "most threads for cold Mounts, started as needed (64)" },
	{ "worker-idle", T_MS, F(worker_idle_ms), C_SERVE,
	  "idle time after which workers beyond one stop (60s)" },
	{ "queue-bytes", T_LONG, F(queue_max_bytes), C_SERVE,
	  "bytes of Mounts waiting for a worker, then RESOURCE_EXHAUSTED (8 MiB)" },
	{ "max-message", T_LONG, F(max_message_bytes), C_SERVE,
	  "largest gRPC request, bytes (4 MiB)" },
	{ "connection-idle", T_MS, F(connection_idle_ms), C_SERVE,
	  "close gRPC connections without calls this long (5m; 0: never)" },
	{ "shutdown-grace", T_MS, F(shutdown_grace_ms), C_SERVE,
	  "on SIGTERM: time running Mounts get before upstream calls are cancelled (5s)" },
	{ "check", T_BOOL, F(check_only), C_SERVE, "serve: validate configuration and exit" },
	{ "time-offset", T_OFFSET, F(time_offset_s), C_SERVE,
	  "tests only: shift the clock by seconds" },
	{ "test-crash-in-write", T_LONG, F(test_crash_in_write), C_SERVE,
	  "tests only: kill -9 itself at the Nth change of a provider-mode write" },
	{ "log-level", T_LOGLEVEL, F(log_level), C_SERVE | C_MOUNT | C_CLIENT,
	  "error, warn, info or debug" },
	{ "log-format", T_LOGFORMAT, F(log_format), C_SERVE | C_MOUNT, "json or text" },
	{ "namespace", T_STR, F(namespace_name), C_MOUNT, "mount: the pod's namespace" },
	{ "service-account", T_STR, F(service_account), C_MOUNT,
	  "mount: the pod's service account" },
	{ "pod-name", T_STR, F(pod_name), C_MOUNT, "mount: the pod's name" },
	{ "pod-uid", T_STR, F(pod_uid), C_MOUNT, "mount: the pod's uid" },
	{ "dir", T_STR, F(dir), C_MOUNT | C_TOKEN,
	  "mount: where to write; token: the mounted directory" },
	{ "scopes", T_STR, F(scopes), C_MOUNT | C_TOKEN | C_CLIENT, "consumed scopes" },
	{ "exposes", T_STR, F(exposes), C_MOUNT, "mount: exposed scopes (JSON)" },
	{ "file-permission", T_STR, F(file_permission), C_MOUNT,
	  "mount: file mode parameter, octal" },
	{ "params", T_STR, F(extra_params), C_MOUNT, "mount: more parameters, a JSON object" },
	{ "client-id", T_STR, F(client_id), C_KEYS, "keys derive: the client id" },
	{ "epoch", T_EPOCH, F(epoch), C_KEYS, "keys derive: the epoch number" },
	{ "at", T_STR, F(at), C_KEYS,
	  "keys derive: a time (Unix seconds or YYYY-MM-DDTHH:MM:SSZ)" },
	{ "private", T_STR, F(output), C_KEYS,
	  "keys derive: write the private JWK to this new file" },
	{ "json", T_BOOL, F(json), C_TOKEN | C_CLIENT | C_KEYS, "print JSON" },
	{ "permanent", T_BOOL, F(permanent), C_CLIENT, "client delete: really delete" },
	{ "drop-foreign-keys", T_BOOL, F(drop_foreign_keys), C_CLIENT,
	  "client adopt: drop other tools' keys" },
};

#define NOPTS (sizeof(opts) / sizeof(opts[0]))

void config_defaults(struct config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->admin_scopes = "idporten:dcr.read idporten:dcr.write";
	cfg->epoch_length = 30 * 24 * 3600;
	cfg->connect_timeout_ms = 5000;
	cfg->request_timeout_ms = 30000;
	cfg->mount_timeout_ms = 110000;
	cfg->flight_timeout_ms = 300000;
	cfg->max_listing_bytes = 256L * 1024 * 1024;
	cfg->listing_reuse_ms = 2000;
	cfg->socket_path = CONFIG_SOCKET_DEFAULT;
	cfg->socket_mode = 0600;
	cfg->metrics_addr = "";
	cfg->probe_addr = "";
	cfg->write_mode = WRITE_MODE_DRIVER;
	cfg->kubelet_dir = CONFIG_KUBELET_DIR_DEFAULT;
	cfg->revalidate_interval_s = 3600;
	cfg->scope_flip_window_ms = 5 * 60 * 1000L;
	cfg->metadata_refresh_ms = 24 * 3600 * 1000L;
	cfg->cache_size = 4096;
	cfg->workers = 64;
	cfg->worker_idle_ms = 60000;
	/* The driver's own limit on what it sends and receives. */
	cfg->max_message_bytes = 4 * 1024 * 1024;
	/* Longer than the DaemonSet's terminationGracePeriodSeconds (30). */
	cfg->socket_wait_ms = 40000;
	cfg->queue_max_bytes = 8 * 1024 * 1024;
	cfg->connection_idle_ms = 5 * 60 * 1000;
	cfg->shutdown_grace_ms = 5000;
	cfg->log_level = LOG_LEVEL_INFO;
	cfg->log_format = LOG_FORMAT_JSON;
	cfg->epoch = -1;
}

int config_parse_duration_ms(const char *s, int64_t *ret_ms)
{
	char *end = NULL;
	long long v;
	int64_t mult = 1000;

	if (!s || !isdigit((unsigned char)*s))
		return -EINVAL;
	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno || v < 0)
		return -EINVAL;
	if (strcmp(end, "ms") == 0)
		mult = 1;
	else if (strcmp(end, "") == 0 || strcmp(end, "s") == 0)
		mult = 1000;
	else if (strcmp(end, "m") == 0)
		mult = 60 * 1000;
	else if (strcmp(end, "h") == 0)
		mult = 3600 * 1000;
	else if (strcmp(end, "d") == 0)
		mult = 24 * 3600 * 1000;
	else
		return -EINVAL;
	if (v > INT64_MAX / mult)
		return -ERANGE;
	*ret_ms = v * mult;
	return 0;
}

static int parse_long(const char *s, int base, long *ret)
{
	char *end = NULL;
	long v;

	if (!s || !*s)
		return -EINVAL;
	errno = 0;
	v = strtol(s, &end, base);
	if (errno || *end || v < 0)
		return -EINVAL;
	*ret = v;
	return 0;
}

static int parse_bool(const char *s, bool *ret)
{
	if (!s || !strcmp(s, "1") || !strcmp(s, "true") || !strcmp(s, "yes"))
		*ret = true;
	else if (!strcmp(s, "0") || !strcmp(s, "false") || !strcmp(s, "no") || !strcmp(s, ""))
		*ret = false;
	else
		return -EINVAL;
	return 0;
}

/* Stores value into the field of o. value is NULL for a bare boolean flag. */
static int set_opt(struct config *cfg, const struct opt *o, const char *value)
{
	char *field = (char *)cfg + o->offset;
	int64_t ms;
	long l;
	int r;

	switch (o->type) {
	case T_STR:
		*(const char **)field = value;
		return 0;
	case T_BOOL:
		return parse_bool(value, (bool *)field);
	case T_SECONDS:
		r = config_parse_duration_ms(value, &ms);
		if (r < 0)
			return r;
		if (o->offset == F(epoch_length))
			*(int64_t *)field = ms / 1000;
		else
			*(long *)field = (long)(ms / 1000);
		return 0;
	case T_MS:
		r = config_parse_duration_ms(value, &ms);
		if (r < 0 || ms > 3600 * 1000)
			return -EINVAL;
		*(long *)field = (long)ms;
		return 0;
	case T_LONG:
		return parse_long(value, 10, (long *)field);
	case T_INT:
		r = parse_long(value, 10, &l);
		if (r < 0 || l > 1024)
			return -EINVAL;
		*(int *)field = (int)l;
		return 0;
	case T_MODE:
		r = parse_long(value, 8, &l);
		if (r < 0 || l > 0777)
			return -EINVAL;
		*(unsigned *)field = (unsigned)l;
		return 0;
	case T_EPOCH:
		r = parse_long(value, 10, &l);
		if (r < 0)
			return r;
		*(int64_t *)field = l;
		return 0;
	case T_OFFSET: {
		char *end = NULL;
		long long v;

		errno = 0;
		v = value ? strtoll(value, &end, 10) : 0;
		if (!value || !*value || *end || errno || v < -(1LL << 40) || v > (1LL << 40))
			return -EINVAL;
		*(int64_t *)field = v;
		return 0;
	}
	case T_LOGLEVEL:
		return log_parse_level(value, (enum log_level *)field);
	case T_LOGFORMAT:
		return log_parse_format(value, (enum log_format *)field);
	case T_WRITEMODE:
		if (value && !strcmp(value, "driver"))
			*(enum write_mode *)field = WRITE_MODE_DRIVER;
		else if (value && !strcmp(value, "provider"))
			*(enum write_mode *)field = WRITE_MODE_PROVIDER;
		else
			return -EINVAL;
		return 0;
	}
	return -EINVAL;
}

/* "cluster-name" -> "MPCSI_CLUSTER_NAME". */
static void env_name(const char *flag, char *buf, size_t len)
{
	size_t i = 0;
	int n = snprintf(buf, len, "MPCSI_");

	for (i = (size_t)n; *flag && i + 1 < len; flag++, i++)
		buf[i] = *flag == '-' ? '_' : (char)toupper((unsigned char)*flag);
	buf[i] = '\0';
}

static const struct opt *find_opt(const char *name)
{
	for (size_t i = 0; i < NOPTS; i++)
		if (!strcmp(opts[i].name, name))
			return &opts[i];
	return NULL;
}

/* The C_* bit of a command's name (argv[0] of config_parse); C_ALL when unknown. */
static unsigned command_bit(const char *command)
{
	static const struct {
		const char *name;
		unsigned bit;
	} names[] = {
		{ "serve", C_SERVE },	{ "mount", C_MOUNT }, { "token", C_TOKEN },
		{ "client", C_CLIENT }, { "derive", C_KEYS }, { "grant", C_KEYS },
		{ "keys", C_KEYS },
	};

	for (size_t i = 0; command && i < sizeof(names) / sizeof(names[0]); i++)
		if (!strcmp(command, names[i].name))
			return names[i].bit;
	return C_ALL;
}

void config_print_flags(const char *command)
{
	unsigned bit = command_bit(command);
	char env[96];

	for (size_t i = 0; i < NOPTS; i++) {
		if (!(opts[i].commands & bit))
			continue;
		env_name(opts[i].name, env, sizeof(env));
		printf("  --%-22s %-30s %s\n", opts[i].name, env, opts[i].help);
	}
}

int config_parse(struct config *cfg, int argc, char **argv, const char *usage, struct err *err)
{
	struct option longopts[NOPTS + 2];
	char env[96];
	int c, idx;

	/* The environment first, so that flags override it. */
	for (size_t i = 0; i < NOPTS; i++) {
		const char *v;

		env_name(opts[i].name, env, sizeof(env));
		v = getenv(env);
		if (v && set_opt(cfg, &opts[i], v) < 0)
			return err_set(err, ERR_INVALID, EINVAL,
				       "environment variable %s: bad value", env);
	}

	for (size_t i = 0; i < NOPTS; i++) {
		longopts[i].name = opts[i].name;
		longopts[i].has_arg =
		    opts[i].type == T_BOOL ? optional_argument : required_argument;
		longopts[i].flag = NULL;
		longopts[i].val = 0;
	}
	longopts[NOPTS] = (struct option){ "help", no_argument, NULL, 'h' };
	longopts[NOPTS + 1] = (struct option){ NULL, 0, NULL, 0 };

	optind = 1;
	opterr = 0;
	for (;;) {
		idx = -1;
		c = getopt_long(argc, argv, "+h", longopts, &idx);
		if (c == -1)
			break;
		if (c == 'h') {
			if (usage)
				fputs(usage, stdout);
			printf("\nFlags (each also from its environment variable):\n");
			config_print_flags(argc > 0 ? argv[0] : NULL);
			return 1;
		}
		if (c == '?' || idx < 0 || idx >= (int)NOPTS) {
			const char *bad = optind > 1 && optind - 1 < argc ? argv[optind - 1] : "?";
			return err_set(err, ERR_INVALID, EINVAL,
				       "unknown flag or missing value: %s (see --help)", bad);
		}
		if (set_opt(cfg, &opts[idx], optarg) < 0)
			return err_set(err, ERR_INVALID, EINVAL, "flag --%s: bad value",
				       opts[idx].name);
	}
	cfg->argc = argc - optind;
	cfg->argv = argv + optind;

	if (cfg->epoch_length < KEYS_EPOCH_MIN || cfg->epoch_length > KEYS_EPOCH_MAX)
		return err_set(err, ERR_INVALID, EINVAL,
			       "--epoch-length must be between 60s and 90d (a key registered ahead "
			       "expires four epochs later, within DigDir's one-year limit)");
	if (cfg->cache_size < 1 || cfg->workers < 1 || cfg->max_message_bytes < 1024 ||
	    cfg->max_message_bytes > 64 * 1024 * 1024)
		return err_set(err, ERR_INVALID, EINVAL,
			       "--cache-size, --workers and --max-message must be positive "
			       "(--max-message between 1024 and 64 MiB)");
	return 0;
}

int config_require(const struct config *cfg, struct err *err, ...)
{
	va_list ap;
	const char *name;
	int r = 0;

	va_start(ap, err);
	while ((name = va_arg(ap, const char *))) {
		const struct opt *o = find_opt(name);
		const char *v;
		char env[96];

		if (!o || o->type != T_STR)
			continue;
		v = *(const char *const *)((const char *)cfg + o->offset);
		if (!v || !*v) {
			env_name(name, env, sizeof(env));
			r = err_set(err, ERR_INVALID, EINVAL, "missing --%s (or %s)", name, env);
			break;
		}
	}
	va_end(ap);
	return r;
}
