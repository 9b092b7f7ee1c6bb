/* A stand-in Firecracker for ci/compat and ci/image, started exactly as SmolVM starts
 * the real one (`<path>/firecracker --api-sock /tmp/fc-<id>.sock`, asserted against each
 * release's own launcher by ci/guests): it holds the VM's TAP (SMOLVM_STANDIN_TAP; on the
 * /dev/net/tun fd SMOLVM_STANDIN_TUN_FD when one is handed over, as a jailer does), binds
 * and serves the API socket, says "ready" on stdout and sleeps until SIGTERM. It dies
 * with the process that started it. No Firecracker can be had from the registries these
 * machines reach (README: Real guests). */
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int main(int argc, char **argv) {
    const char *sock = NULL;
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], "--api-sock") == 0)
            sock = argv[i + 1];
    if (sock == NULL) {
        fprintf(stderr, "usage: firecracker --api-sock PATH\n");
        return 2;
    }
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    const char *tap = getenv("SMOLVM_STANDIN_TAP");
    if (tap != NULL) {
        const char *fd = getenv("SMOLVM_STANDIN_TUN_FD");
        int tun = fd != NULL ? atoi(fd) : open("/dev/net/tun", O_RDWR);
        struct ifreq ifr;
        memset(&ifr, 0, sizeof ifr);
        strncpy(ifr.ifr_name, tap, IFNAMSIZ - 1);
        ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
        if (tun < 0 || ioctl(tun, TUNSETIFF, &ifr) < 0) {
            perror("TUNSETIFF");
            return 1;
        }
    }
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    strncpy(addr.sun_path, sock, sizeof addr.sun_path - 1);
    if (s < 0 || bind(s, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(s, 8) < 0) {
        perror("bind the API socket");
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    for (;;)
        pause();
}
