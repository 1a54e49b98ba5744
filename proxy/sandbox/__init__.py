"""tenantgate.proxy.sandbox: throwaway PostgreSQL clusters and the demo, for tests, bench and `make demo`.

Imports only audit/keyring/config/rewriter, never the serving process: the demo is handed the
proxy to start by the CLI.
"""
