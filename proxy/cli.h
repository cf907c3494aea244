/* Command-line entry point of the doorman executable. */
#ifndef DM_PROXY_CLI_H
#define DM_PROXY_CLI_H

/* dm_cli_main runs the command in argv[1]; returns the process exit code. */
int dm_cli_main(int argc, char **argv);

/* dm_cli_reload and dm_cli_health run `doorman reload` and `doorman health`
 * (cli_admin.c) with argv[0] the command name; return the exit code. */
int dm_cli_reload(int argc, char **argv);
int dm_cli_health(int argc, char **argv);
/* dm_cli_upgrade runs `doorman upgrade` (POST /upgrade, cli_admin.c). */
int dm_cli_upgrade(int argc, char **argv);

#endif
