/* close_visible.c - linked into ThreadSanitizer builds only (`make tsan`).
 *
 * libuv closes descriptors with syscall(SYS_close, fd) rather than close(),
 * which ThreadSanitizer does not intercept. TSan then keeps the old owner's
 * accesses on a descriptor number the kernel has recycled, and the next
 * owner's open/dup/close of that number (a file of the registry, the tsdb, a
 * backup) is reported as a data race with, say, an I/O thread's long-gone
 * socket. This definition of syscall() in the executable takes libuv's calls
 * (the dynamic linker binds libuv's reference to the executable's symbol),
 * turns SYS_close into close(), which TSan sees, and hands every other call
 * to the C library's syscall() unchanged. */

#include <dlfcn.h>
#include <stdarg.h>
#include <sys/syscall.h>
#include <unistd.h>

typedef long (*syscall_fn)(long, ...);

static syscall_fn real_syscall;

__attribute__((constructor)) static void find_real_syscall(void)
{
    __atomic_store_n(&real_syscall, (syscall_fn)dlsym(RTLD_NEXT, "syscall"), __ATOMIC_RELEASE);
}

long syscall(long n, ...)
{
    va_list ap;
    va_start(ap, n);
    long a[6];
    for (int i = 0; i < 6; i++) a[i] = va_arg(ap, long); /* as glibc's syscall() reads them */
    va_end(ap);
    if (n == SYS_close) return close((int)a[0]);
    syscall_fn real = __atomic_load_n(&real_syscall, __ATOMIC_ACQUIRE);
    return real(n, a[0], a[1], a[2], a[3], a[4], a[5]);
}
