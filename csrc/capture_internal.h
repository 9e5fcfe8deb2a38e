/* capture_internal.h - what capture_run.c needs from capture.c beyond the public ABI. */
#ifndef PIPC_CAPTURE_INTERNAL_H
#define PIPC_CAPTURE_INTERNAL_H

#include "packet_ipc.h"

/* 1 if the last pipc_capture_next returned -EINTR because of pipc_capture_breakloop() (not a signal); clears it. */
int pipc_capture_take_break(pipc_capture *cap);

/* The capture's snaplen (the least buffer pipc_capture_next accepts). */
uint32_t pipc_capture_snaplen_of(const pipc_capture *cap);

/* Sets the capture's linger_ms (see struct pipc_capture_options); returns the previous value. */
int pipc_capture_swap_linger(pipc_capture *cap, int linger_ms);

#endif
