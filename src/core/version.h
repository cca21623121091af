/* version.h - the version of thinghz, one definition for the CLI, logs and API. */
#ifndef THZ_VERSION_H
#define THZ_VERSION_H

#define THINGHZ_VERSION "0.1.0"

#endif
