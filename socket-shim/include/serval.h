/*
 * serval.h: the Serval socket interface (see ../../../shared/WIRE.md,
 * "The C socket API").
 *
 * Programs include this header and use the ordinary BSD socket calls with
 * AF_SERVAL and struct sockaddr_sv. They run on the user-space SAL either by
 * linking libserval_shim.so (-lserval_shim) or, unmodified, under
 * `serval-run -- PROGRAM ARGS`, which preloads it.
 */
#ifndef SERVAL_H
#define SERVAL_H

#include <stdint.h>
#include <sys/socket.h>

#define AF_SERVAL 28
#define PF_SERVAL AF_SERVAL

#define SERVAL_PROTO_TCP 6
#define SERVAL_PROTO_UDP 17

#define SERVICE_ID_LEN 32

/*
 * recvfrom() on a datagram socket fills in, as the original Serval does, a
 * sockaddr_sv with the *sender's own service ID* (every datagram socket has
 * one: the bound ID, or a random one), followed by a sockaddr_in with the
 * sender's IPv4 address (port 0) when the address buffer holds both (52
 * bytes). sendto() takes either back: with the sockaddr_in it sends to that
 * service at that address; with the sockaddr_sv alone it resolves the
 * service.
 *
 * SV_FLAG_PEER is set in sv_flags instead when the sender named no service
 * of its own (an older serval-rs): the 32 bytes then name the sender's
 * socket (its locator and socket ID), and passing the address back to
 * sendto() replies to it. Applications treat it as opaque.
 */
#define SV_FLAG_PEER 0x80

struct service_id {
    uint8_t s_sid[SERVICE_ID_LEN]; /* byte 0 is the most significant */
};

/* 36 bytes on Linux. */
struct sockaddr_sv {
    sa_family_t sv_family;     /* AF_SERVAL, host order */
    uint8_t sv_flags;          /* 0, or SV_FLAG_PEER (see above) */
    uint8_t sv_prefix_bits;    /* bind(): prefix length, 0 = the whole ID */
    struct service_id sv_srvid;
};

#endif /* SERVAL_H */
