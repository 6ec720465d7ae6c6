/* cli_keys: placeholder until its module lands; says so and fails. */
#include <stdio.h>

#include "cli.h"

int cmd_keys(int argc, char **argv)
{
	fprintf(stderr, "maskinporten-csi-provider keys: not implemented yet\n");
	return 2;
}
