/* Small-file helpers for config, keys and certificates. Writes are atomic:
 * temp file in the same directory, fsync, rename, fsync of the directory, so a
 * crash leaves either the old or the new file, never a torn one. */
#ifndef DM_CORE_FILE_H
#define DM_CORE_FILE_H

#include <stddef.h>
#include <sys/types.h>

struct dm_err;

/* dm_file_read reads all of path into a new NUL-terminated buffer (caller
 * frees *out_data). Fails with DM_E_LIMIT if the file is larger than max_len. */
int dm_file_read(const char *path, size_t max_len, char **out_data, size_t *out_len,
                 struct dm_err *err);

/* dm_file_write_atomic replaces path with data, created with mode (0600 for
 * keys), via temp file + fsync + rename + directory fsync. */
int dm_file_write_atomic(const char *path, const void *data, size_t len, mode_t mode,
                         struct dm_err *err);

/* dm_mkdir_p creates path and its missing parents with mode. */
int dm_mkdir_p(const char *path, mode_t mode, struct dm_err *err);

/* dm_file_exists tells whether path exists (any type). */
int dm_file_exists(const char *path);

#endif
