/*
 * fuzz_http: arbitrary bytes as what a client sends on a new connection,
 * through the real HTTP layer (http.c with llhttp, conn.c's write path and,
 * after an accepted upgrade, ws.c), read in arbitrary chunks.
 *
 * Input: byte 0 = handler behaviour (fuzz_net.h), byte 1 = chunking seed,
 * the rest = the bytes on the wire.
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
    imgw_conn_t *c = fuzz_net_conn(IMGW_CONN_HTTP);
    fuzz_net_feed(c, data + 2, size - 2, data[1]);
    fuzz_net_end(c);
    return 0;
}
