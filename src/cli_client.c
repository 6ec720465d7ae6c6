/* cli_client: placeholder until its module lands; says so and fails. */
#include <stdio.h>

#include "cli.h"

int cmd_client(int argc, char **argv)
{
	fprintf(stderr, "maskinporten-csi-provider client: not implemented yet\n");
	return 2;
}
