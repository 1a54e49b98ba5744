"""tenantgate.proxy."""

from . import native

native.honour_pure_switch()  # TENANTGATE_PURE=1: the sources, before any compiled module loads
