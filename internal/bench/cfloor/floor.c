/* The C floor of `make bench`: what internal/bench/floor does, under stage 04's units
 * only (Accept=yes: fd 3 is the connection), with nothing but libc and the system
 * calls (cc -static -O2). The Go floor says why it reads until the client closes. */
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

int main(void) {
	char buf[4096], response[256];
	int len = snprintf(response, sizeof response, "HTTP/1.1 200 OK\r\nContent-Type: "
		"application/json\r\nDice-Pid: %d\r\nContent-Length: 13\r\nConnection: close\r\n"
		"\r\n{\"result\":4}\n", (int)getpid());
	if (read(3, buf, sizeof buf) < 0 || write(3, response, len) != len)
		return 1;
	shutdown(3, SHUT_WR);
	while (read(3, buf, sizeof buf) > 0)
		;
	return 0;
}
