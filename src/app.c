/*
 * app: builds http, maskinporten and digdir from struct config, and loads the
 * seed. The only place that maps configuration flags onto module configs, so
 * every command checks and names missing flags the same way.
 */
#include <errno.h>
#include <string.h>

#include "app.h"

struct http *app_http_new(const struct config *cfg, struct err *err)
{
	struct http_config hc = {
		.ca_file = cfg->ca_file,
		.https_proxy = cfg->https_proxy,
		.allow_http = cfg->allow_http,
		.connect_timeout_ms = cfg->connect_timeout_ms,
		.attempt_timeout_ms = cfg->request_timeout_ms,
	};

	return http_new(&hc, err);
}

int app_open(struct app *app, struct config *cfg, unsigned flags, struct err *err)
{
	struct mp_config mc = { 0 };
	struct digdir_config dc = { 0 };
	int r;

	memset(app, 0, sizeof(*app));
	app->cfg = cfg;

	if (flags & APP_NEED_DIGDIR) {
		r = config_require(cfg, err, "digdir-url", "well-known-url", "admin-client-id",
				   "admin-key-file", (char *)NULL);
		if (r < 0)
			goto fail;
		if ((!cfg->admin_cert_file || !*cfg->admin_cert_file) &&
		    (!cfg->admin_kid || !*cfg->admin_kid)) {
			r = err_set(
			    err, ERR_INVALID, EINVAL,
			    "missing --admin-cert-file (MPCSI_ADMIN_CERT_FILE) or --admin-kid "
			    "(MPCSI_ADMIN_KID): the admin grant needs one of them");
			goto fail;
		}
	}
	if (flags & APP_NEED_SEED) {
		r = config_require(cfg, err, "seed-file", (char *)NULL);
		if (r < 0)
			goto fail;
	}
	if (cfg->seed_file && *cfg->seed_file) {
		r = keys_seed_load(cfg->seed_file, &app->seed, err);
		if (r < 0)
			goto fail;
		app->have_seed = true;
	}

	app->http = app_http_new(cfg, err);
	if (!app->http) {
		r = -EINVAL;
		goto fail;
	}
	if (!(flags & APP_NEED_DIGDIR))
		return 0;

	mc.well_known_url = cfg->well_known_url;
	mc.admin_client_id = cfg->admin_client_id;
	mc.admin_key_file = cfg->admin_key_file;
	mc.admin_cert_file = cfg->admin_cert_file;
	mc.admin_kid = cfg->admin_kid;
	mc.admin_scopes = cfg->admin_scopes;
	mc.org_number = cfg->org_number;
	mc.trust_endpoints = cfg->trust_metadata_endpoints;
	mc.metadata_refresh_ms = cfg->metadata_refresh_ms;
	app->mp = mp_new(app->http, &mc, err);
	if (!app->mp) {
		r = -EINVAL;
		goto fail;
	}
	dc.base_url = cfg->digdir_url;
	dc.client_name = cfg->client_name;
	dc.client_uri = cfg->client_uri;
	dc.default_scope = cfg->default_scope;
	dc.max_listing_bytes = cfg->max_listing_bytes > 0 ? (size_t)cfg->max_listing_bytes : 0;
	dc.list_reuse_ms = cfg->listing_reuse_ms;
	app->dd = digdir_new(app->http, app->mp, &dc, err);
	if (!app->dd) {
		r = -EINVAL;
		goto fail;
	}
	return 0;
fail:
	app_close(app);
	return r;
}

void app_close(struct app *app)
{
	if (!app)
		return;
	digdir_free(app->dd);
	mp_free(app->mp);
	http_free(app->http);
	if (app->have_seed)
		keys_seed_wipe(&app->seed);
	app->dd = NULL;
	app->mp = NULL;
	app->http = NULL;
	app->have_seed = false;
}
