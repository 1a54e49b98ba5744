"""The console around one serving process's data plane: admin port, metrics HTTP, worker
supervision and the control socket. The data plane (tenantgate.proxy) never imports it."""
