"""The shop's models over the peer database's tables (tests/peer/env.py creates them)."""

import os

from django.db import models

TENANT = os.environ.get("PEER_TENANT", "")


class TenantModel(models.Model):
    # The app's own copy of the tenant: Model.save() writes it back with every other column.
    tenant_id = models.TextField(default=TENANT)

    class Meta:
        abstract = True


class Customer(TenantModel):
    name = models.TextField()
    vip = models.BooleanField(default=False)

    class Meta:
        db_table = "shop_customer"


class Product(TenantModel):
    sku = models.TextField()
    price = models.DecimalField(max_digits=10, decimal_places=2)
    stock = models.IntegerField(default=0)

    class Meta:
        db_table = "shop_product"


class Order(TenantModel):
    customer = models.ForeignKey(Customer, models.DO_NOTHING, related_name="orders")
    status = models.TextField(default="new")
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "shop_order"


class OrderLine(TenantModel):
    order = models.ForeignKey(Order, models.DO_NOTHING, related_name="lines")
    product = models.ForeignKey(Product, models.DO_NOTHING, related_name="lines")
    qty = models.IntegerField()

    class Meta:
        db_table = "shop_orderline"
