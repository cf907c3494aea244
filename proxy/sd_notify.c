/* sd_notify(3) by hand: one non-blocking datagram per state change. */
#include "proxy/sd_notify.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "proxy/core/log.h"

void dm_sd_notify(const char *state)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (path == NULL || path[0] == '\0') {
        return;
    }
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    size_t len = strlen(path);
    /* "/path" or "@abstract" (the '@' stands for the leading NUL). */
    if ((path[0] != '/' && path[0] != '@') || len >= sizeof(sun.sun_path)) {
        DM_LOG_DBG("main", "NOTIFY_SOCKET %s: not a unix socket path", path);
        return;
    }
    memcpy(sun.sun_path, path, len);
    if (path[0] == '@') {
        sun.sun_path[0] = '\0';
    }
    socklen_t sa_len =
        (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + (path[0] == '@' ? 0 : 1));
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        DM_LOG_DBG("main", "sd_notify: socket: %s", strerror(errno));
        return;
    }
    if (sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sun, sa_len) < 0) {
        DM_LOG_DBG("main", "sd_notify %s: %s", path, strerror(errno));
    }
    close(fd);
}

void dm_sd_notify_ready(void)
{
    char msg[64];
    snprintf(msg, sizeof(msg), "MAINPID=%ld\nREADY=1", (long)getpid());
    dm_sd_notify(msg);
}

void dm_sd_notify_reloading(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    char msg[64];
    snprintf(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%llu",
             (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000);
    dm_sd_notify(msg);
}
