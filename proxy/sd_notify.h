/* The systemd notification protocol (sd_notify(3)), without libsystemd: a
 * datagram to $NOTIFY_SOCKET. With the shipped unit (Type=notify,
 * NotifyAccess=all) systemd learns when doorman serves, reloads and stops,
 * and a binary upgrade hands the service's main PID to the new process. */
#ifndef DM_PROXY_SD_NOTIFY_H
#define DM_PROXY_SD_NOTIFY_H

/* dm_sd_notify sends state (e.g. "READY=1") to systemd if NOTIFY_SOCKET is
 * set; nothing otherwise. Never blocks; errors are logged at debug level
 * (systemd going away must not stop the proxy). Control thread. */
void dm_sd_notify(const char *state);

/* dm_sd_notify_ready says this process serves and is the service's main
 * process ("MAINPID=<pid>\nREADY=1"): after a binary upgrade the new
 * process takes over as the unit's main PID, so the old one's exit is not
 * the service's end. */
void dm_sd_notify_ready(void);

/* dm_sd_notify_reloading brackets a reload: RELOADING=1 with the monotonic
 * time systemd 253+ asks for; dm_sd_notify_ready ends it. */
void dm_sd_notify_reloading(void);

#endif
