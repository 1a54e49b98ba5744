"""The multi-tenant Django shop as a tenant (PEER_TENANT) against PGHOST/PGPORT/...: directly under RLS
or through tenantgate. Each check runs in its own transaction, rolled back, on the peer runner's data
(tenant acme: customers ann, art; products apple, anvil; orders 1-3 with four lines). One line per
check: ``ok NAME`` or ``FAIL NAME: reason``. Needs Django on sys.path (the runner's pylib)."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import django
from django.conf import settings

settings.configure(
    INSTALLED_APPS=["shop"],
    USE_TZ=True,
    DATABASES={
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "HOST": os.environ["PGHOST"],
            "PORT": os.environ["PGPORT"],
            "USER": os.environ["PGUSER"],
            "PASSWORD": os.environ["PGPASSWORD"],
            "NAME": os.environ["PGDATABASE"],
            "OPTIONS": {"sslmode": "disable", **({"options": o} if (o := os.environ.get("PEER_OPTIONS")) else {})},
        }
    },
)
django.setup()

from django.db import IntegrityError, transaction  # noqa: E402
from django.db.models import Count, F, Prefetch, Sum  # noqa: E402
from shop.models import TENANT, Customer, Order, OrderLine, Product  # noqa: E402

OTHER = "globex"
failures = 0


class Undo(Exception):
    """Raised at the end of a check to roll its transaction back."""


def expect(cond: bool, why: str) -> None:
    if not cond:
        raise AssertionError(why)


def check(name: str) -> Callable[[Callable[[], None]], None]:
    def run(body: Callable[[], None]) -> None:
        global failures
        try:
            with transaction.atomic():
                body()
                raise Undo
        except Undo:
            print(f"ok {name}", flush=True)
        except Exception as exc:
            failures += 1
            where = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if f.name == "_"][-1]
            print(f"FAIL {name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
                  f"(line {where})", flush=True)

    return run


def only_own(*querysets: object) -> None:
    for qs in querysets:
        seen = set(qs.values_list("tenant_id", flat=True))  # type: ignore[attr-defined]
        expect(seen == {TENANT}, f"{qs.model.__name__}: tenants {seen}")  # type: ignore[attr-defined]


@check("connect")
def _() -> None:
    expect(Customer.objects.count() == 2, f"customers {Customer.objects.count()}")


@check("only_own_rows")
def _() -> None:
    only_own(Customer.objects.all(), Product.objects.all(), Order.objects.all(), OrderLine.objects.all())


@check("foreign_keys")
def _() -> None:
    line = OrderLine.objects.get(order_id=1, product__sku="anvil")
    expect(line.order.customer.name == "ann", line.order.customer.name)
    expect(Customer.objects.get(name="ann").orders.count() == 2, "ann's orders")


@check("select_related")
def _() -> None:
    names = [o.customer.name for o in Order.objects.select_related("customer").order_by("id")]
    expect(names == ["ann", "ann", "art"], f"{names}")


@check("prefetch_related")
def _() -> None:
    customers = Customer.objects.order_by("name").prefetch_related(
        Prefetch("orders", queryset=Order.objects.order_by("id")), "orders__lines__product")
    got = [(c.name, [sum(line.qty for line in o.lines.all()) for o in c.orders.all()]) for c in customers]
    expect(got == [("ann", [4, 5]), ("art", [1])], f"{got}")


@check("annotate")
def _() -> None:
    # GROUP BY the primary key only: name is functionally dependent on it (PostgreSQL allows it).
    got = [(c.name, c.n) for c in Customer.objects.annotate(n=Count("orders")).order_by("name")]
    expect(got == [("ann", 2), ("art", 1)], f"{got}")


@check("aggregate")
def _() -> None:
    total = OrderLine.objects.aggregate(t=Sum(F("qty") * F("product__price")))["t"]
    expect(total == Decimal("3") * Decimal("1.50") + 99 + 5 * Decimal("1.50") + 99, f"total {total}")


@check("f_update")
def _() -> None:
    n = Product.objects.filter(sku="apple").update(stock=F("stock") - 1)
    expect(n == 1 and Product.objects.get(sku="apple").stock == 9, f"updated {n}")


@check("bulk_create")
def _() -> None:
    made = Product.objects.bulk_create([Product(sku=f"bulk{i}", price=Decimal(i)) for i in range(5)])
    expect(all(p.pk for p in made), "no primary keys returned")
    expect(Product.objects.filter(sku__startswith="bulk").count() == 5, "bulk rows")
    only_own(Product.objects.all())


@check("bulk_create_other_tenant_refused")
def _() -> None:
    refused = False
    try:
        with transaction.atomic():
            Product.objects.bulk_create([Product(sku="x1", price=1, tenant_id=OTHER),
                                         Product(sku="x2", price=1, tenant_id=OTHER)])
    except Exception:  # RLS's WITH CHECK directly (42501), the proxy's refusal through it
        refused = True
    expect(refused, "rows for another tenant were accepted")
    expect(not Product.objects.filter(sku__in=["x1", "x2"]).exists(), "rows for another tenant were stored")


@check("update_or_create")
def _() -> None:
    c, created = Customer.objects.update_or_create(name="ann", defaults={"vip": True})
    expect(not created and c.vip, "existing row")
    c, created = Customer.objects.update_or_create(name="amy", defaults={"vip": False})
    expect(created and Customer.objects.filter(name="amy").count() == 1, "new row")
    only_own(Customer.objects.all())


@check("select_for_update")
def _() -> None:
    p = Product.objects.select_for_update().get(sku="anvil")
    p.stock -= 1
    p.save(update_fields=["stock"])
    expect(Product.objects.get(sku="anvil").stock == 1, "stock")


@check("nested_atomic")
def _() -> None:
    Customer.objects.create(name="outer")
    try:
        with transaction.atomic():  # a savepoint
            Customer.objects.create(name="inner")
            raise IntegrityError("undo the inner block")
    except IntegrityError:
        pass
    with transaction.atomic():
        Customer.objects.create(name="inner2")
    names = set(Customer.objects.values_list("name", flat=True))
    expect(names == {"ann", "art", "outer", "inner2"}, f"{names}")


@check("iterator")
def _() -> None:
    ids = [o.id for o in Order.objects.order_by("id").iterator(chunk_size=2)]  # a server-side cursor
    expect(ids == [1, 2, 3], f"{ids}")


@check("save")
def _() -> None:
    c = Customer.objects.get(name="art")
    c.name = "arthur"
    c.save()  # UPDATE of every column, tenant_id = its own tenant included
    expect(Customer.objects.filter(name="arthur").count() == 1, "not saved")
    o = Order(customer=c)
    o.save()
    expect(Order.objects.get(pk=o.pk).tenant_id == TENANT, "new order's tenant")


@check("delete")
def _() -> None:
    OrderLine.objects.filter(order_id=2).delete()
    deleted, _ = Order.objects.filter(pk=2).delete()
    expect(deleted == 1 and Order.objects.count() == 2, f"deleted {deleted}")


@check("raw_and_exists")
def _() -> None:
    expect(Order.objects.filter(customer__name="ann").exists(), "exists")
    rows = list(Customer.objects.raw("SELECT id, name FROM shop_customer ORDER BY id"))
    expect([r.name for r in rows] == ["ann", "art"], f"{[r.name for r in rows]}")


sys.exit(0 if failures == 0 else 2)
