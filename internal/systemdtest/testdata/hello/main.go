// Command hello is a tiny socket-activated HTTP server for the systemdtest tests: it
// serves the socket systemd passes and answers "<greeting> from <pid>".
package main

import (
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"

	"github.com/coreos/go-systemd/v22/activation"
)

func main() {
	greeting := flag.String("greeting", "hello", "the first word of every answer")
	flag.Parse()
	listeners, err := activation.Listeners()
	if err != nil || len(listeners) != 1 {
		log.Fatalf("want one socket from systemd, got %d (%v)", len(listeners), err)
	}
	fmt.Println("hello: serving", listeners[0].Addr())
	log.Fatal(http.Serve(listeners[0], http.HandlerFunc(
		func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "%s from %d\n", *greeting, os.Getpid())
		})))
}
