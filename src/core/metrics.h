/*
 * metrics.h: /metrics in Prometheus text format 0.0.4. Counters live per
 * loop (net's imgw_loop_stats_t, core's imgw_core_stats_t) as single-writer
 * relaxed atomics (base/stat.h) and are summed here when scraped; no
 * read-modify-write or lock on the hot path.
 */
#ifndef IMGW_METRICS_H
#define IMGW_METRICS_H

#include <stddef.h>

#include "node.h"

/** Renders every metric; returns a malloc'd body (caller frees) or NULL. */
char *imgw_metrics_render(imgw_node_t *node, size_t *len);

#endif
