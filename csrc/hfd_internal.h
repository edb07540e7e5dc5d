/* hfd_internal.h - what the driver's own translation units share; nothing here is exported
 * (the library is built with -fvisibility=hidden and these carry no HFD_API). */
#ifndef HFD_INTERNAL_H
#define HFD_INTERNAL_H

#include "hfdriver.h"

/* The current binding (hfd_bind_*); its alloc slot is NULL while unbound. */
const hfd_vtable *hfd__vtable(void);
/* Sets the calling thread's hfd_last_error() message; returns code. */
int hfd__set_error(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* 1 while hfd_install_crash_handler() is in force (replay threads then get an alternate stack). */
int hfd__crash_handler_installed(void);

#endif /* HFD_INTERNAL_H */
