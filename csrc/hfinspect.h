/* hfinspect.h - hfreplay's inspection mode (hfinspect.c); part of the executable, not the driver. */
#ifndef HFINSPECT_H
#define HFINSPECT_H

#include <stdint.h>
#include <stdio.h>

#include "hftrace.h"

/* Replays events [0, stop) through the bound allocator with hfd_replay (results into events),
 * then prints one JSON document to out describing the heap as event `stop` is about to see it
 * (handle: the allocator's dlopen handle for its introspection calls, NULL for libc). Returns
 * 0, or -1 with err set. A crash before `stop` kills the process like any replay. */
int hfi_inspect(const void *trace, uint64_t len, hfr_header *res, hfr_event *events, uint64_t stop, void *handle, int judge,
                int threads, const uint64_t *extra, int n_extra, FILE *out, char *err, size_t errcap);

#endif
