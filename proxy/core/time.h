/* Clocks. Wall time is mockable so tests of renewal and expiry are
 * deterministic; monotonic time measures durations. */
#ifndef DM_CORE_TIME_H
#define DM_CORE_TIME_H

#include <stdint.h>
#include <time.h>

/* dm_time_now returns wall-clock seconds since the epoch, or the mocked value. */
time_t dm_time_now(void);

/* dm_time_mock makes dm_time_now return t; 0 restores the real clock. */
void dm_time_mock(time_t t);

/* dm_time_mono_us returns a monotonic clock in microseconds. */
uint64_t dm_time_mono_us(void);

#endif
