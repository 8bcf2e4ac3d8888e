/*
 * worker.h: the worker process entry point (worker.c).
 */
#ifndef IMGW_BENCH_WORKER_H
#define IMGW_BENCH_WORKER_H

#include "bench.h"

/*
 * Runs worker k of procs for options o: opens its slice of connections,
 * synchronises with the parent through rfd/wfd ('R' up, 'G' down), runs the
 * scenario and writes 'D' + bresult_t to wfd. Does not return on success
 * (the process exits); returns non-zero on a setup failure.
 */
int worker_main(const bopts_t *o, int k, int procs, int rfd, int wfd);

#endif
