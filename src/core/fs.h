/* fs.h - small file-system helpers shared by the modules that keep files in
 * the data directory. */
#ifndef THZ_FS_H
#define THZ_FS_H

#include <sys/types.h>

/* Creates directory path and its missing parents with mode (like mkdir -p;
 * existing ones are left as they are). 0, or -1 with errno set. A path
 * longer than PATH_MAX is cut there. */
int thz_mkdir_p(const char *path, mode_t mode);

#endif
