"""peer_relay in a web page: :class:`BrowserPeer` (run by Pyodide) and the web build.

``peer-relay.js`` (in ``static/``) loads Pyodide and this package and offers the original's
JavaScript API; :mod:`peer_relay.browser.build` assembles what a web server serves;
:mod:`peer_relay.browser.server` serves it (``peer-relay serve --web``).
"""

from .peer import BrowserPeer

__all__ = ["BrowserPeer"]
