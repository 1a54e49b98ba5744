"""A small multi-tenant Django app (``django_shop.py`` drives it): every table carries ``tenant_id``,
as apps written for row-level multi-tenancy do, and the runner creates the tables (managed models: Django groups by the primary key only for those)."""
