# activated.py: the blog post's Flask app, socket-activated the way the post does it
# next: its dice.py, unchanged, served on the listening socket systemd passes as fd 3.
#
# `make bench` runs it under stage 02's units (dice.socket, dice.service with a drop-in
# that replaces ExecStart= and sets PYTHONPATH to the directory of dice.py, here
# 05-socket-proxyd/): on the first connection systemd starts it, and it keeps serving.
from werkzeug.serving import make_server

from dice import app

# fd 3 is the socket systemd listens on (LISTEN_FDS=1): werkzeug serves it instead of
# opening a port of its own, host and port only tell it the socket's family.
# threaded=True as `flask run`: a thread per request.
make_server("127.0.0.1", 0, app, threaded=True, fd=3).serve_forever()
