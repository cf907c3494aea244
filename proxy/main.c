/* doorman executable: everything lives in cli.c and the libraries. */
#include "proxy/cli.h"

int main(int argc, char **argv)
{
    return dm_cli_main(argc, argv);
}
