/* sv_addr: a service ID in hex (left-aligned, as the text form in
 * WIRE.md) as a sockaddr_sv, for the C test programs. */
#ifndef SV_ADDR_H
#define SV_ADDR_H

#include <stdint.h>
#include <string.h>

#include "serval.h"

static inline struct sockaddr_sv sv_addr(const char *hex) {
    struct sockaddr_sv sa;
    memset(&sa, 0, sizeof sa);
    sa.sv_family = AF_SERVAL;
    for (size_t i = 0; hex[i] && i < 64; i++) {
        char c = hex[i];
        int v = c >= '0' && c <= '9' ? c - '0' : (c | 32) - 'a' + 10;
        sa.sv_srvid.s_sid[i / 2] |= (uint8_t)(i % 2 ? v : v << 4);
    }
    return sa;
}

#endif
