/*
 * cli: the subcommands of the one binary. Each takes the arguments after its
 * own name (argv[0] is the subcommand) and returns the process exit status:
 * 0 success, 1 failure, 2 usage error.
 */
#ifndef MCP_CLI_H
#define MCP_CLI_H

int cmd_serve(int argc, char **argv);
int cmd_mount(int argc, char **argv);
int cmd_token(int argc, char **argv);
int cmd_client(int argc, char **argv);
int cmd_keys(int argc, char **argv);
int cmd_prepare(int argc, char **argv);

#endif
