"""A small multi-tenant Django app (``django_shop.py`` drives it): every table carries ``tenant_id``,
as apps written for row-level multi-tenancy do. The runner creates the tables; the models stay
"managed" all the same, since Django groups by the primary key alone only for managed models."""
