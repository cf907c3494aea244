/* The on-demand service as the manager drives it (manager.c). Control
 * thread only. */
#ifndef DM_ACME_ONDEMAND_INT_H
#define DM_ACME_ONDEMAND_INT_H

struct acme_ondemand;
struct acme_store;
struct cfg;
struct event_base;
struct mgr_acme_set;

/* acme_ondemand_new returns the service over set (its ACME clients,
 * accounts and storage) and store, or NULL when out of memory. */
struct acme_ondemand *acme_ondemand_new(struct event_base *base, struct acme_store *store,
                                        struct mgr_acme_set *set);
/* acme_ondemand_free stops every lookup and order and frees od (logging the
 * final summary); on-demand certificates leave the store. NULL: nothing. */
void acme_ondemand_free(struct acme_ondemand *od);
/* acme_ondemand_set_config makes cfg (a new reference is taken) the config
 * whose on-demand sites answer new names; work in flight keeps its own. */
void acme_ondemand_set_config(struct acme_ondemand *od, struct cfg *cfg);

#endif
