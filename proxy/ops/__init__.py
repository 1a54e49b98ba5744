"""tenantgate.proxy.ops: control-plane tools (tenant move and copy, RLS install, config editing, admin client).

Only tenantgate.proxy.cli imports this room; the data plane never does.
"""
