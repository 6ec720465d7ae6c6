/*
 * fuzz_mount: what the Mount fuzz targets answer with once a request parses.
 * Placeholder values only: no real key material.
 */
#ifndef MCP_FUZZ_MOUNT_H
#define MCP_FUZZ_MOUNT_H

#include "mount.h"

static const struct mount_content fuzz_mount_content = {
	.client_id = "16f3f614-1ed5-4c3c-9b1d-5a4d8b2f0c11",
	.jwk_private = "{\"kty\":\"RSA\"}",
	.kid = "dev:team-a:payments:e1",
	.well_known_url = "https://test.maskinporten.no/.well-known/oauth-authorization-server",
	.issuer = "https://test.maskinporten.no/",
	.jwks_uri = "https://test.maskinporten.no/jwk",
	.token_endpoint = "https://test.maskinporten.no/token",
	.exposed_scopes = "nav:test/api",
};

#endif
