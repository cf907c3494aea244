/* Fuzz target for config loading: cfg_load_string on arbitrary bytes. Checks
 * the loader's contracts besides memory safety: a failed load names at least
 * one problem, and a valid config dumps to JSON that loads back to the same
 * dump (cfg_dump round trip). Every result is freed. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct cfg_problems problems;
    struct cfg_problems again_problems = {0};
    struct cfg *again = NULL;
    char *text = NULL;
    char *text2 = NULL;

    /* Relative tls paths resolve against the current directory ("fuzz.json"
     * has no directory part); the override keeps HOME out of it. */
    struct cfg *c =
        cfg_load_string((const char *)data, size, "fuzz.json", "/tmp/doorman-fuzz", &problems);
    if (c == NULL) {
        if (problems.num_items == 0) {
            abort(); /* a rejected config must say why */
        }
        goto out;
    }
    if (problems.num_items != 0) {
        abort();
    }
    text = cfg_dump(c);
    if (text == NULL) {
        abort();
    }
    again = cfg_load_string(text, strlen(text), "fuzz.json", NULL, &again_problems);
    if (again == NULL) {
        abort(); /* the dump of a valid config must load */
    }
    text2 = cfg_dump(again);
    if (text2 == NULL || strcmp(text, text2) != 0) {
        abort();
    }
out:
    free(text2);
    free(text);
    cfg_unref(again);
    cfg_unref(c);
    cfg_problems_cleanup(&again_problems);
    cfg_problems_cleanup(&problems);
    return 0;
}
