"""Real deployment on Flower (`pip install heronsfl[flower]`): the only package that imports flwr.

- codec.py: heronsfl messages and configs <-> Flower records (the only module with Flower keys)
- server_app.py: the ServerApp (main server + Fed-Server); client_app.py: the ClientApp
- protocol.py: the dataclasses exchanged (RoundRequest, RoundReply) and the server's options
- deploy.py: `heronsfl deploy` (a local SuperLink + SuperNodes, app directories, data splits)
"""
