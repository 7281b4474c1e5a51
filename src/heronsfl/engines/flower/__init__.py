"""Real deployment on Flower (`pip install heronsfl[flower]`): the only package that imports flwr.

- codec.py: heronsfl messages and configs <-> Flower records (the only module with Flower keys)
- server_app.py: the ServerApp (main server + Fed-Server); client_app.py: the ClientApp
- protocol.py: the server -> client request (RoundRequest) and the server's options; the reply
  is the engine-neutral messages.ClientResult
- deploy.py: `heronsfl deploy` (a local SuperLink + SuperNodes, app directories, data splits)
- links.py: emulated client links for `deploy local` (network namespaces, veths, tc shaping)
"""
