/* cli_serve: placeholder until its module lands; says so and fails. */
#include <stdio.h>

#include "cli.h"

int cmd_serve(int argc, char **argv)
{
	fprintf(stderr, "maskinporten-csi-provider serve: not implemented yet\n");
	return 2;
}
