/* Fuzz target for the HTTP/2 input path: arbitrary bytes after the client
 * preface reach a real client connection in HTTP/2 state (nghttp2 server
 * session + http2.c's callbacks + the shared request path), through a
 * socketpair and the worker's event loop, exactly as a TLS connection's
 * decrypted bytes would. Requests go to a backend address that refuses
 * connections, so the 502 path runs too. Everything is closed per input. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/event.h>

#include "config/config.h"
#include "proxy/core/log.h"
#include "proxy/proxy_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct dm_worker *fuzz_worker(void)
{
    static struct dm_worker *w;
    if (w != NULL) {
        return w;
    }
    static const char json[] = "{\"redirect_http\": false, \"sites\": [{\"hosts\": [\"h.test\"], "
                               "\"to\": \"127.0.0.1:1\", \"tls\": \"local\"}]}";
    struct cfg_problems problems;
    struct cfg *cfg =
        cfg_load_string(json, sizeof(json) - 1, "fuzz.json", "/tmp/doorman-fuzz", &problems);
    w = calloc(1, sizeof(*w));
    if (cfg == NULL || w == NULL || (w->base = event_base_new()) == NULL ||
        (w->gen = dm_gen_new(cfg, NULL)) == NULL) {
        abort();
    }
    cfg_unref(cfg);
    dm_proxy_g.access_fd = -1;
    /* DM_FUZZ_LOG=1 shows what the inputs do (debug log on stderr). */
    dm_log_setup(getenv("DM_FUZZ_LOG") ? DM_LOG_DEBUG : DM_LOG_ERROR, false, 2);
    return w;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    struct dm_worker *w = fuzz_worker();
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0) {
        return 0;
    }
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    dm_conn_accept(w, sv[0], (struct sockaddr *)&sa, sizeof(sa), false);
    struct dm_conn *c = w->conns;
    if (c == NULL || dm_h2_start(c) != 0) {
        abort();
    }
    c->state = DM_CONN_H2;
    /* The socket buffer holds a fuzz input (libFuzzer's default -max_len is
     * 4096); what does not fit is dropped, like a client that stops. */
    ssize_t n = write(sv[1], preface, sizeof(preface) - 1);
    for (size_t off = 0; n > 0 && off < size; off += (size_t)n) {
        n = write(sv[1], data + off, size - off);
    }
    char junk[65536];
    for (int i = 0; i < 16 && w->conns != NULL; i++) {
        event_base_loop(w->base, EVLOOP_NONBLOCK);
        while (read(sv[1], junk, sizeof(junk)) > 0) {
        }
    }
    close(sv[1]);
    while (w->conns != NULL) {
        dm_conn_force_close(w->conns);
    }
    dm_upstream_pools_close_idle(w);
    return 0;
}
