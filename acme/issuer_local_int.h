/* What the manager needs from the local CA beyond acme.h: whether a stored
 * leaf was signed by the current root (a root recreated after deletion makes
 * every stored leaf useless, since clients trust only the new root). */
#ifndef DM_ACME_ISSUER_LOCAL_INT_H
#define DM_ACME_ISSUER_LOCAL_INT_H

#include <stdbool.h>

#include "acme/acme.h"

/* Seconds the local CA backdates notBefore, so clients with a slightly slow
 * clock accept a fresh leaf. Not part of the useful lifetime: renewal counts
 * from notBefore + this. */
#define ACME_LOCAL_BACKDATE_S 3600

/* acme_local_ca_is_issuer tells whether c's chain is [leaf, this CA's root]. */
bool acme_local_ca_is_issuer(const struct acme_local_ca *ca, const struct acme_cert *c);

#endif
