/* Test hooks of the certificate manager; not for production callers. */
#ifndef DM_ACME_MANAGER_INT_H
#define DM_ACME_MANAGER_INT_H

#include "acme/acme.h"

/* acme_manager_fail_issues makes the next n local-CA issues of m fail, to
 * drive renewal backoff in tests. */
void acme_manager_fail_issues(struct acme_manager *m, int n);

/* acme_manager_renewal_failures returns the consecutive renewal failures of
 * the local certificate serving name, or -1 if none serves it. */
int acme_manager_renewal_failures(const struct acme_manager *m, const char *name);

/* acme_manager_renew_now runs the renewal of the local certificate serving
 * name at once, as its timer would (success reschedules, failure backs off).
 * Returns 0 if it ran (whatever its outcome), -1 if no local certificate
 * serves name. */
int acme_manager_renew_now(struct acme_manager *m, const char *name);

#endif
