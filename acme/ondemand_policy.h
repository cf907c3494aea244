/* The pure parts of on-demand TLS's permission policy: which names may ever
 * be ordered, pattern matching, and registered domains (the Public Suffix
 * List) for the per-domain limit. No state but the loaded list; unit-tested
 * and fuzzed (tests/fuzz/fuzz_ondemand_name.c). */
#ifndef DM_ACME_ONDEMAND_POLICY_H
#define DM_ACME_ONDEMAND_POLICY_H

#include <stdbool.h>
#include <stddef.h>

struct cfg_site;
struct cfg_ondemand;

/* acme_od_name_check returns NULL if name (lower case, as the TLS layer
 * normalised the SNI: no trailing dot) could go to a public CA, else a short
 * reason: bad length or labels (LDH only, A-labels for IDNs), no dot,
 * localhost, an IP literal. */
const char *acme_od_name_check(const char *name);

/* acme_od_pattern_match: an exact pattern matches itself; "*.suffix"
 * matches any name ending in ".suffix", at any depth. */
bool acme_od_pattern_match(const char *pattern, const char *name);

/* acme_od_site_covers tells whether an on-demand site serves name: one of
 * its hosts (a "*." host covers one label, as routing does), or any name
 * when it has no hosts. */
bool acme_od_site_covers(const struct cfg_site *site, const char *name);

/* acme_od_static_check applies everything decidable without asking anyone:
 * the name check, the site's hosts, the allow patterns. NULL if the name may
 * go on (to ask, if configured), else the reason. */
const char *acme_od_static_check(const struct cfg_site *site, const char *name);

/* The Public Suffix List (publicsuffix.org), as Debian ships it. */
struct acme_psl;

/* acme_psl_load reads the list at path (NULL: the Debian path); NULL if it
 * cannot be read, and then registered domains fall back to the last two
 * labels. */
struct acme_psl *acme_psl_load(const char *path);
void acme_psl_free(struct acme_psl *psl);

/* acme_psl_registered_domain writes the registered domain of name (the
 * public suffix plus one label: "a.b.example.co.uk" -> "example.co.uk") to
 * out; returns false if name is itself a public suffix (nobody may order
 * "co.uk") or does not fit. psl may be NULL. */
bool acme_psl_registered_domain(const struct acme_psl *psl, const char *name, char *out,
                                size_t cap);

#endif
