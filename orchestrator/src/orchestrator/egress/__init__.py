"""The egress gateway: the one way out of an isolated job, deny by default.

``policy`` (which names and ports a job may reach), ``addresses`` (which addresses nobody may),
``resolve`` (one resolution, the address checked is the address connected), ``sni`` (the TLS
ClientHello's server name), ``gateway`` (the HTTP forward proxy and ``CONNECT`` server),
``audit`` (one record per attempt), ``jobs`` (how a job proves who it is), and for credentials
injected at egress ``inject`` (placeholders and the header rewriting), ``ca`` (the
orchestrator's CA and its leaves), ``tls_stream`` and ``intercept`` (HTTP/1.1 inside a tunnel
the gateway terminates).
"""
