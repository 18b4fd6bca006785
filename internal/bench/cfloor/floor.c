/* The C floor of `make bench`: the least any program can do to answer GET /roll under
 * stage 04's units (Accept=yes: fd 3 is the connection), as internal/bench/floor does
 * in Go. It reads the request (a client's GET /roll comes in one segment), writes a
 * fixed response, and reads until the client closes: closing a socket with unread
 * data would make the kernel send a reset. Built with `cc -static -O2`: no dynamic
 * loader, nothing but the system calls. */
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

int main(void) {
	static const char body[] = "{\"result\":4}\n";
	char buf[4096], response[256];
	int len = snprintf(response, sizeof response,
		"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nDice-Pid: %d\r\n"
		"Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
		(int)getpid(), sizeof body - 1, body);
	if (read(3, buf, sizeof buf) < 0 || write(3, response, len) != len)
		return 1;
	shutdown(3, SHUT_WR);
	while (read(3, buf, sizeof buf) > 0)
		;
	return 0;
}
