/* probes.h - header readability probes, shared by hakmem-ref (free path) and the driver
 * (probe audit). Each probe answers "may the allocator read len bytes at addr?":
 * 1 = readable, 0 = unreadable. They are static inline so both libraries carry the same code
 * and the driver can audit exactly what the allocator runs.
 */
#ifndef HAK_PROBES_H
#define HAK_PROBES_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

/* The seed's Option 1, exactly as written:
 *     unsigned char vec;
 *     return mincore(addr, 1, &vec) == 0;
 * mincore() wants a page-aligned addr (EINVAL otherwise), so this says "unreadable" for
 * every address that is not page-aligned, and "readable" for mapped PROT_NONE pages. */
static inline int hak_probe_seed_mincore(void *addr) {
    unsigned char vec;
    return mincore(addr, 1, &vec) == 0;
}

/* The seed's Option 2, exactly as written:
 *     return msync(addr, 1, MS_ASYNC) == 0 || errno == ENOMEM;
 * msync() also wants a page-aligned addr (EINVAL -> "unreadable"), and it fails with ENOMEM
 * precisely when the range is unmapped, which this code counts as readable. */
static inline int hak_probe_seed_msync(void *addr) {
    return msync(addr, 1, MS_ASYNC) == 0 || errno == ENOMEM;
}

static inline uintptr_t hak_probe_page_size(void) {
    static uintptr_t ps;
    if (!ps) ps = (uintptr_t)sysconf(_SC_PAGESIZE);
    return ps;
}

/* Corrected mincore: align down to the page and cover every page of [addr, addr+len).
 * Right for mapped and unmapped memory; still says "readable" for PROT_NONE pages, because
 * mincore() reports residency, not permission. */
static inline int hak_probe_mincore(const void *addr, size_t len) {
    uintptr_t ps = hak_probe_page_size();
    uintptr_t a = (uintptr_t)addr;
    if (len == 0) len = 1;
    if (a + len < a) return 0;
    uintptr_t first = a & ~(ps - 1);
    uintptr_t last = (a + len - 1) & ~(ps - 1);
    unsigned char vec[2];
    size_t npages = (size_t)((last - first) / ps) + 1;
    for (size_t i = 0; i < npages; i += 2) {
        size_t n = npages - i < 2 ? npages - i : 2;
        if (mincore((void *)(first + i * ps), n * ps, vec) != 0) return 0;
    }
    return 1;
}

/* Safe: ask the kernel to copy the bytes. process_vm_readv() on our own pid fails with
 * EFAULT for unmapped and for PROT_NONE (or otherwise unreadable) memory, and never faults.
 * If the syscall is unavailable (seccomp, ENOSYS), fall back to write() into a pipe, which
 * also returns EFAULT for unreadable source memory. When out is not NULL it receives the
 * bytes, so a caller can use the copy instead of reading the memory a second time. */
static inline int hak_probe_safe(const void *addr, size_t len, void *out) {
    unsigned char tmp[64];
    void *dst = out ? out : tmp;
    if (len == 0) len = 1;
    if (!out && len > sizeof tmp) len = sizeof tmp;
    int saved = errno;
    struct iovec local = {dst, len};
    struct iovec remote = {(void *)addr, len};
    ssize_t n = syscall(SYS_process_vm_readv, (long)getpid(), &local, 1UL, &remote, 1UL, 0UL);
    if (n == (ssize_t)len) { errno = saved; return 1; }
    if (n >= 0 || errno == EFAULT || errno == ENOMEM) { errno = saved; return 0; }
    /* ENOSYS / EPERM: pipe fallback, one chunk at a time. */
    int fds[2];
    if (pipe(fds) != 0) { errno = saved; return 0; }
    int ok = 1;
    size_t done = 0;
    while (done < len) {
        size_t chunk = len - done > 4096 ? 4096 : len - done;
        ssize_t w = write(fds[1], (const char *)addr + done, chunk);
        if (w <= 0) { ok = 0; break; }
        ssize_t r = read(fds[0], (char *)dst + (out ? done : 0), (size_t)w);
        if (r != w) { ok = 0; break; }
        done += (size_t)w;
    }
    close(fds[0]);
    close(fds[1]);
    errno = saved;
    return ok;
}

#endif /* HAK_PROBES_H */
