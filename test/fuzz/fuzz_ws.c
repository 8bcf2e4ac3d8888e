/*
 * fuzz_ws: arbitrary bytes as a client's WebSocket frame stream on an open
 * connection (ws.c on wslay's frame API, conn.c's write path for pongs,
 * echoes and close frames), read in arbitrary chunks. max_frame_bytes is
 * 4096 so that 1009 (message too big) is reachable with small inputs.
 *
 * Input: byte 0 = handler behaviour (fuzz_net.h), byte 1 = chunking seed,
 * the rest = the frames.
 */
#include "fuzz_net.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    fuzz_net_init();
    fuzz_mode = data[0];
    imgw_conn_t *c = fuzz_net_conn(IMGW_CONN_WS);
    fuzz_net_feed(c, data + 2, size - 2, data[1]);
    fuzz_net_end(c);
    return 0;
}
