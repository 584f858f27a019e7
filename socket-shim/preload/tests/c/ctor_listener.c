/* A library whose constructor listens: preloaded after the shim (which
 * serval-run puts first in LD_PRELOAD), its constructor runs before the
 * shim's own, as a linked library's would. With SERVAL_TEST_CTOR_SID set
 * it binds that service, listens, and moves the listener to descriptor 50
 * (not close-on-exec: the shim's record of what crosses exec has it)
 * before the program's main (in a program under the shim only). */
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "serval.h"
#include "sv_addr.h"

__attribute__((constructor)) static void listen_early(void) {
    const char *hex = getenv("SERVAL_TEST_CTOR_SID");
    const char *preload = getenv("LD_PRELOAD");
    /* Not in serval-run itself, which is not under the shim. */
    if (!hex || !preload || !strstr(preload, "serval_shim")) return;
    struct sockaddr_sv sa = sv_addr(hex);
    int fd = socket(AF_SERVAL, SOCK_STREAM, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 16) < 0) _exit(3);
    if (dup2(fd, 50) != 50 || close(fd) < 0) _exit(3);
}
