/* The client side of the admin API for `doorman reload` and `doorman
 * health`: one blocking request over the unix socket, bounded in time
 * (DM_ADMIN_TIMEOUT_MS through socket timeouts) and size. Runs only in the
 * short-lived CLI process, never inside the proxy. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "proxy/admin.h"
#include "proxy/core/err.h"
#include "proxy/core/time.h"

/* Largest answer read: a config dump or certificate list is far smaller. */
#define ADMIN_CLIENT_MAX_RESPONSE (8u * 1024 * 1024)

/* io_wait waits until fd is ready for events or the deadline (monotonic us)
 * passes. Returns 0, or -1 with err. */
static int io_wait(int fd, short events, uint64_t deadline_us, struct dm_err *err)
{
    for (;;) {
        uint64_t now = dm_time_mono_us();
        if (now >= deadline_us) {
            dm_err_set(err, DM_E_TIMEOUT, "the admin API did not answer within %d s",
                       DM_ADMIN_TIMEOUT_MS / 1000);
            return -1;
        }
        struct pollfd p = {.fd = fd, .events = events};
        int n = poll(&p, 1, (int)((deadline_us - now) / 1000) + 1);
        if (n > 0) {
            return 0;
        }
        if (n < 0 && errno != EINTR) {
            dm_err_set_errno(err, errno, "poll");
            return -1;
        }
    }
}

static int send_all(int fd, const char *p, size_t len, uint64_t deadline_us, struct dm_err *err)
{
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            if (io_wait(fd, POLLOUT, deadline_us, err) != 0) {
                return -1;
            }
            continue;
        }
        dm_err_set_errno(err, errno, "admin API: send");
        return -1;
    }
    return 0;
}

int dm_admin_call(const char *sock_path, const char *method, const char *target,
                  const char *extra_headers, const char *body, size_t body_len, int *out_status,
                  char **out_body, struct dm_err *err)
{
    int rc = -1;
    char *resp = NULL;
    size_t len = 0;
    uint64_t deadline = dm_time_mono_us() + (uint64_t)DM_ADMIN_TIMEOUT_MS * 1000;
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    if (strlen(sock_path) >= sizeof(sun.sun_path)) {
        dm_err_set(err, DM_E_CONFIG, "%s: path too long for a unix socket", sock_path);
        return -1;
    }
    memcpy(sun.sun_path, sock_path, strlen(sock_path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        dm_err_set_errno(err, errno, "socket");
        return -1;
    }
    if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) != 0) {
        dm_err_set_errno(err, errno,
                         "cannot reach the admin API at %s (is doorman running with this data "
                         "directory?)",
                         sock_path);
        goto out;
    }
    char head[2048];
    int n = snprintf(head, sizeof(head),
                     "%s %s HTTP/1.1\r\nHost: doorman\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n%s\r\n",
                     method, target, body_len, extra_headers != NULL ? extra_headers : "");
    if (n < 0 || (size_t)n >= sizeof(head)) {
        dm_err_set(err, DM_E_PROTO, "request head too long");
        goto out;
    }
    if (send_all(fd, head, (size_t)n, deadline, err) != 0 ||
        send_all(fd, body, body_len, deadline, err) != 0) {
        goto out;
    }
    size_t cap = 0;
    for (;;) {
        if (len + 1 >= cap) {
            if (cap >= ADMIN_CLIENT_MAX_RESPONSE) {
                dm_err_set(err, DM_E_LIMIT, "admin API answer larger than %u bytes",
                           ADMIN_CLIENT_MAX_RESPONSE);
                goto out;
            }
            cap = cap ? cap * 2 : 16384;
            char *bigger = realloc(resp, cap);
            if (bigger == NULL) {
                dm_err_set(err, DM_E_NOMEM, "out of memory");
                goto out;
            }
            resp = bigger;
        }
        ssize_t r = recv(fd, resp + len, cap - len - 1, MSG_DONTWAIT);
        if (r > 0) {
            len += (size_t)r;
            continue;
        }
        if (r == 0) {
            break;
        }
        if (errno == EAGAIN || errno == EINTR) {
            if (io_wait(fd, POLLIN, deadline, err) != 0) {
                goto out;
            }
            continue;
        }
        dm_err_set_errno(err, errno, "admin API: recv");
        goto out;
    }
    resp[len] = '\0';
    int status = 0;
    char *sep = strstr(resp, "\r\n\r\n");
    if (sscanf(resp, "HTTP/1.%*d %d", &status) != 1 || sep == NULL) {
        dm_err_set(err, DM_E_PROTO, "admin API: malformed answer");
        goto out;
    }
    size_t body_off = (size_t)(sep + 4 - resp);
    memmove(resp, resp + body_off, len - body_off + 1);
    *out_status = status;
    *out_body = resp;
    resp = NULL;
    rc = 0;
out:
    free(resp);
    close(fd);
    return rc;
}
