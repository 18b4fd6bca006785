# The blog post's dice.py, socket-activated as the post does next: werkzeug serves the
# listening socket systemd passes as fd 3 (host and port only give its family), with a
# thread per request as `flask run`. make bench runs it under stage 02's units.
from werkzeug.serving import make_server

from dice import app

make_server("127.0.0.1", 0, app, threaded=True, fd=3).serve_forever()
