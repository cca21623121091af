/* net.c - I/O threads with one libuv loop each, SO_REUSEPORT listeners and a
 * cross-thread task queue per thread (a mutex-guarded vector swapped out as a
 * whole, with one uv_async_send per batch). */
#include "net/net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/config.h"
#include "core/log.h"

#define NET_MAX_LISTENERS 8
#define NET_MAX_HOOKS     8

typedef struct task {
    net_task_fn fn;
    void *arg;
} task;

typedef struct listener {
    uv_tcp_t tcp;
    net_accept_fn fn;
    void *ctx;
    int thread;
    int fd;
    int open;
} listener;

typedef struct thread {
    int idx;
    pthread_t tid;
    uv_loop_t loop;
    uv_async_t wake;
    pthread_mutex_t mu;
    task *q;
    size_t qlen, qcap;
    task *run; /* the batch being run, swapped with q */
    size_t runcap;
    listener lst[NET_MAX_LISTENERS];
    int nlst;
    int stopping;
    uv_sem_t started;
} thread;

static thread *threads;
static int nthreads;
static __thread int self_idx = -1;

static struct {
    net_thread_fn start, stop;
    void *ctx;
} thread_hooks[NET_MAX_HOOKS];
static int nthread_hooks;
static struct {
    net_batch_fn fn;
    void *ctx;
} batch_hooks[NET_MAX_HOOKS];
static int nbatch_hooks;

int net_threads(void)
{
    return nthreads;
}

int net_self(void)
{
    return self_idx;
}

uv_loop_t *net_loop(int i)
{
    return &threads[i].loop;
}

void net_on_thread(net_thread_fn on_start, net_thread_fn on_stop, void *ctx)
{
    if (nthread_hooks == NET_MAX_HOOKS) abort();
    thread_hooks[nthread_hooks].start = on_start;
    thread_hooks[nthread_hooks].stop = on_stop;
    thread_hooks[nthread_hooks++].ctx = ctx;
}

void net_on_batch_end(net_batch_fn fn, void *ctx)
{
    if (nbatch_hooks == NET_MAX_HOOKS) abort();
    batch_hooks[nbatch_hooks].fn = fn;
    batch_hooks[nbatch_hooks++].ctx = ctx;
}

void net_batch_end(int i)
{
    for (int h = 0; h < nbatch_hooks; h++) batch_hooks[h].fn(i, batch_hooks[h].ctx);
}

static void on_wake(uv_async_t *a)
{
    thread *t = a->data;
    /* Run until the queue stays empty: tasks may post to their own thread. */
    for (;;) {
        pthread_mutex_lock(&t->mu);
        task *batch = t->q;
        size_t n = t->qlen;
        size_t cap = t->qcap;
        t->q = t->run;
        t->qcap = t->runcap;
        t->qlen = 0;
        t->run = batch;
        t->runcap = cap;
        pthread_mutex_unlock(&t->mu);
        if (n == 0) break;
        for (size_t k = 0; k < n; k++) batch[k].fn(t->idx, batch[k].arg);
    }
    net_batch_end(t->idx);
}

void net_post(int i, net_task_fn fn, void *arg)
{
    thread *t = &threads[i];
    pthread_mutex_lock(&t->mu);
    if (t->qlen == t->qcap) {
        size_t cap = t->qcap ? t->qcap * 2 : 64;
        task *q = realloc(t->q, cap * sizeof *q);
        if (!q) {
            /* Out of memory with a task in hand: nothing sane to do but stop. */
            log_error("net", "cannot queue a cross-thread task: out of memory");
            abort();
        }
        t->q = q;
        t->qcap = cap;
    }
    int wake = t->qlen == 0 && !t->stopping;
    t->q[t->qlen++] = (task){fn, arg};
    /* One wakeup per batch: only the post that made the queue non-empty.
     * Sent under the lock, so that it cannot race with shutdown_task closing
     * the handle (which happens after `stopping` is set under the lock). */
    if (wake) uv_async_send(&t->wake);
    pthread_mutex_unlock(&t->mu);
}

static void on_connection(uv_stream_t *server, int status)
{
    listener *l = server->data;
    if (status < 0) {
        log_warn("net", "accept: %s", uv_strerror(status));
        return;
    }
    uv_tcp_t *c = malloc(sizeof *c);
    if (!c) return;
    uv_tcp_init(&threads[l->thread].loop, c);
    if (uv_accept(server, (uv_stream_t *)c) != 0) {
        uv_close((uv_handle_t *)c, (uv_close_cb)free);
        return;
    }
    uv_tcp_nodelay(c, 1);
    l->fn(l->thread, c, l->ctx);
}

static int open_reuseport(const char *addr, int *fd_out)
{
    char host[THZ_ADDR_MAX];
    int port;
    if (config_split_addr(addr, host, sizeof host, &port) != THZ_OK) return -EINVAL;
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    int family;
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) == 0) {
        family = AF_INET;
    } else if (uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss) == 0) {
        family = AF_INET6;
    } else {
        return -EINVAL;
    }
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0 ||
        bind(fd, (struct sockaddr *)&ss,
             family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6)) != 0 ||
        listen(fd, 4096) != 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    *fd_out = fd;
    return 0;
}

thz_err net_listen(const char *addr, net_accept_fn fn, void *ctx)
{
    /* An ephemeral port (":0") must be the same for every thread's socket:
     * bind the first, read back its port and bind the others to it. */
    char resolved[THZ_ADDR_MAX];
    snprintf(resolved, sizeof resolved, "%s", addr);
    for (int i = 0; i < nthreads; i++) {
        thread *t = &threads[i];
        if (t->nlst == NET_MAX_LISTENERS) return THZ_EINVAL;
        int fd = -1;
        int rc = open_reuseport(resolved, &fd);
        if (rc < 0) {
            log_error("net", "listen on %s: %s", addr, strerror(-rc));
            return rc == -EINVAL ? THZ_EINVAL : THZ_EIO;
        }
        if (i == 0) {
            struct sockaddr_storage ss;
            socklen_t sl = sizeof ss;
            char host[THZ_ADDR_MAX];
            int port;
            getsockname(fd, (struct sockaddr *)&ss, &sl);
            config_split_addr(addr, host, sizeof host, &port);
            port = ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                                 : ((struct sockaddr_in6 *)&ss)->sin6_port);
            snprintf(resolved, sizeof resolved, ss.ss_family == AF_INET6 ? "[%s]:%d" : "%s:%d",
                     host[0] == '[' ? host : host, port);
            log_info("net", "listening on %s (%d threads, SO_REUSEPORT)", resolved, nthreads);
        }
        listener *l = &t->lst[t->nlst++];
        l->fn = fn;
        l->ctx = ctx;
        l->thread = i;
        l->fd = fd;
    }
    return THZ_OK;
}

static void *thread_main(void *arg)
{
    thread *t = arg;
    self_idx = t->idx;
    for (int k = 0; k < t->nlst; k++) {
        listener *l = &t->lst[k];
        uv_tcp_init(&t->loop, &l->tcp);
        l->tcp.data = l;
        if (uv_tcp_open(&l->tcp, l->fd) != 0 ||
            uv_listen((uv_stream_t *)&l->tcp, 4096, on_connection) != 0) {
            log_error("net", "thread %d cannot listen", t->idx);
            close(l->fd);
            continue;
        }
        l->open = 1;
    }
    for (int h = 0; h < nthread_hooks; h++)
        if (thread_hooks[h].start) thread_hooks[h].start(t->idx, &t->loop, thread_hooks[h].ctx);
    uv_sem_post(&t->started);
    uv_run(&t->loop, UV_RUN_DEFAULT);
    return NULL;
}

thz_err net_init(int n)
{
    if (n <= 0) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        n = c > 0 ? (int)c : 1;
    }
    if (n > NET_MAX_THREADS) n = NET_MAX_THREADS;
    threads = calloc((size_t)n, sizeof *threads);
    if (!threads) return THZ_ENOMEM;
    nthreads = n;
    for (int i = 0; i < n; i++) {
        thread *t = &threads[i];
        t->idx = i;
        uv_loop_init(&t->loop);
        uv_async_init(&t->loop, &t->wake, on_wake);
        t->wake.data = t;
        pthread_mutex_init(&t->mu, NULL);
        uv_sem_init(&t->started, 0);
    }
    return THZ_OK;
}

thz_err net_start(void)
{
    for (int i = 0; i < nthreads; i++)
        if (pthread_create(&threads[i].tid, NULL, thread_main, &threads[i]) != 0) return THZ_EIO;
    for (int i = 0; i < nthreads; i++) uv_sem_wait(&threads[i].started);
    return THZ_OK;
}

static void stop_accepting_task(int i, void *arg)
{
    thread *t = &threads[i];
    for (int k = 0; k < t->nlst; k++)
        if (t->lst[k].open) {
            t->lst[k].open = 0;
            uv_close((uv_handle_t *)&t->lst[k].tcp, NULL);
        }
}

void net_stop_accepting(void)
{
    for (int i = 0; i < nthreads; i++) net_post(i, stop_accepting_task, NULL);
}

static void shutdown_task(int i, void *arg)
{
    thread *t = &threads[i];
    stop_accepting_task(i, NULL);
    for (int h = 0; h < nthread_hooks; h++)
        if (thread_hooks[h].stop) thread_hooks[h].stop(i, &t->loop, thread_hooks[h].ctx);
    pthread_mutex_lock(&t->mu);
    t->stopping = 1;
    pthread_mutex_unlock(&t->mu);
    uv_close((uv_handle_t *)&t->wake, NULL);
}

void net_shutdown(void)
{
    for (int i = 0; i < nthreads; i++) net_post(i, shutdown_task, NULL);
    /* Every thread must be gone before any queue is drained: a thread still
     * stopping may post to the others. */
    for (int i = 0; i < nthreads; i++) pthread_join(threads[i].tid, NULL);
    for (int i = 0; i < nthreads; i++) {
        thread *t = &threads[i];
        if (uv_loop_close(&t->loop) != 0) log_warn("net", "thread %d: loop had open handles", i);
        /* Tasks posted after the wakeup handle closed never ran; run them
         * here so that their resources are released (they are told by
         * net_self() == -1 that the loop is gone). */
        for (size_t k = 0; k < t->qlen; k++) t->q[k].fn(i, t->q[k].arg);
        t->qlen = 0;
    }
    for (int i = 0; i < nthreads; i++) {
        thread *t = &threads[i];
        free(t->q);
        free(t->run);
        pthread_mutex_destroy(&t->mu);
        uv_sem_destroy(&t->started);
    }
    free(threads);
    threads = NULL;
    nthreads = 0;
}

bool net_peer_name(const uv_tcp_t *tcp, char *out, size_t n)
{
    struct sockaddr_storage ss;
    int sl = sizeof ss;
    char host[48];
    int port;
    if (uv_tcp_getpeername(tcp, (struct sockaddr *)&ss, &sl) != 0) return false;
    if (ss.ss_family == AF_INET) {
        uv_ip4_name((struct sockaddr_in *)&ss, host, sizeof host);
        port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    } else if (ss.ss_family == AF_INET6) {
        uv_ip6_name((struct sockaddr_in6 *)&ss, host, sizeof host);
        port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    } else {
        return false;
    }
    snprintf(out, n, "%s:%d", host, port);
    return true;
}
