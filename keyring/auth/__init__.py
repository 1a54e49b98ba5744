"""tenantgate.keyring.auth: authentication primitives (SCRAM, JWT/JWKS verification, OIDC claims).

Pure functions and values, no network I/O: both config/ (verifiers, key sets) and the
proxy's login exchange use them; fetching a JWKS is the serving process's job (proxy/oidc.py).
"""
