"""The upstream transport: HTTP/1.1 keep-alive pools on trio sockets."""
