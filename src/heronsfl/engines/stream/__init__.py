"""The data plane of a deployment: one stream per client for a round's per-step traffic.

With a round as one Flower message exchange per client, a deployed client would hold its whole
round of uploads, the main server every client's round, and an algorithm that needs one server
answer per local step (SFLV1, SFLV2, SplitLoRA, HO-SFL) would pay a full Flower exchange per
step. `heronsfl deploy` therefore sends each step's traffic on this stream (see
engines/flower/server_app.py and client_app.py); Flower keeps the control plane (membership,
starting rounds, the model exchange, node authentication).

- A client dials out to the main server (as Flower's SuperNodes do) and opens one bidirectional
  stream per round: uploads (activations + labels, or HO-SFL's scalars) go up as they are
  produced, the synchronous algorithms' answers (cut gradient, HO-SFL's λ and mean scalars)
  come back on the same stream.
- Memory is bounded on both sides: a client holds at most `window` encoded uploads and blocks
  when the server is behind; the server holds at most `window` received uploads per client and
  reads no more from that client's stream until it has consumed one, so HTTP/2 flow control
  pushes back to the client.
- A client is admitted only with the run's secret in its call metadata (checked before any
  payload is read), over TLS whenever certificates are given (the same root CA and server
  certificate as Flower's link). Payloads are pickle-free frames (wire.py).
- A client whose stream breaks, or that stays silent past a timeout, is dropped and named; the
  server's waits are all bounded.

Why gRPC: it is already installed (Flower depends on grpcio), it has bidirectional streaming
over HTTP/2 with per-stream flow control (the backpressure above, without a hand-written
protocol), TLS with the certificates Flower already uses, and call metadata plus server
interceptors for the secret. The service is declared with generic handlers and bytes payloads,
so there is no .proto file and no code generation step.

- wire.py: messages <-> frames; link.py: what both ends share (method, metadata keys, TLS,
  channel options); server.py: StreamServer; client.py: StreamClient; bench.py:
  `heronsfl bench stream`.
"""
