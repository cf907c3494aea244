/* The dns-01 solver (RFC 8555 §8.4): a user's hook program publishes and
 * withdraws the TXT record _acme-challenge.<name>. so any DNS provider works.
 * The hook runs as a child process with watched pipes, never blocking the
 * loop. How to write one: docs/dns-hook.md. Control thread only. */
#ifndef DM_ACME_SOLVER_DNS01_H
#define DM_ACME_SOLVER_DNS01_H

#include <stdint.h>

struct acme_solver_ops;
struct dm_err;
struct event_base;

/* A hook that has not exited after this long is killed (with its process
 * group): provider APIs answer in seconds, and a stuck hook must not hold an
 * order until its own deadline. */
#define ACME_DNS01_HOOK_TIMEOUT_MS (60 * 1000)

/* Output (stdout and stderr together) kept for the error message; the rest
 * is read and dropped so the hook never blocks on a full pipe. */
#define ACME_DNS01_HOOK_OUTPUT_MAX 4096

struct acme_solver_dns01;

/* acme_solver_dns01_new makes the context of a dns-01 solver that runs hook
 * (an absolute path, copied) on base (borrowed; it must outlive the solver)
 * and waits propagation_ms after a successful present before reporting the
 * record ready. Returns the context (pass it as struct acme_solver.ctx with
 * acme_solver_dns01_ops()), or NULL with err. */
struct acme_solver_dns01 *acme_solver_dns01_new(struct event_base *base, const char *hook,
                                                uint32_t propagation_ms, struct dm_err *err);

/* acme_solver_dns01_free frees d; NULL does nothing. Pending presents are
 * killed without calling back; cleanup hooks still running are left to
 * finish and are reaped from the loop. Cancel the orders using d first. */
void acme_solver_dns01_free(struct acme_solver_dns01 *d);

/* acme_solver_dns01_ops returns the solver operations (static storage).
 * present runs `HOOK present _acme-challenge.<identifier>. <TXT value>` and
 * returns 1: ready follows from the loop after the hook exits 0 and the
 * propagation wait, or with an error holding the hook's output. cleanup runs
 * `HOOK cleanup <same arguments>` without waiting for it, once no other
 * challenge under the same record name is in flight, and cancels a pending
 * present (its ready callback never runs). */
const struct acme_solver_ops *acme_solver_dns01_ops(void);

#endif
