/* net.h - the I/O runtime: N threads, each running its own libuv loop that
 * owns its connections end to end; SO_REUSEPORT listeners so that every
 * thread accepts; cross-thread tasks with one wakeup per batch. */
#ifndef THZ_NET_H
#define THZ_NET_H

#include <stdbool.h>
#include <stddef.h>

#include <uv.h>

#include "core/err.h"

#define NET_MAX_THREADS 256

/* Called on the accepting thread with a fresh, accepted uv_tcp_t that the
 * callee now owns (it must uv_close it eventually; the handle memory was
 * malloc'd by net and is released by the callee's close callback with free()). */
typedef void (*net_accept_fn)(int thread, uv_tcp_t *client, void *ctx);
/* A task run on a chosen I/O thread. */
typedef void (*net_task_fn)(int thread, void *arg);
/* Called on each I/O thread once its loop exists (init) and when it stops. */
typedef void (*net_thread_fn)(int thread, uv_loop_t *loop, void *ctx);

/* Prepares n threads (not started yet). n <= 0 means one per core. */
thz_err net_init(int n);
/* Number of I/O threads. */
int net_threads(void);
/* Index of the calling I/O thread, or -1 on any other thread. */
int net_self(void);
/* The loop of thread i; use only from thread i. */
uv_loop_t *net_loop(int i);

/* Registers a callback run on every thread at start (before any accept) and
 * one run at stop (after listeners closed, before the loop is drained). */
void net_on_thread(net_thread_fn on_start, net_thread_fn on_stop, void *ctx);

/* Registers a hook run on a thread after each batch of work it did (after a
 * read callback's processing or a wakeup): where protocol code flushes its
 * output and its outgoing cross-thread batches. */
typedef void (*net_batch_fn)(int thread, void *ctx);
void net_on_batch_end(net_batch_fn fn, void *ctx);

/* Opens one SO_REUSEPORT listening socket per thread on "ADDR:PORT" (before
 * net_start). Every accepted connection goes to fn on its thread. */
thz_err net_listen(const char *addr, net_accept_fn fn, void *ctx);

/* Writes the peer address of tcp as "HOST:PORT" (IPv4 or IPv6) into out
 * (NUL-terminated, cut to n). Returns false, with out untouched, when the
 * socket has no peer (closed, or not a connected TCP socket). */
bool net_peer_name(const uv_tcp_t *tcp, char *out, size_t n);

/* Starts the threads. */
thz_err net_start(void);

/* Queues fn(arg) on thread i; thread-safe; wakes i at most once per batch. */
void net_post(int i, net_task_fn fn, void *arg);

/* Marks the end of a unit of work on the calling I/O thread: runs the
 * batch-end hooks. Protocol read callbacks call it after processing. */
void net_batch_end(int thread);

/* Stops accepting on every thread (listeners closed); connections stay. */
void net_stop_accepting(void);
/* Asks every thread to finish: runs the on_stop hooks, which must close their
 * connections, then the loops run until no handle is left, and the threads
 * are joined. */
void net_shutdown(void);

#endif
