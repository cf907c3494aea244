/* Clocks; see time.h. */
#include "proxy/core/time.h"

#include <stdatomic.h>

static _Atomic(time_t) mocked_now = 0;

time_t dm_time_now(void)
{
    time_t m = atomic_load_explicit(&mocked_now, memory_order_relaxed);
    return m != 0 ? m : time(NULL);
}

void dm_time_mock(time_t t)
{
    atomic_store(&mocked_now, t);
}

uint64_t dm_time_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}
