/* Command-line entry point of the doorman executable. */
#ifndef DM_PROXY_CLI_H
#define DM_PROXY_CLI_H

/* dm_cli_main runs the command in argv[1]; returns the process exit code. */
int dm_cli_main(int argc, char **argv);

#endif
