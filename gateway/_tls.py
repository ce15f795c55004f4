"""TLS to clients on hypercorn's listener: ``server.tls`` as hypercorn settings, and new
certificates on reload.

I/O at the edge: it reads certificate files. Two deviations from hypercorn's own
``Config.create_ssl_context``, and why:

- hypercorn builds its context with ``ssl.create_default_context(Purpose.CLIENT_AUTH)``,
  which also trusts the system's CAs for client certificates: with
  ``require_client_cert`` any certificate from a public CA would be accepted. Ours trusts
  only ``client_ca_file``.
- ``min_version`` is not a hypercorn setting (it always allows TLS 1.2).

Reload: hypercorn builds the listener's context once, when it starts serving, and keeps
it for the listener's life; it cannot be replaced. A context can load a new certificate
and key in place, and OpenSSL gives each new connection the context's current ones, so a
reload loads the files again into that same context: new handshakes get the new
certificate, established connections keep theirs. ``client_ca_file`` is loaded again the
same way, which adds CAs: one removed from the file stays trusted until a restart.
"""

from __future__ import annotations

import logging
import ssl

import hypercorn.config

from ._config.model import ServerTLSConfig
from ._config.tls import TLS_VERSIONS

log = logging.getLogger("gateway")


class ListenerConfig(hypercorn.config.Config):
    """hypercorn's settings, with the gateway's SSL context for the listener.

    Module level and free of open resources until serving starts, so hypercorn can pickle
    it for worker processes.
    """

    tls_min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    listener_context: ssl.SSLContext | None = None  # the serving listener's, once built

    def apply_tls(self, tls: ServerTLSConfig | None) -> None:
        """Set hypercorn's TLS settings from ``tls`` (None: plain http)."""
        self.certfile = tls.cert_file if tls is not None else None
        self.keyfile = tls.key_file if tls is not None else None
        self.ca_certs = tls.client_ca_file if tls is not None else None
        if tls is None or tls.client_ca_file is None:
            self.verify_mode = None
        else:
            self.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
        self.tls_min_version = TLS_VERSIONS[tls.min_version if tls is not None else "TLSv1.2"]

    def create_ssl_context(self) -> ssl.SSLContext | None:
        """The listener's context (hypercorn calls this once when it starts serving)."""
        if not self.ssl_enabled or self.certfile is None or self.keyfile is None:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.set_ciphers(self.ciphers)
        context.options |= ssl.OP_NO_COMPRESSION  # RFC 9113 section 9.2.1
        context.minimum_version = self.tls_min_version  # at least TLS 1.2: RFC 9113 9.2
        context.set_alpn_protocols(self.alpn_protocols)  # h2, then http/1.1
        context.load_cert_chain(self.certfile, self.keyfile)
        if self.ca_certs is not None:
            context.load_verify_locations(self.ca_certs)
        context.verify_mode = self.verify_mode or ssl.CERT_NONE
        self.listener_context = context
        return context

    def reload_tls(self, tls: ServerTLSConfig | None) -> bool:
        """Apply a reloaded config's ``tls`` to the serving listener: its files are read
        again. False, and logged, when it cannot apply: turning TLS on or off needs a
        restart, and files that fail to load leave the previous certificate served."""
        context = self.listener_context
        if (context is None) != (tls is None):
            state = "on" if tls is not None else "off"
            log.warning("server.tls: turning TLS %s takes effect on restart", state)
            return False
        if context is None or tls is None:
            return True
        try:
            context.load_cert_chain(tls.cert_file, tls.key_file)
            if tls.client_ca_file is not None:
                context.load_verify_locations(tls.client_ca_file)
        except (ssl.SSLError, OSError) as exc:
            log.error(
                "server.tls: certificate not reloaded, still serving the previous one: %s", exc
            )
            return False
        self.apply_tls(tls)
        context.minimum_version = self.tls_min_version
        context.verify_mode = self.verify_mode or ssl.CERT_NONE
        log.info("server.tls: certificate reloaded from %s", tls.cert_file)
        return True
