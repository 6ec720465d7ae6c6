/* cli_token: placeholder until its module lands; says so and fails. */
#include <stdio.h>

#include "cli.h"

int cmd_token(int argc, char **argv)
{
	fprintf(stderr, "maskinporten-csi-provider token: not implemented yet\n");
	return 2;
}
