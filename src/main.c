/*
 * main: dispatches to the subcommands. Initialises OpenSSL (keys) and
 * libcurl (http) once, before any thread exists.
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "http.h"
#include "keys.h"

static const char usage[] =
    "maskinporten-csi-provider: Maskinporten credentials for pods, as a provider of the\n"
    "Kubernetes Secrets Store CSI Driver.\n"
    "\n"
    "Usage: maskinporten-csi-provider COMMAND [FLAGS]\n"
    "\n"
    "Commands:\n"
    "  serve            serve the driver's gRPC API on a Unix socket\n"
    "  mount            act as the driver: Mount through a socket, write the files\n"
    "  token            read a mounted directory and fetch an access token\n"
    "  client list|show|ensure|delete|adopt   administer clients at DigDir\n"
    "  keys derive      print the public JWK of (seed, client, epoch)\n"
    "  prepare          the init container's root steps: socket directory, credentials\n"
    "  version          print the version\n"
    "\n"
    "Run 'maskinporten-csi-provider COMMAND --help' for a command's flags.\n";

int main(int argc, char **argv)
{
	const char *cmd = argc > 1 ? argv[1] : NULL;
	int r;

	if (!cmd || !strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
		fputs(usage, cmd ? stdout : stderr);
		return cmd ? 0 : 2;
	}
	if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
		printf("maskinporten-csi-provider %s\n", PROVIDER_VERSION);
		return 0;
	}

	keys_global_init();
	if (http_global_init() < 0) {
		fprintf(stderr, "maskinporten-csi-provider: libcurl failed to initialise\n");
		return 1;
	}

	if (!strcmp(cmd, "serve"))
		r = cmd_serve(argc - 1, argv + 1);
	else if (!strcmp(cmd, "mount"))
		r = cmd_mount(argc - 1, argv + 1);
	else if (!strcmp(cmd, "token"))
		r = cmd_token(argc - 1, argv + 1);
	else if (!strcmp(cmd, "client"))
		r = cmd_client(argc - 1, argv + 1);
	else if (!strcmp(cmd, "keys"))
		r = cmd_keys(argc - 1, argv + 1);
	else if (!strcmp(cmd, "prepare"))
		r = cmd_prepare(argc - 1, argv + 1);
	else {
		fprintf(stderr, "maskinporten-csi-provider: unknown command '%s'\n\n%s", cmd,
			usage);
		r = 2;
	}

	http_global_cleanup();
	return r;
}
