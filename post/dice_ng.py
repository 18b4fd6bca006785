# The post's next step: its dice.py, socket-activated. systemd holds the port and
# starts this on the first connection, with the listening socket as fd 3; werkzeug
# (Flask's server) serves that socket instead of opening one. Run it under the units
# of units/post-socket-activated/: make run-stage post-socket-activated.
import socket

from werkzeug.serving import make_server

from dice import app

# The socket systemd passed: the first one is always fd 3 (LISTEN_FDS=1).
sock = socket.fromfd(3, socket.AF_INET, socket.SOCK_STREAM)
# With fd=, host and port only tell werkzeug the address family. threaded: a thread
# per request, as `flask run` has.
make_server("127.0.0.1", 0, app, threaded=True, fd=sock.fileno()).serve_forever()
