/* hfd_internal.h - what the driver's own translation units share; nothing here is exported
 * (the library is built with -fvisibility=hidden and these carry no HFD_API). */
#ifndef HFD_INTERNAL_H
#define HFD_INTERNAL_H

#include "hfdriver.h"

/* The current binding (hfd_bind_*); its alloc slot is NULL while unbound. */
const hfd_vtable *hfd__vtable(void);
/* The bound library's hak_owner_kind (hakmem.h), NULL if it has none or the binding is not a
 * library; only set together with the vtable's owner. */
typedef uint32_t (*hfd_owner_kind_fn)(const void *addr);
hfd_owner_kind_fn hfd__owner_kind(void);
/* hak_alloc_owner_kind and hak_free_owner_kind_at (hakmem.h), under the same conditions. */
typedef uint32_t (*hfd_free_owner_kind_fn)(void *ptr, size_t size, uintptr_t site);
hfd_owner_kind_fn hfd__alloc_owner_kind(void);
hfd_free_owner_kind_fn hfd__free_owner_kind(void);
/* hfd_set_event_index's variable, written directly by the replay loop. */
extern __thread volatile uint64_t hfd__t_event_index;
/* Sets the calling thread's hfd_last_error() message; returns code. */
int hfd__set_error(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* 1 while hfd_install_crash_handler() is in force (replay threads then get an alternate stack). */
int hfd__crash_handler_installed(void);

#endif /* HFD_INTERNAL_H */
