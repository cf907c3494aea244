/* Minimal unit-test harness: TEST(name) functions registered in a table,
 * CHECK macros that report file:line and continue, a summary line, and a
 * non-zero exit on any failure. */
#ifndef DM_TESTS_HARNESS_H
#define DM_TESTS_HARNESS_H

#include <stdio.h>
#include <string.h>

static int harness_failures;
static int harness_checks;
static const char *harness_current;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        harness_checks++;                                                                          \
        if (!(cond)) {                                                                             \
            harness_failures++;                                                                    \
            fprintf(stderr, "%s:%d: %s: CHECK(%s) failed\n", __FILE__, __LINE__, harness_current,  \
                    #cond);                                                                        \
        }                                                                                          \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                                         \
    do {                                                                                           \
        long long va_ = (long long)(a), vb_ = (long long)(b);                                      \
        harness_checks++;                                                                          \
        if (va_ != vb_) {                                                                          \
            harness_failures++;                                                                    \
            fprintf(stderr, "%s:%d: %s: %s == %lld, expected %s == %lld\n", __FILE__, __LINE__,    \
                    harness_current, #a, va_, #b, vb_);                                            \
        }                                                                                          \
    } while (0)

#define CHECK_STR(a, b)                                                                            \
    do {                                                                                           \
        const char *sa_ = (a), *sb_ = (b);                                                         \
        harness_checks++;                                                                          \
        if (sa_ == NULL || sb_ == NULL || strcmp(sa_, sb_) != 0) {                                 \
            harness_failures++;                                                                    \
            fprintf(stderr, "%s:%d: %s: \"%s\" != \"%s\"\n", __FILE__, __LINE__, harness_current,  \
                    sa_ ? sa_ : "(null)", sb_ ? sb_ : "(null)");                                   \
        }                                                                                          \
    } while (0)

struct harness_test {
    const char *name;
    void (*fn)(void);
};

#define TEST(name) static void name(void)

/* HARNESS_MAIN(tests...) defines main running each listed test. */
#define HARNESS_MAIN(...)                                                                          \
    int main(void)                                                                                 \
    {                                                                                              \
        static const struct harness_test tests_[] = {__VA_ARGS__};                                 \
        for (size_t i_ = 0; i_ < sizeof(tests_) / sizeof(tests_[0]); i_++) {                       \
            harness_current = tests_[i_].name;                                                     \
            int before_ = harness_failures;                                                        \
            tests_[i_].fn();                                                                       \
            fprintf(stderr, "%s %s\n", harness_failures == before_ ? "ok  " : "FAIL",              \
                    tests_[i_].name);                                                              \
        }                                                                                          \
        fprintf(stderr, "%d checks, %d failed\n", harness_checks, harness_failures);               \
        return harness_failures == 0 ? 0 : 1;                                                      \
    }

#define T(fn)                                                                                      \
    {                                                                                              \
#fn, fn                                                                                    \
    }

#endif
