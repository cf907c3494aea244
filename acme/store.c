/* The certificate store: lower-case name -> refcounted struct acme_cert, read
 * by every worker thread during handshakes and written by the control thread.
 * Locking: one pthread_rwlock. Readers hold the read lock only to find the
 * entry and take a reference (acme_cert_ref); writers build entries before
 * taking the write lock and drop replaced certificates after releasing it, so
 * no lock is held while freeing or allocating per-entry memory. A handshake
 * keeps its reference, so a swap never frees a certificate in use. The lock
 * prefers writers so a busy worker pool cannot starve a renewal. (A later
 * version may replace the lock with RCU; the API does not change.) */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>
#include <openssl/siphash.h>

#include "acme/acme.h"
#include "acme/cert_int.h"

/* Initial bucket count; doubles whenever entries exceed buckets. */
#define STORE_INITIAL_BUCKETS 64

struct store_entry {
    struct store_entry *next; /* owned: next in the bucket */
    struct acme_cert *cert;   /* ref */
    uint64_t hash;
    size_t name_len; /* bytes, without the NUL */
    char name[];     /* lower-case */
};

struct acme_store {
    pthread_rwlock_t lock;
    struct store_entry **buckets; /* owned array of owned chains; guarded by lock */
    size_t num_buckets;           /* power of two */
    size_t count;                 /* names mapped; guarded by lock */
    uint64_t hash_key[2];         /* SipHash key: names may one day come from SNI (on-demand) */
    char default_name[ACME_NAME_MAX + 1]; /* no-SNI fallback; "" = none; guarded by lock */
};

/* store_lower copies name lower-cased into out (ACME_NAME_MAX + 1 bytes);
 * -1 if empty, too long or containing NUL. */
static int store_lower(char *out, const char *name, size_t len)
{
    if (len == 0 || len > ACME_NAME_MAX || memchr(name, '\0', len) != NULL) {
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        char ch = name[i];
        out[i] = ch >= 'A' && ch <= 'Z' ? (char)(ch - 'A' + 'a') : ch;
    }
    out[len] = '\0';
    return 0;
}

static uint64_t store_hash(const struct acme_store *s, const char *name, size_t len)
{
    return SIPHASH_24(s->hash_key, (const uint8_t *)name, len);
}

/* store_lookup finds an entry; caller holds the lock (either mode). */
static struct store_entry *store_lookup(const struct acme_store *s, const char *name, size_t len,
                                        uint64_t hash)
{
    struct store_entry *e = s->buckets[hash & (s->num_buckets - 1)];
    for (; e != NULL; e = e->next) {
        if (e->hash == hash && e->name_len == len && memcmp(e->name, name, len) == 0) {
            return e;
        }
    }
    return NULL;
}

/* acme_store_new returns an empty store, or NULL when out of memory. */
struct acme_store *acme_store_new(void)
{
    struct acme_store *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        return NULL;
    }
    s->num_buckets = STORE_INITIAL_BUCKETS;
    s->buckets = calloc(s->num_buckets, sizeof(*s->buckets));
    if (s->buckets == NULL) {
        free(s);
        return NULL;
    }
    RAND_bytes((uint8_t *)s->hash_key, sizeof(s->hash_key));
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    int rc = pthread_rwlock_init(&s->lock, &attr);
    pthread_rwlockattr_destroy(&attr);
    if (rc != 0) {
        free(s->buckets);
        free(s);
        return NULL;
    }
    return s;
}

/* acme_store_free drops every entry's reference and frees the store. No other
 * thread may use it any more; certificates they hold stay valid. */
void acme_store_free(struct acme_store *s)
{
    if (s == NULL) {
        return;
    }
    for (size_t i = 0; i < s->num_buckets; i++) {
        struct store_entry *e = s->buckets[i];
        while (e != NULL) {
            struct store_entry *next = e->next;
            acme_cert_unref(e->cert);
            free(e);
            e = next;
        }
    }
    free(s->buckets);
    pthread_rwlock_destroy(&s->lock);
    free(s);
}

struct acme_cert *acme_store_get(struct acme_store *s, const char *name, size_t name_len)
{
    char exact[ACME_NAME_MAX + 1];
    char wild[ACME_NAME_MAX + 2];
    if (store_lower(exact, name, name_len) != 0) {
        return NULL;
    }
    /* "*" + ".parent": only the leftmost label is replaced (RFC 6125 §6.4.3). */
    const char *dot = memchr(exact, '.', name_len);
    size_t wild_len = 0;
    if (dot != NULL && dot != exact && dot[1] != '\0') {
        wild_len = 1 + (name_len - (size_t)(dot - exact));
        wild[0] = '*';
        memcpy(wild + 1, dot, wild_len); /* with the NUL */
    }
    uint64_t h_exact = store_hash(s, exact, name_len);
    uint64_t h_wild = wild_len > 0 ? store_hash(s, wild, wild_len) : 0;

    struct acme_cert *c = NULL;
    pthread_rwlock_rdlock(&s->lock);
    struct store_entry *e = store_lookup(s, exact, name_len, h_exact);
    if (e == NULL && wild_len > 0) {
        e = store_lookup(s, wild, wild_len, h_wild);
    }
    if (e != NULL) {
        c = acme_cert_ref(e->cert);
    }
    pthread_rwlock_unlock(&s->lock);
    return c;
}

struct acme_cert *acme_store_get_default(struct acme_store *s)
{
    struct acme_cert *c = NULL;
    pthread_rwlock_rdlock(&s->lock);
    size_t len = strlen(s->default_name);
    if (len > 0) {
        struct store_entry *e =
            store_lookup(s, s->default_name, len, store_hash(s, s->default_name, len));
        if (e != NULL) {
            c = acme_cert_ref(e->cert);
        }
    }
    pthread_rwlock_unlock(&s->lock);
    return c;
}

/* store_grow doubles the bucket array; caller holds the write lock. On
 * allocation failure the table keeps working with longer chains. */
static void store_grow(struct acme_store *s)
{
    size_t n = s->num_buckets * 2;
    struct store_entry **b = calloc(n, sizeof(*b));
    if (b == NULL) {
        return;
    }
    for (size_t i = 0; i < s->num_buckets; i++) {
        struct store_entry *e = s->buckets[i];
        while (e != NULL) {
            struct store_entry *next = e->next;
            e->next = b[e->hash & (n - 1)];
            b[e->hash & (n - 1)] = e;
            e = next;
        }
    }
    free(s->buckets);
    s->buckets = b;
    s->num_buckets = n;
}

int acme_store_put(struct acme_store *s, const char *name, struct acme_cert *cert, bool is_default)
{
    if (name == NULL || cert == NULL) {
        return -1;
    }
    size_t len = strlen(name);
    struct store_entry *fresh = malloc(sizeof(*fresh) + ACME_NAME_MAX + 1);
    if (fresh == NULL) {
        return -1;
    }
    if (store_lower(fresh->name, name, len) != 0) {
        free(fresh);
        return -1;
    }
    fresh->name_len = len;
    fresh->hash = store_hash(s, fresh->name, len);
    fresh->cert = acme_cert_ref(cert);
    fresh->next = NULL;

    struct acme_cert *old = NULL;
    pthread_rwlock_wrlock(&s->lock);
    struct store_entry *e = store_lookup(s, fresh->name, len, fresh->hash);
    if (e != NULL) {
        old = e->cert;
        e->cert = fresh->cert;
        fresh->cert = NULL;
    } else {
        size_t b = fresh->hash & (s->num_buckets - 1);
        fresh->next = s->buckets[b];
        s->buckets[b] = fresh;
        s->count++;
        if (s->count > s->num_buckets) {
            store_grow(s);
        }
    }
    if (is_default || s->default_name[0] == '\0') {
        memcpy(s->default_name, fresh->name, len + 1);
    }
    pthread_rwlock_unlock(&s->lock);

    if (e != NULL) {
        free(fresh); /* the existing entry took the new reference */
    }
    acme_cert_unref(old);
    return 0;
}

void acme_store_remove(struct acme_store *s, const char *name)
{
    char key[ACME_NAME_MAX + 1];
    size_t len = name != NULL ? strlen(name) : 0;
    if (store_lower(key, name, len) != 0) {
        return;
    }
    uint64_t h = store_hash(s, key, len);
    struct store_entry *gone = NULL;
    pthread_rwlock_wrlock(&s->lock);
    struct store_entry **pp = &s->buckets[h & (s->num_buckets - 1)];
    for (; *pp != NULL; pp = &(*pp)->next) {
        struct store_entry *e = *pp;
        if (e->hash == h && e->name_len == len && memcmp(e->name, key, len) == 0) {
            *pp = e->next;
            gone = e;
            s->count--;
            break;
        }
    }
    if (gone != NULL && strcmp(s->default_name, key) == 0) {
        s->default_name[0] = '\0'; /* the next put becomes the default */
    }
    pthread_rwlock_unlock(&s->lock);
    if (gone != NULL) {
        acme_cert_unref(gone->cert);
        free(gone);
    }
}

size_t acme_store_count(struct acme_store *s)
{
    pthread_rwlock_rdlock(&s->lock);
    size_t n = s->count;
    pthread_rwlock_unlock(&s->lock);
    return n;
}
